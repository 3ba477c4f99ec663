"""The OpenAPI 3.1 document served at ``/v1/openapi.json``: every route of the HTTP API.

Built once per node from plain dicts. A test validates it against the OpenAPI specification
and checks that every route the server registers is described here, and nothing else.
"""

from __future__ import annotations

from typing import Any

from unimeter import __version__, limits

from .openapi_schemas import SCHEMAS, Schema, ref

_JSON = "application/json"
_PROBLEM = "application/problem+json"


def _param(name: str, description: str, *, required: bool = False, **schema: Any) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_ACCOUNT = _param("account_id", "the account (u64)", required=True, type="integer", minimum=0)
_METRIC = _param("metric", "the metric code (also accepted as metric_code)", required=True)


def _ok(description: str, schema: Schema, status: str = "200") -> dict[str, Any]:
    errors = {
        code: {"$ref": f"#/components/responses/{name}"}
        for code, name in (("400", "Invalid"), ("401", "Unauthorized"), ("403", "Forbidden"),
                           ("404", "NotFound"), ("429", "Busy"), ("503", "Unavailable"),
                           ("504", "Timeout"))
    }  # fmt: skip
    return {status: {"description": description, "content": {_JSON: {"schema": schema}}}, **errors}


def _op(summary: str, operation_id: str, responses: dict[str, Any], **more: Any) -> Schema:
    return {"summary": summary, "operationId": operation_id, "responses": responses, **more}


_PERIOD_PARAMS = [
    _param(
        "period",
        "a named period (default current_month); or give from and to",
        enum=[
            "current_month",
            "last_month",
            "today",
            "yesterday",
            "this_week",
            "last_week",
            "current_billing_period",
            "last_billing_period",
        ],
    ),
    _param("billing_cycle_day", "for the billing periods: 1-28", type="integer", minimum=1),
    _param("from", "start of the range, RFC 3339 (with to)", format="date-time"),
    _param("to", "end of the range, exclusive, RFC 3339 (with from)", format="date-time"),
    {
        **_param("filter", "key=value on a declared dimension; repeat for AND"),
        "schema": {"type": "array", "items": {"type": "string"}},
        "explode": True,
    },
    _param("group_by", "comma-separated dimension keys: one aggregate per cell"),
]

