"""Every request and reply class as its CBOR body: one table row per class.

This table is the protocol; docs/protocol.md is its human form, so change both together.
Requests are checked against the wire limits (``unimeter.limits``) and decoded strictly;
replies are checked for shape and range, and unknown reply keys are ignored.
"""

from __future__ import annotations

from typing import Any

from unimeter import limits
from unimeter.model import AggValue
from unimeter.wire import messages as m
from unimeter.wire.convert import (
    AFTER,
    ALERTS_LIMIT,
    BATCH,
    BIG,
    BOOL,
    CODE,
    EVENTS_LIMIT,
    FLAGS,
    I64,
    KEY,
    NODE,
    OPERATION,
    PARTITION,
    PARTITIONS,
    SCHEMA,
    SHORT_TEXT,
    TEXT,
    TIME,
    U32,
    U64,
    VALUE,
    BodyError,
    Conv,
    Field,
    MapSpec,
    array_of,
    describe,
    keyed_pairs,
    optional,
    pair,
    record,
    string_map,
)

# --------------------------------------------------------------------------- nested records


def _exact_bytes(size: int) -> Conv:
    def decode(obj: Any, path: str) -> bytes:
        if type(obj) is not bytes or len(obj) != size:
            raise BodyError(f"{path}: expected a byte string of {size} bytes, got {describe(obj)}")
        return obj

    return Conv(lambda value: value, decode)


NONCE = _exact_bytes(32)  # the cluster secret handshake (unimeter/security/cluster_secret.py)
PROOF = _exact_bytes(32)  # HMAC-SHA256

AGG_VALUE = record(
    AggValue,
    (
        ("sum", BIG),
        ("count", U64),
        ("max", optional(I64)),
        ("last_value", optional(I64)),
        ("last_timestamp", optional(TIME)),
        ("alert_flags", FLAGS),
    ),
)
PROPERTIES = string_map(TEXT, TEXT)
STORED_EVENT = record(
    m.StoredEvent,
    (
        ("account_id", U64),
        ("metric_code", TEXT),
        ("value", I64),
        ("timestamp_us", I64),
        ("operation_type", OPERATION),
        ("properties", PROPERTIES),
        ("event_id", optional(TEXT)),
        ("offset", U64),
    ),
)
STORED_ALERT = record(
    m.StoredAlert,
    (
        ("account_id", U64),
        ("metric_code", TEXT),
        ("threshold_code", TEXT),
        ("value_at_cross", BIG),
        ("triggered_at_us", I64),
        ("cursor", U64),
    ),
)
PARTITION_INFO = record(
    m.PartitionInfo,
    (
        ("partition", U64),
        ("leader", NODE),
        ("term", U64),
        ("commit_index", U64),
        ("applied_index", U64),
    ),
)
NODES = keyed_pairs(U64, TEXT)
FILTERS = array_of(pair(KEY, VALUE), limits.dimensions_per_metric_max)
GROUP_BY = array_of(KEY, limits.group_by_keys_max, unique=True)


def _check_range(message: Any, path: str) -> None:
    if message.end_us <= message.start_us:
        raise BodyError(f"{path}.end_us: must be after start_us ({message.start_us})")
    keys = [key for key, _ in message.filters]
    if len(set(keys)) != len(keys):
        raise BodyError(f"{path}.filters: a key appears twice")


def _check_map(message: Any, path: str) -> None:
    if len(message.leaders) != message.partitions:
        raise BodyError(
            f"{path}.leaders: {len(message.leaders)} entries for {message.partitions} partitions"
        )


# --------------------------------------------------------------------------- requests

_PARTITION = Field("partition", "p", PARTITION)
_ACCOUNT = Field("account_id", "a", U64)
_METRIC = Field("metric_code", "m", CODE)
_MIN_INDEX = Field("min_index", "min", U64, 0)
_READ_CATALOG = Field("catalog_version", "cv", U64, 0)

