"""Roles, and the one table saying which role each request kind needs (docs/security.md).

Three roles, as the product promises: ``ingest`` (write events), ``read`` (usage, events,
alerts, schemas) and ``admin`` (everything, including changing metric schemas). ``admin``
implies both others; ``ingest`` and ``read`` are independent, so a token given to a service
that only records usage cannot read any account's usage back, and a dashboard's token cannot
forge usage. A fourth grant, ``MEMBER``, is never held by a token: it is the cluster's own
nodes (peer links and the HTTP forwarder), proven with the cluster secret.

Both protocols use this one table: the binary protocol by request kind (``REQUIRED``), the
HTTP API by route name (``HTTP_REQUIRED``, each route named after the kind it builds). A kind
missing from the table is a bug that ``tests/test_security_roles.py`` catches.
"""

from __future__ import annotations

import enum

from unimeter.wire.messages import Kind


class Role(enum.Enum):
    INGEST = "ingest"
    READ = "read"
    ADMIN = "admin"
    MEMBER = "member"  # a node of this cluster; never given to a token


# What each role may do. admin implies ingest and read; a member may do everything.
GRANTS: dict[Role, frozenset[Role]] = {
    Role.INGEST: frozenset({Role.INGEST}),
    Role.READ: frozenset({Role.READ}),
    Role.ADMIN: frozenset({Role.INGEST, Role.READ, Role.ADMIN}),
    Role.MEMBER: frozenset({Role.INGEST, Role.READ, Role.ADMIN, Role.MEMBER}),
}

TOKEN_ROLES = (Role.INGEST, Role.READ, Role.ADMIN)  # what ``unimeter token new`` may issue

# None: any authenticated connection (whatever its role) may send it. The partition map is
# needed by every client to route, ingest-only ones included.
REQUIRED: dict[Kind, Role | None] = {
    Kind.HELLO: None,  # the authentication itself
    Kind.GET_PARTITION_MAP: None,
    Kind.METRIC_CREATE: Role.ADMIN,
    Kind.METRIC_UPDATE: Role.ADMIN,
    Kind.METRIC_DELETE: Role.ADMIN,
    Kind.METRIC_GET: Role.READ,
    Kind.METRIC_LIST: Role.READ,
    Kind.INGEST: Role.INGEST,
    Kind.QUERY: Role.READ,
    Kind.QUERY_REALTIME: Role.READ,
    Kind.QUERY_BREAKDOWN: Role.READ,
    Kind.LIST_EVENTS: Role.READ,
    Kind.LIST_ALERTS: Role.READ,
    Kind.CLUSTER_STATUS: Role.READ,
    Kind.PEER: Role.MEMBER,
    Kind.SUBSCRIBE_ALERTS: Role.READ,
    Kind.UNSUBSCRIBE_ALERTS: Role.READ,
}

# HTTP routes by name (``server/http``): the kind each builds, so the role comes from the
# table above; ``PUBLIC`` ones answer without a token.
PUBLIC = "public"
HTTP_KIND: dict[str, Kind | str] = {
    "health": PUBLIC,  # load balancers probe it; it says only "ok" and the node id
    "openapi": PUBLIC,  # the API's description, the same for every cluster
    "metrics": Kind.CLUSTER_STATUS,  # Prometheus figures: operational, so a read
    "ingest": Kind.INGEST,
    "list_events": Kind.LIST_EVENTS,
    "usage": Kind.QUERY,
    "usage_realtime": Kind.QUERY_REALTIME,
    "metric_list": Kind.METRIC_LIST,
    "metric_create": Kind.METRIC_CREATE,
    "metric_get": Kind.METRIC_GET,
    "metric_update": Kind.METRIC_UPDATE,
    "metric_delete": Kind.METRIC_DELETE,
    "list_alerts": Kind.LIST_ALERTS,
    "alert_stream": Kind.SUBSCRIBE_ALERTS,
    "cluster_status": Kind.CLUSTER_STATUS,
}

assert set(REQUIRED) == set(Kind), "every request kind needs a row in REQUIRED"


def allows(role: Role, kind: Kind) -> bool:
    needed = REQUIRED[kind]
    return needed is None or needed in GRANTS[role]


def parse_role(text: str) -> Role:
    """A token role from its name; ``ValueError`` for anything else (``member`` included)."""
    try:
        role = Role(text.strip().lower())
    except ValueError:
        role = Role.MEMBER
        text = repr(text)
    if role is Role.MEMBER:
        names = ", ".join(r.value for r in TOKEN_ROLES)
        raise ValueError(f"role must be one of {names}, got {text}")
    return role
