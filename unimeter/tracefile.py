"""The trace file format: what a core started from, every message it was stepped with.

Records of ``u32 big-endian length | one CBOR item``:

    ["unimeter-trace", 1, {"source": "node" | "sim", ...}]         first record
    ["start", [node, group], spec]       a core (re)starts; spec = every constructor input,
                                         including what recovery read from disk and the seed of
                                         the core's random.Random (so replay draws the same)
    ["step", [node, group], now_us, message, post]
                                         one ``core.step(message, now_us)``; post is
                                         [role, term, commit, applied] after it (None: it raised)
    ["compact", [node, group], index]    the runtime compacted the core's log (a checkpoint)
    ["note", now_us, text]               context only (the simulator's faults and clients)

``group`` is the partition number, or -1 for the catalog. Messages: ``["tick"]``,
``["persisted", n]``, ``["disk", writable]``, ``["peer", raft message]`` (consensus/codec.py),
``["client", token, kind, body]`` and ``["catalog_request", token, kind, body]`` (wire bodies),
``["catalog", version, [[generation, schema], ...], token]`` (MetricSchema.to_wire),
``["webhook_progress", next_cursor]``. Tokens,
whatever they were at run time, become small integers: replies in a replay go nowhere.

The node's runtime (``ReplicaRuntime.tracer``) and the simulator's write it through
``ActorTracer``; ``unimeter.trace`` reads and replays it.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from unimeter.actors.catalog import CatalogCore, CatalogRequest, CatalogState
from unimeter.actors.partition import (
    CatalogUpdate,
    ClientRequest,
    IngestGroup,
    PartitionCore,
    WebhookProgress,
)
from unimeter.actors.replicated import (
    DiskState,
    PeerLost,
    PeerMessage,
    Persisted,
    RaftTick,
    Recovered,
)
from unimeter.consensus import codec as raft_codec
from unimeter.consensus.codec import CATALOG_GROUP
from unimeter.consensus.config import RaftConfig
from unimeter.consensus.messages import HardState, LogEntry, SnapshotMeta
from unimeter.model import MetricSchema
from unimeter.state.entries import LiveMetric
from unimeter.state.partition_state import PartitionState
from unimeter.wire import messages as m
from unimeter.wire.bodies import decode_request, encode_body
from unimeter.wire.frames import decode_item, encode_item

MAGIC = "unimeter-trace"
VERSION = 1
_LEN = struct.Struct(">I")

Core = PartitionCore | CatalogCore
Actor = tuple[int, int]  # (node id, group)


class TraceError(Exception):
    """A file that is not a trace this version can read, or a replay that diverged."""


def actor_name(actor: Actor) -> str:
    node, group = actor
    return f"n{node}/" + ("catalog" if group == CATALOG_GROUP else f"p{group}")


# ---------------------------------------------------------------------- core specs


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreSpec:
    """Everything a core's constructor took, so replay builds the very same core."""

    node_id: int
    group: int  # partition number, or CATALOG_GROUP
    members: tuple[int, ...]
    addresses: dict[int, str]
    raft: RaftConfig
    rng_seed: int
    created_us: int
    recovered: Recovered
    app: bytes | None  # the snapshot's application bytes (None: a fresh state)
    retention_days: int
    preferred: int | None

    @property
    def actor(self) -> Actor:
        return (self.node_id, self.group)


def build_core(spec: CoreSpec) -> Core:
    """The core ``spec`` describes, built the way ``unimeter.node`` builds it."""
    rng = random.Random(spec.rng_seed)
    if spec.group == CATALOG_GROUP:
        catalog = CatalogState() if spec.app is None else CatalogState.from_bytes(spec.app)
        return CatalogCore(
            state=catalog,
            node_id=spec.node_id,
            members=spec.members,
            addresses=spec.addresses,
            recovered=spec.recovered,
            raft_config=spec.raft,
            rng=rng,
            now_us=spec.created_us,
        )
    if spec.app is None:
        state = PartitionState(spec.group, retention_days=spec.retention_days)
    else:
        state = PartitionState.from_snapshot(spec.app)
    return PartitionCore(
        spec.group,
        state,
        node_id=spec.node_id,
        members=spec.members,
        addresses=spec.addresses,
        recovered=spec.recovered,
        raft_config=spec.raft,
        rng=rng,
        now_us=spec.created_us,
        retention_days=spec.retention_days,
        preferred=spec.preferred,
    )


