"""One frozen, slotted, keyword-only dataclass per wire message (h11 ``_events.py`` style).

A request frame is ``[kind, request_id, body]``, a response frame ``[status, request_id, body]``.
``Kind`` numbers requests; the response to a request of kind K with status OK carries the body of
the class in ``REPLY_OF[K]``; any other status carries an ``ErrorReply``. No dict travels past
the codec: the codec turns bodies into these classes and back (``unimeter/wire/codec.py``).

Timestamps on the wire are integer microseconds since the Unix epoch (UTC). Account ids are
u64, values i64. ``EventBatch`` (``batch.py``) is columnar: numpy columns that travel as RFC 8746
little-endian typed arrays inside one byte string.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from unimeter.model import AggValue, MetricSchema
from unimeter.wire.batch import NO_TIMESTAMP as NO_TIMESTAMP
from unimeter.wire.batch import EventBatch as EventBatch

# 2: the batch travels as one byte string holding its columnar map, with dictionary-encoded
# properties and packed event ids (docs/protocol.md, section 4).
PROTOCOL_VERSION = 2


class Kind(enum.IntEnum):
    HELLO = 1
    GET_PARTITION_MAP = 2
    METRIC_CREATE = 3
    METRIC_UPDATE = 4
    METRIC_GET = 5
    METRIC_LIST = 6
    METRIC_DELETE = 7
    INGEST = 8
    QUERY = 9
    QUERY_REALTIME = 10
    QUERY_BREAKDOWN = 11
    LIST_EVENTS = 12
    LIST_ALERTS = 13
    CLUSTER_STATUS = 14
    # Node-to-node: Raft messages for many groups, one way, never answered (see PeerFrame).
    PEER = 15
    SUBSCRIBE_ALERTS = 16
    UNSUBSCRIBE_ALERTS = 17


class PushKind(enum.IntEnum):
    """Server-to-client frames nobody asked for: ``[push_kind, subscription_id, body]``.

    Push kinds are negative, so they never collide with a reply status (any u32, including
    statuses a newer server may add).
    """

    ALERTS = -1
    SUBSCRIPTION_END = -2


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    KIND: ClassVar[Kind] = Kind.HELLO
    version: int
    client_name: str
    token: str | None = None
    peer_node_id: int | None = None  # set by a cluster peer, not by clients
    # The cluster secret handshake (docs/security.md): a node's own client (not a peer link)
    # names itself here; ``nonce`` asks for a challenge, ``proof`` answers it.
    member_id: int | None = None
    nonce: bytes | None = None
    proof: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPartitionMap:
    KIND: ClassVar[Kind] = Kind.GET_PARTITION_MAP


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricCreate:
    KIND: ClassVar[Kind] = Kind.METRIC_CREATE
    schema: MetricSchema


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricUpdate:
    KIND: ClassVar[Kind] = Kind.METRIC_UPDATE
    schema: MetricSchema


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricGet:
    KIND: ClassVar[Kind] = Kind.METRIC_GET
    code: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricList:
    KIND: ClassVar[Kind] = Kind.METRIC_LIST


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricDelete:
    KIND: ClassVar[Kind] = Kind.METRIC_DELETE
    code: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ingest:
    """Events for one partition. ``(producer_id, seq)`` makes a retry idempotent."""

    KIND: ClassVar[Kind] = Kind.INGEST
    partition: int
    producer_id: int  # u64, random per client instance
    seq: int  # u64, per (producer, partition), starts at 1
    sync: bool
    catalog_version: int  # the partition waits until it has seen this catalog version
    batch: EventBatch


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    KIND: ClassVar[Kind] = Kind.QUERY
    partition: int
    account_id: int
    metric_code: str
    start_us: int
    end_us: int
    filters: tuple[tuple[str, str], ...] = ()
    min_index: int = 0  # read-your-writes: answer once applied up to this log index
    catalog_version: int = 0  # answer once the partition knows this catalog version


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryRealtime:
    KIND: ClassVar[Kind] = Kind.QUERY_REALTIME
    partition: int
    account_id: int
    metric_code: str
    catalog_version: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryBreakdown:
    KIND: ClassVar[Kind] = Kind.QUERY_BREAKDOWN
    partition: int
    account_id: int
    metric_code: str
    start_us: int
    end_us: int
    group_by: tuple[str, ...]
    filters: tuple[tuple[str, str], ...] = ()
    min_index: int = 0  # read-your-writes: answer once applied up to this log index
    catalog_version: int = 0  # answer once the partition knows this catalog version


@dataclass(frozen=True, slots=True, kw_only=True)
class ListEvents:
    KIND: ClassVar[Kind] = Kind.LIST_EVENTS
    partition: int
    account_id: int
    since_us: int
    until_us: int
    after_offset: int = -1  # paging cursor: only events with a larger offset
    limit: int = 1000
    min_index: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ListAlerts:
    KIND: ClassVar[Kind] = Kind.LIST_ALERTS
    partition: int
    account_id: int
    after_cursor: int = -1
    limit: int = 1000
    min_index: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterStatus:
    KIND: ClassVar[Kind] = Kind.CLUSTER_STATUS


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeAlerts:
    """Catch up on a partition's alerts after ``after_cursor``, then receive new ones live.

    The answer is one page of catch-up; when the page ends the backlog (``next_cursor`` None)
    the subscription is live on this connection under ``subscription_id`` (chosen by the
    client, unique among its live subscriptions on the connection), else the client asks again
    from ``next_cursor``. ``account_id`` None means every account of the partition.
    """

    KIND: ClassVar[Kind] = Kind.SUBSCRIBE_ALERTS
    partition: int
    subscription_id: int
    account_id: int | None = None
    after_cursor: int = -1
    limit: int = 1000
    min_index: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class UnsubscribeAlerts:
    KIND: ClassVar[Kind] = Kind.UNSUBSCRIBE_ALERTS
    subscription_id: int


Request = (
    Hello
    | GetPartitionMap
    | MetricCreate
    | MetricUpdate
    | MetricGet
    | MetricList
    | MetricDelete
    | Ingest
    | Query
    | QueryRealtime
    | QueryBreakdown
    | ListEvents
    | ListAlerts
    | ClusterStatus
    | SubscribeAlerts
    | UnsubscribeAlerts
)


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    node_id: int
    cluster_id: str
    version: int
    limits: dict[str, int]
    partitions: int
    challenge: bytes | None = None  # the server's nonce, answering a member's HELLO nonce
    proof: bytes | None = None  # the server's proof of the cluster secret


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionMap:
    partitions: int
    nodes: dict[int, str]  # node id -> "host:port" clients should dial
    leaders: tuple[int, ...]  # node id leading each partition, -1 when unknown
    epoch: int  # grows whenever leadership changes


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaReply:
    schema: MetricSchema
    catalog_version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaList:
    schemas: tuple[MetricSchema, ...]
    catalog_version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Deleted:
    catalog_version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestReply:
    n_stored: int
    n_duplicates: int
    n_rejected: int
    rejected: tuple[tuple[int, str], ...]  # (index within the Ingest batch, reason)
    last_offset: int | None
    log_index: int  # for read-your-writes: pass as min_index on later reads


@dataclass(frozen=True, slots=True, kw_only=True)
class AggReply:
    value: AggValue
    period_start_us: int
    period_end_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakdownReply:
    cells: tuple[tuple[tuple[tuple[str, str], ...], AggValue], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEvent:
    account_id: int
    metric_code: str
    value: int
    timestamp_us: int
    operation_type: int
    properties: dict[str, str]
    event_id: str | None
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsPage:
    events: tuple[StoredEvent, ...]
    next_offset: int | None  # None: no more events


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredAlert:
    account_id: int
    metric_code: str
    threshold_code: str
    value_at_cross: int
    triggered_at_us: int
    cursor: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertsPage:
    alerts: tuple[StoredAlert, ...]
    next_cursor: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribed:
    """One page of catch-up. ``next_cursor`` set: more backlog, not live yet (ask again from
    it). None: the subscription is live; its pushes carry the alerts from cursor
    ``live_from`` on (every earlier matching alert was in this page or an earlier one)."""

    alerts: tuple[StoredAlert, ...]
    next_cursor: int | None
    live_from: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsubscribed:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionInfo:
    partition: int
    leader: int
    term: int
    commit_index: int
    applied_index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterStatusReply:
    node_id: int
    cluster_id: str
    nodes: dict[int, str]
    partitions: tuple[PartitionInfo, ...]
    catalog_version: int
    disk_free_bytes: int | None = None  # on the data directory's filesystem, last measured
    disk_ok: bool | None = None  # free space above the reserve (writes accepted)


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    message: str
    leader: str | None = None  # for NOT_LEADER: "host:port" of the leader, if known


Reply = (
    Welcome
    | PartitionMap
    | SchemaReply
    | SchemaList
    | Deleted
    | IngestReply
    | AggReply
    | BreakdownReply
    | EventsPage
    | AlertsPage
    | ClusterStatusReply
    | Subscribed
    | Unsubscribed
    | ErrorReply
)

REPLY_OF: dict[Kind, type[Reply]] = {
    Kind.HELLO: Welcome,
    Kind.GET_PARTITION_MAP: PartitionMap,
    Kind.METRIC_CREATE: SchemaReply,
    Kind.METRIC_UPDATE: SchemaReply,
    Kind.METRIC_GET: SchemaReply,
    Kind.METRIC_LIST: SchemaList,
    Kind.METRIC_DELETE: Deleted,
    Kind.INGEST: IngestReply,
    Kind.QUERY: AggReply,
    Kind.QUERY_REALTIME: AggReply,
    Kind.QUERY_BREAKDOWN: BreakdownReply,
    Kind.LIST_EVENTS: EventsPage,
    Kind.LIST_ALERTS: AlertsPage,
    Kind.CLUSTER_STATUS: ClusterStatusReply,
    Kind.SUBSCRIBE_ALERTS: Subscribed,
    Kind.UNSUBSCRIBE_ALERTS: Unsubscribed,
}

REQUEST_OF: dict[Kind, type[Request]] = {
    cls.KIND: cls
    for cls in (
        Hello,
        GetPartitionMap,
        MetricCreate,
        MetricUpdate,
        MetricGet,
        MetricList,
        MetricDelete,
        Ingest,
        Query,
        QueryRealtime,
        QueryBreakdown,
        ListEvents,
        ListAlerts,
        ClusterStatus,
        SubscribeAlerts,
        UnsubscribeAlerts,
    )
}


# --------------------------------------------------------------------------- pushes


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertsPush:
    """New committed alerts of a live subscription, in cursor order."""

    PUSH: ClassVar[PushKind] = PushKind.ALERTS
    partition: int
    alerts: tuple[StoredAlert, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionEnd:
    """The server ended a live subscription; nothing more comes for it. ``status`` says why:
    BACKPRESSURE (the client read too slowly), NOT_LEADER (``leader`` leads now, if known),
    UNAVAILABLE (the node is stopping). The client subscribes again from its cursor."""

    PUSH: ClassVar[PushKind] = PushKind.SUBSCRIPTION_END
    partition: int
    status: int
    message: str
    leader: str | None = None


Push = AlertsPush | SubscriptionEnd

PUSH_OF: dict[PushKind, type[Push]] = {cls.PUSH: cls for cls in (AlertsPush, SubscriptionEnd)}


@dataclass(frozen=True, slots=True, kw_only=True)
class PushFrame:
    subscription_id: int
    message: Push


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFrame:
    request_id: int
    message: Request


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerFrame:
    """A batch of Raft messages from a peer node (``unimeter/consensus/codec.py`` reads the
    items). Only a connection that said HELLO with a ``peer_node_id`` may send it."""

    items: list[object]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseFrame:
    request_id: int
    status: int  # errors.Status
    kind: Kind  # the kind of the request answered (known to the decoder from its request id)
    message: Reply
