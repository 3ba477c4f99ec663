"""A deterministic in-memory cluster of RaftCores: the runtime, network and disks of tests.

Everything random is drawn from one seed. The virtual clock jumps from event to event
(message deliveries, fsync completions, core deadlines). Each node's runtime follows the
Ready contract of unimeter/consensus/ready.py exactly:
- writes go to a volatile ``written`` disk state and an ``unsynced`` op list; an fsync makes a
  prefix of those ops durable after a random delay, then reports ``on_persisted``;
- a crash keeps a random prefix of the unsynced ops (the OS may have flushed some) and loses the
  rest; a restart rebuilds the core and the application from the durable state only.
The SafetyChecker runs after every event (see its docstring).
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from unimeter.consensus.config import RaftConfig, Role
from unimeter.consensus.messages import HardState, LogEntry, Message, Snapshot, SnapshotMeta
from unimeter.consensus.quorum import majority
from unimeter.consensus.raft import RaftCore

FAST = RaftConfig(
    election_timeout_s=0.1,
    heartbeat_interval_s=0.02,
    replicate_stall_s=0.05,
    snapshot_retry_s=0.3,
    append_entries_max=8,
    inflight_appends_max=4,
)


@dataclass
class NetConfig:
    delay_min_s: float = 0.001
    delay_max_s: float = 0.004
    drop_p: float = 0.0
    dup_p: float = 0.0


@dataclass
class DiskConfig:
    fsync_min_s: float = 0.0005
    fsync_max_s: float = 0.003
    # Some fsyncs stall far longer than a network round trip (a busy disk).
    fsync_slow_p: float = 0.0
    fsync_slow_s: float = 0.05
    # On a crash, the WAL and the hard-state file each keep a random prefix of their unsynced
    # writes, independently (the OS may have flushed some, in any order between files).
    crash_keeps_unsynced_prefix: bool = True


# ---------------------------------------------------------------------- disks


@dataclass(frozen=True)
class SaveSnapshot:
    snapshot: Snapshot


@dataclass(frozen=True)
class SaveEntries:
    entries: tuple[LogEntry, ...]


@dataclass(frozen=True)
class SaveHardState:
    hard_state: HardState


DiskOp = SaveSnapshot | SaveEntries | SaveHardState


@dataclass
class DiskState:
    """One node's WAL + hard state + snapshot file."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[LogEntry] = field(default_factory=list)

    @property
    def base(self) -> int:
        return self.snapshot.meta.index if self.snapshot is not None else 0

    def copy(self) -> DiskState:
        return DiskState(self.hard_state, self.snapshot, list(self.entries))

    def term_at(self, index: int) -> int | None:
        if self.snapshot is not None and index == self.base:
            return self.snapshot.meta.term
        k = index - self.base - 1
        if 0 <= k < len(self.entries):
            return self.entries[k].term
        return None

    def holds(self, index: int, term: int) -> bool:
        return index < self.base or self.term_at(index) == term

    def apply(self, op: DiskOp) -> None:
        if isinstance(op, SaveSnapshot):
            self.snapshot = op.snapshot
            self.entries = []
        elif isinstance(op, SaveEntries):
            entries = [e for e in op.entries if e.index > self.base]
            if entries:
                # wal.truncate_after(first - 1), then append
                keep = entries[0].index - self.base - 1
                assert 0 <= keep <= len(self.entries), (keep, len(self.entries))
                del self.entries[keep:]
                self.entries.extend(entries)
        else:
            self.hard_state = op.hard_state

    def compact(self, snapshot: Snapshot) -> None:
        if snapshot.meta.index <= self.base:
            return
        self.entries = [e for e in self.entries if e.index > snapshot.meta.index]
        self.snapshot = snapshot


# ---------------------------------------------------------------------- application


