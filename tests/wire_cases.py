"""Shared wire test tables: one instance of every request and reply, edge values included."""

from __future__ import annotations

from array import array
from datetime import UTC, datetime
from typing import Any

from unimeter import errors, limits
from unimeter.model import (
    AggType,
    AggValue,
    AlertThreshold,
    DimensionFilter,
    MetricSchema,
    PeriodType,
)
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec, ServerCodec, announced_limits

U64_MAX = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
OK = errors.Status.OK

SCHEMA = MetricSchema(
    code="api_calls",
    agg_type=AggType.SUM,
    period_type=PeriodType.CALENDAR,
    billing_cycle_day=15,
    recurring=True,
    filters=(DimensionFilter("region", ("eu", "us")), DimensionFilter("tier", ("pro",))),
    thresholds=(
        AlertThreshold("soft", 100),
        AlertThreshold("every_1k", 1000, recurring=True),
        AlertThreshold("hooked", 5, webhook="https://hooks.example/u?x=1"),
    ),
).normalized()
SCHEMA_MIN = MetricSchema(code="seats", agg_type=AggType.COUNT_UNIQUE).normalized()


def full_batch() -> m.EventBatch:
    """Every column present, extreme values included."""
    return m.EventBatch(
        metric_codes=("api_calls", "seats"),
        metric_index=array("B", [0, 1, 0, 1]),
        account_ids=array("Q", [0, 1, 2**63, U64_MAX]),
        values=array("q", [I64_MIN, -1, 0, I64_MAX]),
        timestamps=array("q", [m.NO_TIMESTAMP, 0, 1_700_000_000_000_000, I64_MAX]),
        operation_types=array("B", [0, 1, 2, 0]),
        properties=({"region": "eu", "tier": "pro"}, None, {}, {"k" * 32: "v" * 64}),
        event_ids=("evt-1", None, "é" * 32, "x"),
    )


def minimal_batch() -> m.EventBatch:
    """Required columns only, with a 16-bit metric index (more than 256 codes)."""
    return m.EventBatch(
        metric_codes=tuple(f"m{i}" for i in range(300)),
        metric_index=array("H", [299, 0, 256]),
        account_ids=array("Q", [42, 42, 7]),
        values=array("q", [1, 2, 3]),
    )


def empty_batch() -> m.EventBatch:
    return m.EventBatch(
        metric_codes=(), metric_index=array("B"), account_ids=array("Q"), values=array("q")
    )


# fmt: off
HELLO = m.Hello(version=m.PROTOCOL_VERSION, client_name="unimeter-python")
INGEST = m.Ingest(partition=3, producer_id=U64_MAX, seq=1, sync=True, catalog_version=9,
                  batch=full_batch())
QUERY = m.Query(partition=1, account_id=42, metric_code="api_calls", start_us=0, end_us=10)
BREAKDOWN = m.QueryBreakdown(partition=1, account_id=42, metric_code="api_calls", start_us=-5,
                             end_us=5, group_by=("region", "tier"))
LIST_EVENTS = m.ListEvents(partition=0, account_id=1, since_us=0, until_us=0)
LIST_ALERTS = m.ListAlerts(partition=0, account_id=1)
SUBSCRIBE = m.SubscribeAlerts(partition=0, subscription_id=1)

