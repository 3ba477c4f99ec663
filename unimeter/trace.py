"""Record every message delivered to every core, and replay it offline (DESIGN §3.5).

A core is a pure function of where it started and of the messages it was stepped with (with
their ``now``), so a trace holding exactly that replays to the same state, step for step. The
node writes one with ``python -m unimeter.node --trace FILE``; a failing simulator seed writes
the same format. ``python -m unimeter.trace replay FILE`` re-runs the cores and prints each step
and the resulting state; ``python -m unimeter.trace summary FILE`` says what each actor did.

File format: records of ``u32 big-endian length | one CBOR item``:

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
``["catalog", version, [[generation, schema], ...], token]`` (MetricSchema.to_wire). Tokens,
whatever they were at run time, become small integers: replies in a replay go nowhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import random
import signal
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

from unimeter.actors.catalog import CatalogCore, CatalogRequest, CatalogState
from unimeter.actors.entries import BatchEntry, LiveMetric
from unimeter.actors.partition import CatalogUpdate, ClientRequest, PartitionCore
from unimeter.actors.partition_state import TS_MAX_US, TS_MIN_US, PartitionState
from unimeter.actors.replicated import DiskState, PeerMessage, Persisted, RaftTick, Recovered
from unimeter.consensus import codec as raft_codec
from unimeter.consensus.codec import CATALOG_GROUP
from unimeter.consensus.config import RaftConfig
from unimeter.consensus.messages import AppendEntries, HardState, LogEntry, SnapshotMeta
from unimeter.model import MetricSchema
from unimeter.wire import messages as m
from unimeter.wire.bodies import decode_request, encode_body
from unimeter.wire.frames import decode_item, encode_item
from unimeter.wire.records import decode_entry

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


def _encode_spec(spec: CoreSpec) -> dict[str, Any]:
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


def _decode_spec(d: dict[str, Any]) -> CoreSpec:
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
    if isinstance(msg, ClientRequest):
        req = msg.request
        return ["client", token(msg.token), int(req.KIND), encode_body(req)]
    if isinstance(msg, CatalogRequest):
        creq = msg.request
        return ["catalog_request", token(msg.token), int(creq.KIND), encode_body(creq)]
    if isinstance(msg, CatalogUpdate):
        metrics = [[lm.generation, lm.schema.to_wire()] for lm in msg.metrics]
        return ["catalog", msg.version, metrics, None if msg.token is None else token(msg.token)]
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
    if tag == "client":
        req = decode_request(m.Kind(item[2]), item[3])
        return ClientRequest(item[1], cast(m.Ingest, req))
    if tag == "catalog_request":
        creq = decode_request(m.Kind(item[2]), item[3])
        return CatalogRequest(item[1], cast(m.MetricCreate, creq))
    if tag == "catalog":
        metrics = tuple(
            LiveMetric(generation=g, schema=MetricSchema.from_wire(w)) for g, w in item[2]
        )
        return CatalogUpdate(item[1], metrics, item[3])
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
        self._writer._write(["start", self._actor, _encode_spec(self._spec)])

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


# ---------------------------------------------------------------------- replay


def post_state(core: Core) -> list[Any]:
    raft = core.raft
    return [raft.role.value, raft.term, raft.commit_index, core.state.applied_index]


@dataclass(slots=True)
class Stepped:
    number: int  # 1-based, over every step record of the file
    actor: Actor
    now_us: int
    message: object
    recorded: list[Any] | None  # the post state the trace holds
    replayed: list[Any] | None  # the post state of the replay (None: the step raised)
    error: BaseException | None
    replies: int
    sends: int

    @property
    def diverged(self) -> bool:
        return self.recorded != self.replayed


class Replayer:
    """Rebuilds the traced cores and steps them with the traced messages."""

    def __init__(self, only: Callable[[Actor], bool] | None = None) -> None:
        self.only = only
        self.cores: dict[Actor, Core] = {}
        self.steps = 0
        self.first_us: int | None = None
        self.accounts: dict[int, set[int]] = {}  # partition -> accounts seen in its entries

    def feed(self, record: list[Any]) -> Stepped | str | None:
        """Apply one record; a ``Stepped`` for a step, a line of text for a start, else None."""
        kind = record[0]
        if kind == "step":
            self.steps += 1
            actor = (record[1][0], record[1][1])
            if self.first_us is None:
                self.first_us = record[2]
            if self.only is not None and not self.only(actor):
                return None
            return self._step(actor, record)
        if kind == "start":
            spec = _decode_spec(record[2])
            if self.only is not None and not self.only(spec.actor):
                return None
            self.cores[spec.actor] = build_core(spec)
            for e in spec.recovered.entries:
                self._note_entry(spec.group, e.data)
            rec = spec.recovered
            snap = f" snapshot@{rec.snapshot.index}" if rec.snapshot else ""
            return (
                f"start {actor_name(spec.actor)} term={rec.hard_state.term} "
                f"commit={rec.hard_state.commit} log_entries={len(rec.entries)}{snap} "
                f"rng_seed={spec.rng_seed}"
            )
        if kind == "compact":
            actor = (record[1][0], record[1][1])
            core = self.cores.get(actor)
            if core is not None:
                core.raft.compact(record[2])
        return None

    def _note_accounts(self, group: int, msg: object) -> None:
        if group == CATALOG_GROUP:
            return
        if isinstance(msg, ClientRequest) and isinstance(msg.request, m.Ingest):
            self.accounts.setdefault(group, set()).update(msg.request.batch.account_ids)
        elif isinstance(msg, PeerMessage) and isinstance(msg.message, AppendEntries):
            for e in msg.message.entries:
                self._note_entry(group, e.data)

    def _note_entry(self, group: int, data: bytes) -> None:
        if group != CATALOG_GROUP and data:
            entry = decode_entry(data)
            if isinstance(entry, BatchEntry):
                self.accounts.setdefault(group, set()).update(entry.batch.account_ids)

    def _step(self, actor: Actor, record: list[Any]) -> Stepped:
        core = self.cores.get(actor)
        if core is None:
            raise TraceError(f"step {self.steps} for {actor_name(actor)} before its start")
        msg = decode_message(record[3])
        self._note_accounts(actor[1], msg)
        error: BaseException | None = None
        replies = sends = 0
        replayed: list[Any] | None = None
        try:
            fx = core.step(msg, record[2])
        except Exception as exc:  # the recorded run raised here too, or the replay diverged
            error = exc
        else:
            replayed = post_state(core)
            replies, sends = len(fx.replies), len(fx.sends)
        return Stepped(
            number=self.steps,
            actor=actor,
            now_us=record[2],
            message=msg,
            recorded=record[4],
            replayed=replayed,
            error=error,
            replies=replies,
            sends=sends,
        )

    def line(self, s: Stepped) -> str:
        t = (s.now_us - (self.first_us or 0)) / 1_000_000
        head = f"#{s.number} t=+{t:.6f} {actor_name(s.actor)} {describe(s.message)}"
        if s.error is not None:
            return f"{head}\n    -> raised {s.error!r}"
        role, term, commit, applied = s.replayed or ("?", 0, 0, 0)
        out = f"{head}\n    -> {role} term={term} commit={commit} applied={applied}"
        if s.replies or s.sends:
            out += f" replies={s.replies} sends={s.sends}"
        return out


def state_summary(actor: Actor, core: Core, accounts: Iterable[int] = ()) -> list[str]:
    """The state a replay ended in: Raft position and, for a partition, its aggregates."""
    raft = core.raft
    lines = [
        f"{actor_name(actor)}: {raft.role.value} term={raft.term} leader={raft.leader_id} "
        f"commit={raft.commit_index} applied={core.state.applied_index} "
        f"last_index={raft.last_index} snapshot_index={raft.snapshot_index}"
    ]
    if isinstance(core, CatalogCore):
        codes = ", ".join(lm.schema.code for lm in core.state.sorted())
        lines.append(f"  catalog version={core.state.version} metrics=[{codes}]")
        return lines
    state = core.state
    digest = hashlib.sha256(state.snapshot()).hexdigest()[:16]
    lines.append(
        f"  catalog_version={state.catalog_version} next_offset={state.next_offset} "
        f"state_sha256={digest}"
    )
    for code, account, value in aggregates(state, accounts):
        lines.append(
            f"  {code} account={account}: count={value.count} sum={value.sum} max={value.max} "
            f"last={value.last_value} alert_flags={value.alert_flags}"
        )
    return lines


def aggregates(state: PartitionState, accounts: Iterable[int]) -> list[tuple[str, int, Any]]:
    """Every live metric's all-time aggregate for each of ``accounts`` that has events."""
    out = []
    for lm in state.live_metrics():
        code = lm.schema.code
        for account in sorted(accounts):
            value = state.query(code, account, TS_MIN_US, TS_MAX_US)
            if value.count or value.last_value is not None:
                out.append((code, account, value))
    return out