@dataclass
class App:
    """The replicated state machine: every applied entry, in order."""

    applied: list[tuple[int, int, bytes]] = field(default_factory=list)
    base_index: int = 0  # last index of the snapshot it was restored from

    @property
    def last_index(self) -> int:
        return self.applied[-1][0] if self.applied else self.base_index

    def apply(self, entry: LogEntry) -> None:
        assert entry.index == self.last_index + 1, (entry.index, self.last_index)
        self.applied.append((entry.index, entry.term, entry.data))

    def payloads(self) -> list[bytes]:
        return [d for _, _, d in self.applied if d]

    def encode(self) -> bytes:
        rows = [[i, t, d.hex()] for i, t, d in self.applied]
        return json.dumps({"base": self.base_index, "rows": rows}).encode()

    @classmethod
    def decode(cls, data: bytes) -> App:
        obj = json.loads(data)
        rows = [(i, t, bytes.fromhex(d)) for i, t, d in obj["rows"]]
        return cls(applied=rows, base_index=obj["base"])


# ---------------------------------------------------------------------- nodes


@dataclass
class SimNode:
    id: int
    rng: random.Random
    durable: DiskState = field(default_factory=DiskState)
    written: DiskState = field(default_factory=DiskState)
    unsynced: list[DiskOp] = field(default_factory=list)
    core: RaftCore | None = None
    app: App = field(default_factory=App)
    written_number: int = 0  # newest must_sync Ready stored
    reported_number: int = 0  # newest Ready reported through on_persisted
    sync: tuple[int, int, float] | None = None  # (ops covered, ready number, done at)
    hold_fsync: bool = False
    fsyncs: int = 0

    @property
    def up(self) -> bool:
        return self.core is not None

    def must_core(self) -> RaftCore:
        assert self.core is not None, f"node {self.id} is down"
        return self.core


class SafetyViolation(AssertionError):
    pass