REQUESTS: list[m.Request] = [
    HELLO,
    m.Hello(version=1, client_name="c" * limits.string_bytes_max, token="t0k",
            peer_node_id=U64_MAX),
    m.Hello(version=2, client_name="node-2", member_id=2, nonce=b"n" * 32, proof=b"p" * 32),
    m.GetPartitionMap(),
    m.MetricCreate(schema=SCHEMA),
    m.MetricUpdate(schema=SCHEMA_MIN),
    m.MetricGet(code="api_calls"),
    m.MetricList(),
    m.MetricDelete(code="a.b:c-d_e"),
    INGEST,
    m.Ingest(partition=0, producer_id=0, seq=U64_MAX, sync=False, catalog_version=0,
             batch=minimal_batch()),
    m.Ingest(partition=limits.partitions_max - 1, producer_id=5, seq=2, sync=False,
             catalog_version=1, batch=empty_batch()),
    QUERY,
    m.Query(partition=1, account_id=U64_MAX, metric_code="api_calls", start_us=I64_MIN,
            end_us=I64_MAX, filters=(("region", "eu"), ("tier", "")), min_index=U64_MAX),
    m.QueryRealtime(partition=2, account_id=0, metric_code="seats"),
    BREAKDOWN,
    m.QueryBreakdown(partition=1, account_id=42, metric_code="api_calls", start_us=0, end_us=1,
                     group_by=(), filters=(("region", "us"),), min_index=3),
    LIST_EVENTS,
    m.ListEvents(partition=0, account_id=1, since_us=-1, until_us=9, after_offset=17, limit=1,
                 min_index=4),
    LIST_ALERTS,
    m.ListAlerts(partition=0, account_id=1, after_cursor=0, limit=limits.list_page_alerts_max,
                 min_index=1),
    m.ClusterStatus(),
    SUBSCRIBE,
    m.SubscribeAlerts(partition=limits.partitions_max - 1, subscription_id=U64_MAX, account_id=0,
                      after_cursor=I64_MAX, limit=1, min_index=U64_MAX),
    m.UnsubscribeAlerts(subscription_id=0),
]

AGG_FULL = AggValue(sum=-(2**100), count=U64_MAX, max=I64_MIN, last_value=I64_MAX,
                    last_timestamp=datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC),
                    alert_flags=255)
EVENT = m.StoredEvent(account_id=U64_MAX, metric_code="api_calls", value=I64_MIN,
                      timestamp_us=1_700_000_000_000_000, operation_type=2,
                      properties={"region": "eu"}, event_id="e-1", offset=0)
BARE_EVENT = m.StoredEvent(account_id=0, metric_code="x", value=0, timestamp_us=0,
                           operation_type=0, properties={}, event_id=None, offset=U64_MAX)
ALERT = m.StoredAlert(account_id=42, metric_code="api_calls", threshold_code="soft",
                      value_at_cross=2**64 + 5, triggered_at_us=-1, cursor=3)
