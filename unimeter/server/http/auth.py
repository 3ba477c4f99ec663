"""``Authorization: Bearer <token>`` on the HTTP API: the same tokens and role table as the
binary protocol's HELLO (``unimeter/security``).

Every route is named after the request kind it builds (``roles.HTTP_KIND``), so the role it
needs comes from the one table. A missing or unknown token is 401 with ``WWW-Authenticate:
Bearer``; a valid token whose role does not allow the route is 403. Both are problem details
with code ``AUTH``, as a binary client gets status AUTH, and both are counted in ``/metrics``
(``unimeter_auth_refusals``). A route nobody named (a 404) needs no token to be told so.
"""

from __future__ import annotations

from aiohttp import web

from unimeter.errors import Status
from unimeter.security.gate import Gatekeeper
from unimeter.security.roles import HTTP_KIND, PUBLIC

from .problems import problem

_BEARER = "bearer "
UNMATCHED = "unmatched"  # the name the server gives a request no route matched (404, 405)


def authorise(gate: Gatekeeper, request: web.Request, route: str) -> web.Response | None:
    """None when ``request`` may go on to its handler, else the refusal to answer."""
    if not gate.tokens_required:
        return None
    # A route missing from the table is a bug (a KeyError, answered 500): never served open.
    kind = PUBLIC if route == UNMATCHED else HTTP_KIND[route]
    if kind == PUBLIC:
        return None
    assert not isinstance(kind, str)
    header = request.headers.get("Authorization", "")
    token = header[len(_BEARER) :].strip() if header[:7].lower() == _BEARER else None
    outcome = gate.bearer(token, "http", str(request.remote))
    if isinstance(outcome, str):
        response = problem(Status.AUTH, outcome, http_status=401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="unimeter"'
        return response
    admitted = gate.admit(outcome, kind, str(request.remote), "http")
    if isinstance(admitted, str):
        return problem(Status.AUTH, admitted, http_status=403)
    return None
