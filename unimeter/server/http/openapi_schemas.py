"""The JSON Schemas of the OpenAPI document's ``components`` (``openapi.py`` uses them).

They describe the JSON forms of ``unimeter/json_model.py``; the limits are the node's own
(``unimeter/limits.py``), so the document cannot drift from what the node enforces.
"""

from __future__ import annotations

from typing import Any

from unimeter import limits

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _enum(*names: str) -> Schema:
    return {"type": "string", "enum": list(names)}


_U64: Schema = {"type": "integer", "minimum": 0, "maximum": limits.account_id_max}
_I64: Schema = {"type": "integer", "minimum": limits.value_min, "maximum": limits.value_max}
_TIME: Schema = {"type": "string", "format": "date-time"}
_CODE: Schema = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_.:-]{1,64}$",
    "description": "1-64 characters of [A-Za-z0-9_.:-]",
}
_NULLABLE_I64: Schema = {"type": ["integer", "null"]}

SCHEMAS: dict[str, Schema] = {
    "Event": {
        "type": "object",
        "required": ["account_id", "metric_code"],
        "additionalProperties": False,
        "properties": {
            "account_id": {
                "oneOf": [_U64, {"type": "string", "pattern": "^[0-9]{1,20}$"}],
                "description": "u64; as a string of digits where JSON numbers lose precision",
            },
            "metric_code": _CODE,
            "value": {**_I64, "default": 1, "description": "scaled integer: 1.5 is 1500000"},
            "timestamp": {
                **_TIME,
                "description": "RFC 3339; absent: the partition leader stamps it on arrival",
            },
            "operation_type": {**_enum("none", "add", "remove"), "default": "none"},
            "properties": {
                "type": "object",
                "maxProperties": limits.properties_per_event_max,
                "additionalProperties": {
                    "type": "string",
                    "maxLength": limits.property_value_bytes_max,
                },
            },
            "event_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": limits.event_id_bytes_max,
                "description": "idempotency key: stored at most once per account and metric",
            },
            "offset": {"type": "integer", "description": "ignored (present in exports)"},
        },
    },
    "StoredEvent": {
        "type": "object",
        "required": ["account_id", "metric_code", "value", "timestamp", "offset"],
        "properties": {
            "account_id": _U64,
            "metric_code": _CODE,
            "value": _I64,
            "timestamp": _TIME,
            "operation_type": _enum("none", "add", "remove"),
            "properties": {"type": "object", "additionalProperties": {"type": "string"}},
            "event_id": {"type": ["string", "null"]},
            "offset": {"type": "integer", "description": "position in the partition's log"},
        },
    },
    "IngestResult": {
        "type": "object",
        "required": ["n_stored", "n_duplicates", "n_rejected", "rejected", "last_offset"],
        "properties": {
            "n_stored": {"type": "integer"},
            "n_duplicates": {"type": "integer"},
            "n_rejected": {"type": "integer"},
            "rejected": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "reason"],
                    "properties": {
                        "index": {"type": "integer", "description": "position in the request"},
                        "reason": _enum(
                            "unknown_metric",
                            "timestamp_too_old",
                            "timestamp_in_future",
                            "operation_type_requires_count_unique",
                            "count_unique_value_negative",
                        ),
                        "metric_code": {"type": "string"},
                        "event_id": {"type": ["string", "null"]},
                    },
                },
            },
            "last_offset": _NULLABLE_I64,
        },
    },
    "AggValue": {
        "type": "object",
        "required": ["sum", "count", "max", "last_value", "last_timestamp", "alert_flags"],
        "properties": {
            "sum": {"type": "integer"},
            "count": {"type": "integer", "description": "events; the set size for count_unique"},
            "max": _NULLABLE_I64,
            "last_value": _NULLABLE_I64,
            "last_timestamp": {"type": ["string", "null"], "format": "date-time"},
            "alert_flags": {"type": "integer", "description": "bit i: threshold i fired"},
        },
    },
    "Usage": {
        "type": "object",
        "required": ["account_id", "metric_code", "period_start", "period_end"],
        "properties": {
            "account_id": _U64,
            "metric_code": _CODE,
            "period_start": _TIME,
            "period_end": _TIME,
            "value": ref("AggValue"),
            "groups": {
                "type": "array",
                "description": "with group_by: one entry per non-empty cell",
                "items": {
                    "type": "object",
                    "properties": {
                        "group": {"type": "object", "additionalProperties": {"type": "string"}},
                        "value": ref("AggValue"),
                    },
                },
            },
        },
    },
    "MetricSchema": {
        "type": "object",
        "required": ["agg_type"],
        "additionalProperties": False,
        "properties": {
            "code": _CODE,
            "agg_type": _enum("count", "sum", "max", "latest", "count_unique"),
            "period_type": {**_enum("fixed", "calendar", "day", "week"), "default": "fixed"},
            "billing_cycle_day": {
                "type": "integer",
                "minimum": 1,
                "maximum": limits.billing_cycle_day_max,
                "default": 1,
            },
            "period_seconds": {
                "type": "integer",
                "minimum": limits.period_seconds_min,
                "default": limits.period_seconds_default,
            },
            "recurring": {"type": "boolean", "default": False},
            "filters": {
                "type": "array",
                "maxItems": limits.dimensions_per_metric_max,
                "items": {
                    "type": "object",
                    "required": ["key", "values"],
                    "properties": {
                        "key": {"type": "string"},
                        "values": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 1,
                            "maxItems": limits.dimension_values_max,
                        },
                    },
                },
            },
            "thresholds": {
                "type": "array",
                "maxItems": limits.thresholds_per_metric_max,
                "items": {
                    "type": "object",
                    "required": ["code", "value"],
                    "properties": {
                        "code": _CODE,
                        "value": _I64,
                        "recurring": {"type": "boolean", "default": False},
                        "webhook": {
                            "type": "string",
                            "format": "uri",
                            "maxLength": limits.webhook_url_bytes_max,
                            "description": "every alert of this threshold is also POSTed "
                            "here, at least once, signed (docs/security.md)",
                        },
                    },
                },
            },
        },
    },
    "Alert": {
        "type": "object",
        "required": ["account_id", "metric_code", "threshold_code", "triggered_at", "cursor"],
        "properties": {
            "account_id": _U64,
            "metric_code": _CODE,
            "threshold_code": _CODE,
            "value_at_cross": _I64,
            "triggered_at": _TIME,
            "cursor": {"type": "integer", "description": "position in its partition's alert log"},
        },
    },
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; code is the binary protocol's status name",
        "required": ["type", "title", "status", "detail", "code", "retriable"],
        "properties": {
            "type": {"type": "string", "format": "uri-reference"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": _enum(
                "BACKPRESSURE",
                "NOT_LEADER",
                "UNKNOWN_METRIC",
                "ALREADY_EXISTS",
                "NOT_FOUND",
                "INVALID_REQUEST",
                "PROTOCOL",
                "AUTH",
                "TIMEOUT",
                "UNAVAILABLE",
                "INTERNAL",
            ),
            "retriable": {"type": "boolean"},
            "leader": {"type": "string", "description": "NOT_LEADER: host:port of the leader"},
        },
    },
}