class SafetyChecker:
    """Invariants checked after every event:
    - at most one leader per term (across crashes and restarts);
    - committed entries never change: each (index -> term, data) is fixed the first time any
      node commits or applies it, and every node's committed prefix must agree with it;
    - every node applies the same sequence, consecutively;
    - a committed entry is on the durable storage of a quorum of nodes;
    - a new leader's log holds every committed entry (leader completeness).
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.leaders: dict[int, int] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.checked_commit: dict[int, int] = {}  # node -> commit index already checked
        self.checked_leader: dict[int, int] = {}  # node -> term its completeness was checked

    def fail(self, message: str) -> None:
        raise SafetyViolation(f"seed={self.cluster.seed} t={self.cluster.now:.4f}: {message}")

    def record(self, index: int, term: int, data: bytes, who: int) -> None:
        known = self.committed.setdefault(index, (term, data))
        if known != (term, data):
            self.fail(f"node {who}: committed entry {index} changed: {known} -> {(term, data)}")

    def on_apply(self, node: int, entry: LogEntry) -> None:
        self.record(entry.index, entry.term, entry.data, node)

    def on_restart(self, node: int) -> None:
        self.checked_commit[node] = 0

    def check(self) -> None:
        quorum = majority(len(self.cluster.nodes))
        for node in self.cluster.nodes.values():
            core = node.core
            if core is None:
                continue
            if core.role is Role.LEADER:
                holder = self.leaders.setdefault(core.term, node.id)
                if holder != node.id:
                    self.fail(f"two leaders in term {core.term}: {holder} and {node.id}")
                if self.checked_leader.get(node.id) != core.term:
                    self.checked_leader[node.id] = core.term
                    self._check_completeness(node.id, core)
            start = max(self.checked_commit.get(node.id, 0), core.snapshot_index) + 1
            for index in range(start, core.commit_index + 1):
                (entry,) = core.entries(index, index)
                self.record(index, entry.term, entry.data, node.id)
                holders = sum(
                    1 for n in self.cluster.nodes.values() if n.durable.holds(index, entry.term)
                )
                if holders < quorum:
                    self.fail(f"entry {index} committed on {node.id} but durable on {holders}")
            self.checked_commit[node.id] = max(start - 1, core.commit_index)

    def _check_completeness(self, node: int, core: RaftCore) -> None:
        for index, (term, _) in self.committed.items():
            if index > core.snapshot_index and core.term_at(index) != term:
                self.fail(f"leader {node} (term {core.term}) lacks committed entry {index}")


# ---------------------------------------------------------------------- the cluster


class Cluster:
    def __init__(
        self,
        size: int = 3,
        *,
        seed: int = 0,
        config: RaftConfig = FAST,
        net: NetConfig | None = None,
        disk: DiskConfig | None = None,
        compact_every: int | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config
        self.net = net or NetConfig()
        self.disk = disk or DiskConfig()
        self.compact_every = compact_every
        self.now = 0.0
        self.members = tuple(range(1, size + 1))
        self.nodes = {i: SimNode(i, random.Random(seed * 7919 + i)) for i in self.members}
        self.blocked: set[tuple[int, int]] = set()
        self.checker = SafetyChecker(self)
        self.trace: list[str] = []
        self.delivered = 0
        self._queue: list[tuple[float, int, Message]] = []
        self._seq = 0
        for node in self.nodes.values():
            self._boot(node)

    # ------------------------------------------------------------------ control

    def core(self, node: int) -> RaftCore:
        return self.nodes[node].must_core()

    def leaders(self) -> list[int]:
        """Every live node that believes it leads (stale ones included)."""
        return [n.id for n in self.nodes.values() if n.core and n.core.role is Role.LEADER]

    def leader(self) -> int | None:
        """The live leader with the highest term, if any."""
        best: tuple[int, int] | None = None
        for node in self.nodes.values():
            core = node.core
            if core is not None and core.role is Role.LEADER and (not best or core.term > best[0]):
                best = (core.term, node.id)
        return best[1] if best else None

    def propose(self, node: int, data: bytes) -> int:
        index = self.core(node).propose(data, self.now)
        self._drain(self.nodes[node])
        return index

    def transfer(self, node: int, to: int) -> None:
        self.core(node).transfer_leadership(to, self.now)
        self._drain(self.nodes[node])

    def crash(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.core is None:
            return
        if self.disk.crash_keeps_unsynced_prefix and node.unsynced:
            wal = [op for op in node.unsynced if not isinstance(op, SaveHardState)]
            hard = [op for op in node.unsynced if isinstance(op, SaveHardState)]
            for wal_op in wal[: self.rng.randint(0, len(wal))]:
                node.durable.apply(wal_op)
            for hard_op in hard[: self.rng.randint(0, len(hard))]:
                node.durable.apply(hard_op)
        node.core = None
        node.unsynced = []
        node.sync = None
        self.trace.append(f"{self.now:.4f} crash {node_id}")

    def restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.core is None:
            self._boot(node)
            self.trace.append(f"{self.now:.4f} restart {node_id}")

    def isolate(self, node: int) -> None:
        for other in self.members:
            if other != node:
                self.blocked.add((node, other))
                self.blocked.add((other, node))

    def partition(self, *groups: tuple[int, ...]) -> None:
        """Cut every link between different groups (nodes not listed form their own group)."""
        side = {n: i for i, group in enumerate(groups) for n in group}
        for a in self.members:
            for b in self.members:
                if a != b and side.get(a, -a) != side.get(b, -b):
                    self.blocked.add((a, b))

    def heal(self) -> None:
        self.blocked.clear()

    def set_hold_fsync(self, node_id: int, hold: bool) -> None:
        node = self.nodes[node_id]
        node.hold_fsync = hold
        if not hold and node.sync is not None:
            covered, number, _ = node.sync
            node.sync = (covered, number, self.now + self._fsync_delay())
        self._maybe_start_fsync(node)

    # ------------------------------------------------------------------ running

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while self._next_event_time() <= end:
            self.step()
        self.now = end

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = self.now + timeout
        while not predicate():
            if self._next_event_time() > end:
                self.now = end
                return predicate()
            self.step()
        return True

    def wait_leader(self, timeout: float = 5.0) -> int:
        assert self.run_until(lambda: self.leader() is not None, timeout), "no leader elected"
        leader = self.leader()
        assert leader is not None
        return leader

    def step(self) -> None:
        self.now = max(self.now, self._next_event_time())
        while self._queue and self._queue[0][0] <= self.now:
            _, _, msg = heapq.heappop(self._queue)
            self._deliver(msg)
        for node in self.nodes.values():
            if node.sync is not None and node.sync[2] <= self.now and not node.hold_fsync:
                self._complete_fsync(node)
        for node in self.nodes.values():
            if node.core is not None and node.core.next_deadline() <= self.now:
                node.core.tick(self.now)
                self._drain(node)
        self.checker.check()

    def _next_event_time(self) -> float:
        t = self._queue[0][0] if self._queue else float("inf")
        for node in self.nodes.values():
            if node.core is not None:
                t = min(t, node.core.next_deadline())
            if node.sync is not None and not node.hold_fsync:
                t = min(t, node.sync[2])
        return t

    # ------------------------------------------------------------------ network

    def _send(self, msg: Message) -> None:
        if (msg.src, msg.dst) in self.blocked or self.rng.random() < self.net.drop_p:
            return
        copies = 2 if self.rng.random() < self.net.dup_p else 1
        for _ in range(copies):
            at = self.now + self.rng.uniform(self.net.delay_min_s, self.net.delay_max_s)
            self._seq += 1
            heapq.heappush(self._queue, (at, self._seq, msg))

    def _deliver(self, msg: Message) -> None:
        node = self.nodes[msg.dst]
        if node.core is None or (msg.src, msg.dst) in self.blocked:
            return
        self.delivered += 1
        node.core.step(msg, self.now)
        self._drain(node)

    # ------------------------------------------------------------------ node runtime

    def _boot(self, node: SimNode) -> None:
        durable = node.durable
        node.written = durable.copy()
        node.app = App.decode(durable.snapshot.data) if durable.snapshot else App()
        node.written_number = node.reported_number = 0
        node.core = RaftCore(
            node_id=node.id,
            members=self.members,
            rng=node.rng,
            config=self.config,
            hard_state=durable.hard_state,
            log=durable.entries,
            snapshot=durable.snapshot.meta if durable.snapshot else None,
            now=self.now,
            applied=node.app.last_index,
        )
        self.checker.on_restart(node.id)
        self._drain(node)

    def _drain(self, node: SimNode) -> None:
        core = node.must_core()
        while core.has_ready():
            rd = core.ready()
            ops: list[DiskOp] = []
            if rd.snapshot is not None:
                ops.append(SaveSnapshot(rd.snapshot))
                node.app = App.decode(rd.snapshot.data)
            if rd.entries:
                ops.append(SaveEntries(rd.entries))
            if rd.hard_state is not None:
                ops.append(SaveHardState(rd.hard_state))
            for op in ops:
                node.written.apply(op)
            node.unsynced.extend(ops)
            for msg in rd.messages:
                self._send(msg)
            for entry in rd.committed:
                node.app.apply(entry)
                self.checker.on_apply(node.id, entry)
            core.advance(rd)
            if rd.must_sync:
                node.written_number = rd.number
            for peer in rd.snapshot_requests:
                core.send_snapshot(peer, self._app_snapshot(node, core), self.now)
            self._maybe_compact(node, core)
        self._maybe_start_fsync(node)

    def _app_snapshot(self, node: SimNode, core: RaftCore) -> Snapshot:
        index = node.app.last_index
        term = core.term_at(index)
        assert term is not None
        meta = SnapshotMeta(index=index, term=term, members=self.members)
        return Snapshot(meta=meta, data=node.app.encode())

    def _maybe_compact(self, node: SimNode, core: RaftCore) -> None:
        every = self.compact_every
        if every is None or node.app.last_index - core.snapshot_index < every:
            return
        # The application's snapshot is written atomically and fsynced before compacting.
        snapshot = self._app_snapshot(node, core)
        node.durable.compact(snapshot)
        node.written.compact(snapshot)
        core.compact(snapshot.meta.index)

    def _fsync_delay(self) -> float:
        if self.rng.random() < self.disk.fsync_slow_p:
            return self.rng.uniform(self.disk.fsync_max_s, self.disk.fsync_slow_s)
        return self.rng.uniform(self.disk.fsync_min_s, self.disk.fsync_max_s)

    def _maybe_start_fsync(self, node: SimNode) -> None:
        if node.sync is not None or node.hold_fsync or node.core is None:
            return
        if node.unsynced or node.written_number > node.reported_number:
            node.sync = (len(node.unsynced), node.written_number, self.now + self._fsync_delay())

    def _complete_fsync(self, node: SimNode) -> None:
        assert node.sync is not None
        covered, number, _ = node.sync
        for op in node.unsynced[:covered]:
            node.durable.apply(op)
        del node.unsynced[:covered]
        node.sync = None
        node.fsyncs += 1
        if number > node.reported_number:
            node.reported_number = number
            node.must_core().on_persisted(number)
        self._drain(node)