PARTITIONS = (
    m.PartitionInfo(partition=0, leader=-1, term=0, commit_index=0, applied_index=0),
    m.PartitionInfo(partition=1, leader=3, term=7, commit_index=U64_MAX, applied_index=5),
)
K = m.Kind
REPLIES: list[tuple[m.Kind, int, m.Reply]] = [
    (K.HELLO, OK, m.Welcome(node_id=1, cluster_id="c-1", version=1, limits=announced_limits(),
                            partitions=8)),
    (K.HELLO, OK, m.Welcome(node_id=1, cluster_id="c-1", version=2, limits={}, partitions=1,
                            challenge=b"c" * 32, proof=b"\x00" * 32)),
    (K.GET_PARTITION_MAP, OK, m.PartitionMap(partitions=3, nodes={1: "a:1", 2: "b:2"},
                                             leaders=(1, -1, 2), epoch=9)),
    (K.METRIC_CREATE, OK, m.SchemaReply(schema=SCHEMA, catalog_version=4)),
    (K.METRIC_GET, OK, m.SchemaReply(schema=SCHEMA_MIN, catalog_version=0)),
    (K.METRIC_LIST, OK, m.SchemaList(schemas=(SCHEMA, SCHEMA_MIN), catalog_version=4)),
    (K.METRIC_LIST, OK, m.SchemaList(schemas=(), catalog_version=0)),
    (K.METRIC_DELETE, OK, m.Deleted(catalog_version=5)),
    (K.INGEST, OK, m.IngestReply(n_stored=2, n_duplicates=1, n_rejected=2,
                                 rejected=((3, "unknown_metric"), (4, "too_old")),
                                 last_offset=77, log_index=12)),
    (K.INGEST, OK, m.IngestReply(n_stored=0, n_duplicates=0, n_rejected=0, rejected=(),
                                 last_offset=None, log_index=0)),
    (K.QUERY, OK, m.AggReply(value=AGG_FULL, period_start_us=I64_MIN, period_end_us=I64_MAX)),
    (K.QUERY_REALTIME, OK, m.AggReply(value=AggValue(sum=2**70), period_start_us=0,
                                      period_end_us=1)),
    (K.QUERY_BREAKDOWN, OK, m.BreakdownReply(cells=(
        ((("region", "eu"), ("tier", "pro")), AggValue(sum=3, count=1)),
        ((), AggValue()),
    ))),
    (K.LIST_EVENTS, OK, m.EventsPage(events=(EVENT, BARE_EVENT), next_offset=10)),
    (K.LIST_EVENTS, OK, m.EventsPage(events=(), next_offset=None)),
    (K.LIST_ALERTS, OK, m.AlertsPage(alerts=(ALERT,), next_cursor=4)),
    (K.LIST_ALERTS, OK, m.AlertsPage(alerts=(), next_cursor=None)),
    (K.CLUSTER_STATUS, OK, m.ClusterStatusReply(node_id=2, cluster_id="c-1",
                                                nodes={1: "a:1", 2: "b:2", 3: "c:3"},
                                                partitions=PARTITIONS, catalog_version=11)),
    (K.SUBSCRIBE_ALERTS, OK, m.Subscribed(alerts=(ALERT, ALERT), next_cursor=3, live_from=9)),
    (K.SUBSCRIBE_ALERTS, OK, m.Subscribed(alerts=(), next_cursor=None, live_from=U64_MAX)),
    (K.UNSUBSCRIBE_ALERTS, OK, m.Unsubscribed()),
    (K.QUERY, errors.Status.NOT_LEADER, m.ErrorReply(message="not the leader",
                                                     leader="10.0.0.2:7001")),
    (K.INGEST, errors.Status.BACKPRESSURE, m.ErrorReply(message="mailbox full")),
    (K.METRIC_GET, errors.Status.UNKNOWN_METRIC, m.ErrorReply(message="")),
    (K.QUERY, 99, m.ErrorReply(message="a status from a newer server")),
]
PUSHES: list[tuple[int, m.Push]] = [
    (1, m.AlertsPush(partition=0, alerts=(ALERT,))),
    (U64_MAX, m.AlertsPush(partition=limits.partitions_max - 1, alerts=())),
    (0, m.SubscriptionEnd(partition=3, status=int(errors.Status.BACKPRESSURE), message="slow")),
    (7, m.SubscriptionEnd(partition=0, status=int(errors.Status.NOT_LEADER), message="",
                          leader="10.0.0.2:7001")),
]
# fmt: on

REQUEST_OF_KIND = {type(msg).KIND: msg for msg in reversed(REQUESTS)}


def ident(value: object) -> str:
    return type(value).__name__


def same(got: object, expected: object) -> None:
    """Equality, plus the dtypes of batch columns (array equality ignores them)."""
    assert got == expected
    if isinstance(expected, m.RequestFrame | m.ResponseFrame):
        assert isinstance(got, m.RequestFrame | m.ResponseFrame)
        same(got.message, expected.message)
    batch = getattr(expected, "batch", None)
    if isinstance(batch, m.EventBatch):
        same_typecodes(getattr(got, "batch", None), batch)


_TYPECODES = {"|u1": "B", "<u2": "H", "<u8": "Q", "<i8": "q"}


def typecode(column: Any) -> str:
    """The ``array`` typecode a numpy column matches (what the wire's typed-array tag says)."""
    return _TYPECODES[column.dtype.str]


def same_typecodes(got: object, expected: m.EventBatch) -> None:
    assert isinstance(got, m.EventBatch)
    for name in ("metric_index", "account_ids", "values", "timestamps", "operation_types"):
        want, have = getattr(expected, name), getattr(got, name)
        assert (want is None) == (have is None), name
        if want is not None:
            assert have.dtype == want.dtype, name


def drain(codec: ServerCodec | ClientCodec) -> list[Any]:
    out = []
    while (frame := codec.next_frame()) is not None:
        out.append(frame)
    return out


def client_waiting(kind: m.Kind, request_id: int) -> ClientCodec:
    """A client codec with one request of ``kind`` in flight."""
    client = ClientCodec()
    client.encode_request(request_id, REQUEST_OF_KIND[kind])
    return client