def encode_spec(spec: CoreSpec) -> dict[str, Any]:
    rec = spec.recovered
    hs = rec.hard_state
    snap = rec.snapshot
    return {
        "node": spec.node_id,
        "group": spec.group,
        "members": list(spec.members),
        "addresses": [[i, a] for i, a in sorted(spec.addresses.items())],
        "raft": dataclasses.asdict(spec.raft),
        "rng_seed": spec.rng_seed,
        "created_us": spec.created_us,
        "hard_state": [hs.term, hs.vote, hs.commit],
        "entries": [[e.term, e.index, e.data] for e in rec.entries],
        "snapshot": None if snap is None else [snap.index, snap.term, list(snap.members)],
        "app": spec.app,
        "retention_days": spec.retention_days,
        "preferred": spec.preferred,
    }


def decode_spec(d: dict[str, Any]) -> CoreSpec:
    term, vote, commit = d["hard_state"]
    snap = d["snapshot"]
    recovered = Recovered(
        hard_state=HardState(term=term, vote=vote, commit=commit),
        entries=tuple(LogEntry(term=t, index=i, data=data) for t, i, data in d["entries"]),
        snapshot=None
        if snap is None
        else SnapshotMeta(index=snap[0], term=snap[1], members=tuple(snap[2])),
    )
    return CoreSpec(
        node_id=d["node"],
        group=d["group"],
        members=tuple(d["members"]),
        addresses={i: a for i, a in d["addresses"]},
        raft=RaftConfig(**d["raft"]),
        rng_seed=d["rng_seed"],
        created_us=d["created_us"],
        recovered=recovered,
        app=d["app"],
        retention_days=d["retention_days"],
        preferred=d["preferred"],
    )


# ---------------------------------------------------------------------- messages


def encode_message(msg: object, token: Callable[[object], int]) -> list[Any]:
    """One core input as a CBOR-ready list; ``token`` numbers the opaque reply tokens."""
    if isinstance(msg, PeerMessage):
        group = 0  # the group travels in the actor; the codec's slot is not needed twice
        return ["peer", raft_codec.encode_message(group, msg.message)]
    if isinstance(msg, RaftTick):
        return ["tick"]
    if isinstance(msg, Persisted):
        return ["persisted", msg.number]
    if isinstance(msg, DiskState):
        return ["disk", msg.writable]
    if isinstance(msg, PeerLost):
        return ["peer_lost", msg.node_id]
    if isinstance(msg, ClientRequest):
        req = msg.request
        return ["client", token(msg.token), int(req.KIND), encode_body(req)]
    if isinstance(msg, IngestGroup):
        return ["ingests", [encode_message(r, token)[1:] for r in msg.requests]]
    if isinstance(msg, CatalogRequest):
        creq = msg.request
        return ["catalog_request", token(msg.token), int(creq.KIND), encode_body(creq)]
    if isinstance(msg, CatalogUpdate):
        metrics = [[lm.generation, lm.schema.to_wire()] for lm in msg.metrics]
        return ["catalog", msg.version, metrics, None if msg.token is None else token(msg.token)]
    if isinstance(msg, WebhookProgress):
        return ["webhook_progress", msg.next_cursor]
    raise TraceError(f"no trace encoding for {msg!r}")


def decode_message(item: list[Any]) -> object:
    tag = item[0]
    if tag == "peer":
        return PeerMessage(raft_codec.decode_message(item[1])[1])
    if tag == "tick":
        return RaftTick()
    if tag == "persisted":
        return Persisted(item[1])
    if tag == "disk":
        return DiskState(item[1])
    if tag == "peer_lost":
        return PeerLost(item[1])
    if tag == "client":
        req = decode_request(m.Kind(item[2]), item[3])
        return ClientRequest(item[1], cast(m.Ingest, req))
    if tag == "ingests":
        return IngestGroup(tuple(decode_message(["client", *r]) for r in item[1]))  # type: ignore[misc]
    if tag == "catalog_request":
        creq = decode_request(m.Kind(item[2]), item[3])
        return CatalogRequest(item[1], cast(m.MetricCreate, creq))
    if tag == "catalog":
        metrics = tuple(
            LiveMetric(generation=g, schema=MetricSchema.from_wire(w)) for g, w in item[2]
        )
        return CatalogUpdate(item[1], metrics, item[3])
    if tag == "webhook_progress":
        return WebhookProgress(item[1])
    raise TraceError(f"unknown message tag {tag!r}")


