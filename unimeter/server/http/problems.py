"""Errors as JSON problem details (RFC 9457), with the binary protocol's status names.

Every error the HTTP API answers is ``application/problem+json``::

    {"type": "urn:unimeter:error:unknown_metric", "title": "Unknown metric", "status": 404,
     "detail": "metric 'api_calls' does not exist", "code": "UNKNOWN_METRIC",
     "retriable": false}

``code`` is the name of the status a binary client gets for the same failure (the
``errors.Status`` member), so one table of error meanings serves both protocols; ``retriable``
is the policy the Python client applies to it; ``leader`` (NOT_LEADER only) names the node that
leads. HTTP status codes follow from ``code`` through ``HTTP_STATUS``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from unimeter.errors import STATUS_TO_ERROR, Status, UnimeterError

PROBLEM_TYPE = "application/problem+json"
STATUS_KEY = web.ResponseKey("unimeter_status", Status)  # what the answer meant, for /metrics

HTTP_STATUS: dict[Status, int] = {
    Status.BACKPRESSURE: 429,
    Status.NOT_LEADER: 503,
    Status.UNKNOWN_METRIC: 404,
    Status.ALREADY_EXISTS: 409,
    Status.NOT_FOUND: 404,
    Status.INVALID_REQUEST: 400,
    Status.PROTOCOL: 400,
    Status.AUTH: 401,
    Status.TIMEOUT: 504,
    Status.UNAVAILABLE: 503,
    Status.INTERNAL: 500,
}

TITLES: dict[Status, str] = {
    Status.BACKPRESSURE: "The node is busy or short of disk space; retry later",
    Status.NOT_LEADER: "Another node leads this partition",
    Status.UNKNOWN_METRIC: "Unknown metric",
    Status.ALREADY_EXISTS: "A different metric with this code exists",
    Status.NOT_FOUND: "Not found",
    Status.INVALID_REQUEST: "Invalid request",
    Status.PROTOCOL: "Malformed request",
    Status.AUTH: "Not authorised",
    Status.TIMEOUT: "The request's deadline passed",
    Status.UNAVAILABLE: "Unavailable; retry shortly",
    Status.INTERNAL: "Internal error",
}

# What aiohttp's own refusals (no such path, wrong method, body too large) mean in our terms.
_FROM_HTTP: dict[int, Status] = {404: Status.NOT_FOUND, 413: Status.INVALID_REQUEST}


def problem(
    status: Status, detail: str, *, leader: str | None = None, http_status: int | None = None
) -> web.Response:
    body: dict[str, Any] = {
        "type": f"urn:unimeter:error:{status.name.lower()}",
        "title": TITLES[status],
        "status": http_status or HTTP_STATUS[status],
        "detail": detail,
        "code": status.name,
        "retriable": STATUS_TO_ERROR[status].retriable,
    }
    if leader is not None:
        body["leader"] = leader
    response = web.Response(
        status=body["status"], body=orjson.dumps(body), content_type=PROBLEM_TYPE
    )
    if status is Status.BACKPRESSURE:
        response.headers["Retry-After"] = "1"
    response[STATUS_KEY] = status
    return response


def from_error(exc: UnimeterError) -> web.Response:
    notes = getattr(exc, "__notes__", ())
    detail = "\n".join([exc.message or type(exc).__name__, *notes])
    return problem(Status(exc.status), detail, leader=exc.leader)


def from_http(exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusal (404, 405, 413...) in the same shape."""
    status = _FROM_HTTP.get(exc.status, Status.INVALID_REQUEST)
    if exc.status >= 500:
        status = Status.INTERNAL
    response = problem(status, exc.reason, http_status=exc.status)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    return response