REQUESTS: dict[type[Any], MapSpec] = {
    spec.cls: spec
    for spec in (
        MapSpec(
            m.Hello,
            Field("version", "v", U32),
            Field("client_name", "n", SHORT_TEXT),
            Field("token", "t", SHORT_TEXT, None),
            Field("peer_node_id", "pn", U64, None),
            Field("member_id", "mi", U64, None),
            Field("nonce", "nn", NONCE, None),
            Field("proof", "pf", PROOF, None),
        ),
        MapSpec(m.GetPartitionMap),
        MapSpec(m.MetricCreate, Field("schema", "s", SCHEMA)),
        MapSpec(m.MetricUpdate, Field("schema", "s", SCHEMA)),
        MapSpec(m.MetricGet, Field("code", "c", CODE)),
        MapSpec(m.MetricList),
        MapSpec(m.MetricDelete, Field("code", "c", CODE)),
        MapSpec(
            m.Ingest,
            _PARTITION,
            Field("producer_id", "pid", U64),
            Field("seq", "seq", U64),
            Field("sync", "sy", BOOL),
            Field("catalog_version", "cv", U64),
            Field("batch", "b", BATCH),
        ),
        MapSpec(
            m.Query,
            _PARTITION,
            _ACCOUNT,
            _METRIC,
            Field("start_us", "s", I64),
            Field("end_us", "e", I64),
            Field("filters", "f", FILTERS, ()),
            _MIN_INDEX,
            _READ_CATALOG,
            check=_check_range,
        ),
        MapSpec(m.QueryRealtime, _PARTITION, _ACCOUNT, _METRIC, _READ_CATALOG),
        MapSpec(
            m.QueryBreakdown,
            _PARTITION,
            _ACCOUNT,
            _METRIC,
            Field("start_us", "s", I64),
            Field("end_us", "e", I64),
            Field("group_by", "g", GROUP_BY),
            Field("filters", "f", FILTERS, ()),
            _MIN_INDEX,
            _READ_CATALOG,
            check=_check_range,
        ),
        MapSpec(
            m.ListEvents,
            _PARTITION,
            _ACCOUNT,
            Field("since_us", "s", I64),
            Field("until_us", "u", I64),
            Field("after_offset", "ao", AFTER, -1),
            Field("limit", "l", EVENTS_LIMIT, limits.list_page_events_max),
            _MIN_INDEX,
        ),
        MapSpec(
            m.ListAlerts,
            _PARTITION,
            _ACCOUNT,
            Field("after_cursor", "ac", AFTER, -1),
            Field("limit", "l", ALERTS_LIMIT, limits.list_page_alerts_max),
            _MIN_INDEX,
        ),
        MapSpec(m.ClusterStatus),
        MapSpec(
            m.SubscribeAlerts,
            _PARTITION,
            Field("subscription_id", "s", U64),
            Field("account_id", "a", U64, None),
            Field("after_cursor", "ac", AFTER, -1),
            Field("limit", "l", ALERTS_LIMIT, limits.list_page_alerts_max),
            _MIN_INDEX,
        ),
        MapSpec(m.UnsubscribeAlerts, Field("subscription_id", "s", U64)),
    )
}

# --------------------------------------------------------------------------- replies

_CATALOG_VERSION = Field("catalog_version", "cv", U64)