_PATHS: dict[str, Any] = {
    "/v1/events": {
        "post": _op(
            "Store events (JSON array or NDJSON)",
            "ingestEvents",
            _ok("what became of the events", ref("IngestResult")),
            parameters=[
                _param(
                    "delivery",
                    "sync: answer once a quorum has the events on disk",
                    enum=["async", "sync"],
                )
            ],
            requestBody={
                "required": True,
                "content": {
                    _JSON: {
                        "schema": {
                            "type": "array",
                            "items": ref("Event"),
                            "maxItems": limits.http_events_per_request_max,
                        }
                    },
                    "application/x-ndjson": {"schema": {"type": "string"}},
                },
            },
        ),
        "get": _op(
            "List an account's stored events, one page at a time",
            "listEvents",
            _ok(
                "a page of events",
                {
                    "type": "object",
                    "properties": {
                        "events": {"type": "array", "items": ref("StoredEvent")},
                        "next_after": {"type": ["integer", "null"]},
                    },
                },
            ),
            parameters=[
                _ACCOUNT,
                _param("since", "RFC 3339 (default: the beginning)", format="date-time"),
                _param("until", "RFC 3339, exclusive (default: now + 1 day)", format="date-time"),
                _param("after", "next_after of the previous page", type="integer"),
                _param(
                    "limit",
                    "events per page",
                    type="integer",
                    minimum=1,
                    maximum=limits.list_page_events_max,
                ),
            ],
        ),
    },
    "/v1/usage": {
        "get": _op(
            "An account's usage of a metric over a period",
            "getUsage",
            _ok("the aggregate (or one per cell with group_by)", ref("Usage")),
            parameters=[_ACCOUNT, _METRIC, *_PERIOD_PARAMS],
        )
    },
    "/v1/usage/realtime": {
        "get": _op(
            "The current period's aggregate, from the leader's memory",
            "getUsageRealtime",
            _ok("the aggregate", ref("Usage")),
            parameters=[_ACCOUNT, _METRIC],
        )
    },
    "/v1/metrics": {
        "get": _op(
            "List the metric schemas",
            "listMetrics",
            _ok(
                "every schema",
                {
                    "type": "object",
                    "properties": {
                        "metrics": {"type": "array", "items": ref("MetricSchema")},
                        "catalog_version": {"type": "integer"},
                    },
                },
            ),
        ),
        "post": _op(
            "Create a metric (idempotent for an identical schema)",
            "createMetric",
            {
                **_ok("the schema", ref("MetricSchema"), "201"),
                "409": {"$ref": "#/components/responses/Conflict"},
            },
            requestBody={"required": True, "content": {_JSON: {"schema": ref("MetricSchema")}}},
        ),
    },
    "/v1/metrics/{code}": {
        "parameters": [
            {"name": "code", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "get": _op("Get a metric schema", "getMetric", _ok("the schema", ref("MetricSchema"))),
        "put": _op(
            "Change a metric's thresholds, dimensions or recurrence from now on",
            "updateMetric",
            _ok("the schema", ref("MetricSchema")),
            requestBody={"required": True, "content": {_JSON: {"schema": ref("MetricSchema")}}},
        ),
        "delete": _op(
            "Delete a metric and its aggregates (its raw events stay listable)",
            "deleteMetric",
            _ok(
                "deleted",
                {
                    "type": "object",
                    "properties": {
                        "deleted": {"type": "string"},
                        "catalog_version": {"type": "integer"},
                    },
                },
            ),
        ),
    },
    "/v1/alerts": {
        "get": _op(
            "List an account's alerts after a cursor",
            "listAlerts",
            _ok(
                "a page of alerts",
                {
                    "type": "object",
                    "properties": {
                        "alerts": {"type": "array", "items": ref("Alert")},
                        "next_after": {"type": ["integer", "null"]},
                    },
                },
            ),
            parameters=[
                _ACCOUNT,
                _param("after", "cursor of the last alert seen", type="integer"),
                _param(
                    "limit",
                    "alerts per page",
                    type="integer",
                    minimum=1,
                    maximum=limits.list_page_alerts_max,
                ),
            ],
        )
    },
    "/v1/alerts/stream": {
        "get": _op(
            "Committed alerts, live, as Server-Sent Events (resumable with Last-Event-ID)",
            "streamAlerts",
            {
                "200": {
                    "description": "events 'alert' (data: an Alert; id: the resume point) "
                    "and, on a failure that ends the stream, 'error' (data: a Problem)",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": {"$ref": "#/components/responses/Invalid"},
                "429": {"$ref": "#/components/responses/Busy"},
            },
            parameters=[
                {**_ACCOUNT, "required": False, "description": "one account (default: all)"},
                _param("since", "resume point: partition:cursor,... (an event id)"),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": "resume after this event (same form as since)",
                    "schema": {"type": "string"},
                },
            ],
        )
    },
    "/v1/cluster": {
        "get": _op(
            "This node's view of the cluster: nodes, partition leaders, log indices",
            "getCluster",
            _ok("the status", {"type": "object"}),
        )
    },
    "/v1/openapi.json": {
        "get": _op(
            "This document",
            "getOpenApi",
            {"200": {"description": "OpenAPI 3.1 (JSON)"}},
            security=[],
        )
    },
    "/health": {
        "get": _op(
            "200 while the node serves, 503 while it starts or stops",
            "getHealth",
            {
                "200": {
                    "description": "serving",
                    "content": {_JSON: {"schema": {"type": "object"}}},
                },
                "503": {"$ref": "#/components/responses/Unavailable"},
            },
            security=[],
        )
    },
    "/metrics": {
        "get": _op(
            "Prometheus metrics (text format)",
            "getMetrics",
            {
                "200": {
                    "description": "metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        )
    },
}


def _problem(description: str) -> Schema:
    return {"description": description, "content": {_PROBLEM: {"schema": ref("Problem")}}}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Unimeter HTTP API",
            "version": __version__,
            "description": "Usage metering: store events, read exact usage. Every node answers "
            "every request (requests for partitions led elsewhere are forwarded). Values are "
            "scaled integers (1.5 is 1500000). Errors are RFC 9457 problem details whose code "
            "is the binary protocol's status name.",
        },
        "paths": _PATHS,
        # Only on a node started with --auth-tokens; /health and this document never need it.
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API token (unimeter token new) when the node requires "
                    "them: ingest for POST /v1/events, admin for changing metrics, read for "
                    "the rest; 401 without a valid token, 403 when the role does not allow it",
                }
            },
            "schemas": SCHEMAS,
            "responses": {
                "Invalid": _problem("INVALID_REQUEST: the detail names the problem"),
                "NotFound": _problem("UNKNOWN_METRIC or NOT_FOUND"),
                "Conflict": _problem("ALREADY_EXISTS: a different schema has this code"),
                "Busy": _problem("BACKPRESSURE: retry after the Retry-After seconds"),
                "Unavailable": _problem("UNAVAILABLE or NOT_LEADER: retry shortly"),
                "Timeout": _problem("TIMEOUT: the deadline passed; the outcome is unknown"),
                "Unauthorized": _problem("AUTH: no valid API token (WWW-Authenticate: Bearer)"),
                "Forbidden": _problem("AUTH: the token's role does not allow this request"),
            },
        },
    }