def replay(
    path: str,
    *,
    only: Callable[[Actor], bool] | None = None,
    until: int | None = None,
    out: Callable[[str], None] = print,
    quiet: bool = False,
) -> tuple[Replayer, list[Stepped]]:
    """Replay ``path``; returns the replayer (its cores hold the end state) and every step
    whose replayed post state differs from the recorded one."""
    rp = Replayer(only)
    diverged: list[Stepped] = []
    for record in read_records(path):
        if record[0] == MAGIC:
            continue
        if record[0] == "note":
            if not quiet and only is None:
                out(f"note t=+{(record[1] - (rp.first_us or record[1])) / 1e6:.6f} {record[2]}")
            continue
        result = rp.feed(record)
        if isinstance(result, str):
            if not quiet:
                out(result)
        elif result is not None:
            if not quiet:
                out(rp.line(result))
            if result.diverged:
                diverged.append(result)
                out(
                    f"DIVERGED at step #{result.number} ({actor_name(result.actor)}): "
                    f"recorded {result.recorded}, replayed {result.replayed}"
                )
        if until is not None and rp.steps >= until:
            break
    return rp, diverged


# ---------------------------------------------------------------------- summary


def summary(path: str, out: Callable[[str], None] = print) -> None:
    """What happened per actor, from the records alone (no replay)."""
    meta = header(path)
    out("trace " + " ".join(f"{k}={v}" for k, v in sorted(meta.items())))
    kinds: dict[Actor, Counter[str]] = {}
    starts: Counter[Actor] = Counter()
    last: dict[Actor, list[Any] | None] = {}
    span: dict[Actor, tuple[int, int]] = {}
    leader_terms: dict[Actor, set[int]] = {}
    events: Counter[Actor] = Counter()
    notes = 0
    for record in read_records(path):
        kind = record[0]
        if kind == "note":
            notes += 1
            continue
        if kind not in ("start", "step"):
            continue
        actor = (
            (record[1][0], record[1][1])
            if kind == "step"
            else (record[2]["node"], record[2]["group"])
        )
        if kind == "start":
            starts[actor] += 1
            continue
        msg = record[3]
        tag = msg[0]
        if tag == "peer":
            tag = "peer:" + type(raft_codec.decode_message(msg[1])[1]).__name__
        elif tag in ("client", "catalog_request"):
            tag = f"{tag}:{m.Kind(msg[2]).name.lower()}"
            if msg[2] == m.Kind.INGEST:
                events[actor] += len(decode_request(m.Kind.INGEST, msg[3]).batch)  # type: ignore[union-attr]
        kinds.setdefault(actor, Counter())[tag] += 1
        first, _ = span.get(actor, (record[2], record[2]))
        span[actor] = (first, record[2])
        post = record[4]
        last[actor] = post
        if post is not None and post[0] == "leader":
            leader_terms.setdefault(actor, set()).add(post[1])
    for actor in sorted(set(kinds) | set(starts)):
        counts = kinds.get(actor, Counter())
        first, end = span.get(actor, (0, 0))
        post = last.get(actor)
        where = (
            "raised"
            if post is None
            else (f"{post[0]} term={post[1]} commit={post[2]} applied={post[3]}")
        )
        out(
            f"{actor_name(actor)}: starts={starts[actor]} steps={sum(counts.values())} "
            f"span_s={(end - first) / 1e6:.3f} led_terms={sorted(leader_terms.get(actor, ()))} "
            f"events_ingested={events[actor]} last: {where}"
        )
        for tag, n in sorted(counts.items()):
            out(f"    {tag}: {n}")
    out(f"notes: {notes}")