REPLIES: dict[type[Any], MapSpec] = {
    spec.cls: spec
    for spec in (
        MapSpec(
            m.Welcome,
            Field("node_id", "nid", U64),
            Field("cluster_id", "cid", TEXT),
            Field("version", "v", U32),
            Field("limits", "lim", string_map(TEXT, I64)),
            Field("partitions", "np", PARTITIONS),
            Field("challenge", "ch", NONCE, None),
            Field("proof", "pf", PROOF, None),
        ),
        MapSpec(
            m.PartitionMap,
            Field("partitions", "np", PARTITIONS),
            Field("nodes", "nodes", NODES),
            Field("leaders", "ld", array_of(NODE)),
            Field("epoch", "ep", U64),
            check=_check_map,
        ),
        MapSpec(m.SchemaReply, Field("schema", "s", SCHEMA), _CATALOG_VERSION),
        MapSpec(m.SchemaList, Field("schemas", "ss", array_of(SCHEMA)), _CATALOG_VERSION),
        MapSpec(m.Deleted, _CATALOG_VERSION),
        MapSpec(
            m.IngestReply,
            Field("n_stored", "ns", U64),
            Field("n_duplicates", "nd", U64),
            Field("n_rejected", "nr", U64),
            Field("rejected", "rj", array_of(pair(U64, TEXT)), ()),
            Field("last_offset", "lo", U64, None),
            Field("log_index", "li", U64),
        ),
        MapSpec(
            m.AggReply,
            Field("value", "v", AGG_VALUE),
            Field("period_start_us", "ps", I64),
            Field("period_end_us", "pe", I64),
        ),
        MapSpec(
            m.BreakdownReply,
            Field("cells", "c", array_of(pair(array_of(pair(TEXT, TEXT)), AGG_VALUE))),
        ),
        MapSpec(
            m.EventsPage,
            Field("events", "ev", array_of(STORED_EVENT)),
            Field("next_offset", "no", U64, None),
        ),
        MapSpec(
            m.AlertsPage,
            Field("alerts", "al", array_of(STORED_ALERT)),
            Field("next_cursor", "nc", U64, None),
        ),
        MapSpec(
            m.ClusterStatusReply,
            Field("node_id", "nid", U64),
            Field("cluster_id", "cid", TEXT),
            Field("nodes", "nodes", NODES),
            Field("partitions", "parts", array_of(PARTITION_INFO)),
            _CATALOG_VERSION,
            Field("disk_free_bytes", "dfree", U64, None),
            Field("disk_ok", "dok", BOOL, None),
        ),
        MapSpec(
            m.Subscribed,
            Field("alerts", "al", array_of(STORED_ALERT)),
            Field("next_cursor", "nc", U64, None),
            Field("live_from", "lf", U64),
        ),
        MapSpec(m.Unsubscribed),
        MapSpec(m.ErrorReply, Field("message", "msg", TEXT), Field("leader", "ld", TEXT, None)),
    )
}

# --------------------------------------------------------------------------- pushes

PUSHES: dict[type[Any], MapSpec] = {
    spec.cls: spec
    for spec in (
        MapSpec(m.AlertsPush, _PARTITION, Field("alerts", "al", array_of(STORED_ALERT))),
        MapSpec(
            m.SubscriptionEnd,
            _PARTITION,
            Field("status", "st", U32),
            Field("message", "msg", TEXT),
            Field("leader", "ld", TEXT, None),
        ),
    )
}

assert set(REQUESTS) == set(m.REQUEST_OF.values())
assert set(REPLIES) == {*m.REPLY_OF.values(), m.ErrorReply}
assert set(PUSHES) == set(m.PUSH_OF.values())


def encode_body(message: m.Request | m.Reply | m.Push) -> dict[str, Any]:
    spec = REQUESTS.get(type(message)) or REPLIES.get(type(message)) or PUSHES.get(type(message))
    if spec is None:
        raise TypeError(f"not a wire message: {message!r}")
    return spec.encode(message)


def decode_request(kind: m.Kind, body: object) -> m.Request:
    """The request of ``kind`` from its body; ``BodyError`` naming the field otherwise."""
    message: m.Request = REQUESTS[m.REQUEST_OF[kind]].decode(body, strict=True)
    return message


def decode_reply(cls: type[m.Reply], body: object) -> m.Reply:
    message: m.Reply = REPLIES[cls].decode(body, strict=False)
    return message


def decode_push(kind: m.PushKind, body: object) -> m.Push:
    message: m.Push = PUSHES[m.PUSH_OF[kind]].decode(body, strict=False)
    return message