def describe(msg: object) -> str:
    """A one-line human form of a core input."""
    if isinstance(msg, PeerMessage):
        r = msg.message
        fields = {
            k: v
            for k, v in ((f.name, getattr(r, f.name)) for f in dataclasses.fields(r))
            if k not in ("src", "dst", "term", "entries", "snapshot")
        }
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        if hasattr(r, "entries"):
            extra += f" entries={len(r.entries)}"
        return f"{type(r).__name__} {r.src}->{r.dst} term={r.term} {extra}".rstrip()
    if isinstance(msg, ClientRequest | CatalogRequest):
        req = msg.request
        keys = (
            "partition",
            "account_id",
            "metric_code",
            "producer_id",
            "seq",
            "sync",
            "min_index",
            "code",
        )
        parts = [f"{k}={getattr(req, k)}" for k in keys if hasattr(req, k)]
        if isinstance(req, m.Ingest):
            parts.append(f"events={len(req.batch)}")
        return f"{type(req).__name__}#{msg.token} " + " ".join(parts)
    if isinstance(msg, CatalogUpdate):
        return f"CatalogUpdate version={msg.version} metrics={len(msg.metrics)} token={msg.token}"
    if isinstance(msg, IngestGroup):
        return f"IngestGroup of {len(msg.requests)}: " + "; ".join(map(describe, msg.requests))
    return repr(msg)


# ---------------------------------------------------------------------- writing


class TraceWriter:
    """Writes a trace to ``sink`` (a binary file, or anything with ``write``)."""

    def __init__(self, sink: IO[bytes] | Any, meta: dict[str, Any]) -> None:
        self._sink = sink
        self._tokens = 0
        self._actors: list[ActorTracer] = []
        self.records = 0
        self._write([MAGIC, VERSION, meta])

    @classmethod
    def open(cls, path: str, meta: dict[str, Any]) -> TraceWriter:
        return cls(open(path, "wb"), meta)

    def _write(self, item: object) -> None:
        data = encode_item(item)
        self._sink.write(_LEN.pack(len(data)) + data)
        self.records += 1

    def _token(self, token: object) -> int:
        self._tokens += 1
        return self._tokens

    def actor(self, spec: CoreSpec) -> ActorTracer:
        tracer = ActorTracer(self, spec)
        self._actors.append(tracer)
        return tracer

    def note(self, now_us: int, text: str) -> None:
        self._write(["note", now_us, text])

    def flush(self) -> None:
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        for tracer in self._actors:
            tracer.raised()  # a step whose stepped() never came: its core raised
        close = getattr(self._sink, "close", None)
        if close is not None:
            close()


class ActorTracer:
    """One core's tap: the runtime calls ``started`` when it primes the core, then ``step``
    before and ``stepped`` after every ``core.step``.

    Between two steps the runtime may compact the core's Raft log (a snapshot was written);
    ``step`` notices (the snapshot index moved outside a step) and records it first, so a
    replay compacts at the same point.
    """

    __slots__ = ("_actor", "_pending", "_snapshot_index", "_spec", "_writer")

    def __init__(self, writer: TraceWriter, spec: CoreSpec) -> None:
        self._writer = writer
        self._spec = spec
        self._actor = [spec.node_id, spec.group]
        self._pending: list[Any] | None = None
        snap = spec.recovered.snapshot
        self._snapshot_index = snap.index if snap is not None else 0

    def started(self) -> None:
        self._writer._write(["start", self._actor, encode_spec(self._spec)])

    def step(self, msg: object, now_us: int, core: Core) -> None:
        self._flush_pending()
        index = core.raft.snapshot_index
        if index != self._snapshot_index:
            self._snapshot_index = index
            self._writer._write(["compact", self._actor, index])
        self._pending = ["step", self._actor, now_us, encode_message(msg, self._writer._token)]

    def stepped(self, core: Core) -> None:
        pending = self._pending
        assert pending is not None, "stepped() without step()"
        self._pending = None
        self._snapshot_index = core.raft.snapshot_index
        pending.append(post_state(core))
        self._writer._write(pending)

    def raised(self) -> None:
        """The step given to ``step`` raised: write it with no post state."""
        self._flush_pending()

    def _flush_pending(self) -> None:
        if self._pending is not None:
            self._pending.append(None)
            self._writer._write(self._pending)
            self._pending = None


# ---------------------------------------------------------------------- reading


def read_records(path: str) -> Iterator[list[Any]]:
    with open(path, "rb") as f:
        first = True
        while True:
            head = f.read(4)
            if not head:
                return
            if len(head) < 4:
                raise TraceError(f"{path}: truncated record header")
            (size,) = _LEN.unpack(head)
            data = f.read(size)
            if len(data) < size:
                return  # a torn tail (the node was killed mid-write): stop there
            item = decode_item(data)
            if first:
                if not (isinstance(item, list) and item[:2] == [MAGIC, VERSION]):
                    raise TraceError(f"{path}: not a unimeter trace (version {VERSION})")
                first = False
            yield item


def header(path: str) -> dict[str, Any]:
    for item in read_records(path):
        meta: dict[str, Any] = item[2]
        return meta
    raise TraceError(f"{path}: empty")


def post_state(core: Core) -> list[Any]:
    raft = core.raft
    return [raft.role.value, raft.term, raft.commit_index, core.state.applied_index]