# ---------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m unimeter.trace",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("replay", help="re-run the cores, print each step and the end state")
    r.add_argument("file")
    r.add_argument("--partition", type=int, help="only this partition's replicas")
    r.add_argument("--catalog", action="store_true", help="only the catalog's replicas")
    r.add_argument("--node", type=int, help="only this node's cores")
    r.add_argument("--until", type=int, metavar="STEP", help="stop after step number STEP")
    r.add_argument("--quiet", action="store_true", help="print only the end state")
    r.add_argument(
        "--account",
        type=int,
        action="append",
        default=[],
        help="also summarise this account (accounts seen in the trace always are)",
    )
    s = sub.add_parser("summary", help="what happened per actor")
    s.add_argument("file")
    a = p.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly
    if a.command == "summary":
        summary(a.file)
        return 0

    def only(actor: Actor) -> bool:
        node, group = actor
        if a.node is not None and node != a.node:
            return False
        if a.partition is not None and group != a.partition:
            return False
        return not (a.catalog and group != CATALOG_GROUP)

    filtered = a.node is not None or a.partition is not None or a.catalog
    rp, diverged = replay(a.file, only=only if filtered else None, until=a.until, quiet=a.quiet)
    print(f"--- end state after {rp.steps} step(s)")
    for actor in sorted(rp.cores):
        accounts = rp.accounts.get(actor[1], set()) | set(a.account)
        for line in state_summary(actor, rp.cores[actor], accounts):
            print(line)
    if diverged:
        print(f"replay diverged from the recording at {len(diverged)} step(s)")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
