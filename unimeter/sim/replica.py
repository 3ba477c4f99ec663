"""The replica runtime, simulated: ``ReplicaRuntime`` (unimeter/actors/runtime.py) with the
event loop, the disk and the clock replaced by the simulated ones, and nothing else changed.

Method for method it mirrors the real runtime: a mailbox drained once per "loop iteration"
(one event of the world), one ``core.step`` per message, the effects executed in the order of
``effects.py`` (install, truncate + append, hard state, sends, fsync request, replies, then the
catalog's publications), group commit with one fsync in flight per log whose completion comes
back as ``Persisted``, ENOSPC handling (keep the records, tell the core ``DiskState(False)``,
retry every ``disk_retry_s``), one Raft timer armed at ``next_deadline_us``. It adds the hooks
the simulator needs: the trace tap and the checkers, which see every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cbor2

from unimeter.actors.catalog import CatalogCore, CatalogEffects
from unimeter.actors.effects import Effects
from unimeter.actors.partition import PartitionCore
from unimeter.actors.replicated import NEVER_US, DiskState, Persisted, RaftTick
from unimeter.actors.runtime import disk_retry_s, encode_record
from unimeter.consensus.codec import CATALOG_GROUP
from unimeter.consensus.messages import HardState, Snapshot
from unimeter.sim.disk import DiskFull, ReplicaDisk
from unimeter.tracefile import ActorTracer, Core, CoreSpec

if TYPE_CHECKING:
    from unimeter.sim.simnode import SimNode

_DISK_RETRY_US = int(disk_retry_s * 1_000_000)


class SimReplica:
    def __init__(self, node: SimNode, spec: CoreSpec, core: Core, disk: ReplicaDisk) -> None:
        self.node = node
        self.world = node.world
        self.spec = spec
        self.group = spec.group
        self.core = core
        self.disk = disk
        self.name = f"n{node.node_id}/" + (
            "catalog" if self.group == CATALOG_GROUP else f"p{self.group}"
        )
        self.alive = True
        self.mailbox: list[object] = []
        self._scheduled = False
        status = core.raft.status()
        self._saved_hs = (status.term, status.vote)
        self._last_hs: HardState | None = None
        self._syncing = False
        self._sync_wanted = 0
        self._unwritten: list[tuple[int, bytes]] = []
        self._timer_at: int | None = None
        self._timer_gen = 0
        self.disk_full = False
        self.checked_commit = 0  # the checkers' scan of this replica's committed log
        # Periodic snapshots (unimeter/checkpoints.py): entries appended since the last cut.
        self.snapshot_entries = node.cluster.settings.snapshot_entries
        self._appended = 0
        self._snapshotting = False
        self._install_epoch = 0
        self.tracer: ActorTracer | None = None
        if self.world.tracer is not None:
            self.tracer = self.world.tracer.actor(spec)

    @property
    def partition(self) -> PartitionCore:
        assert isinstance(self.core, PartitionCore)
        return self.core

    # ------------------------------------------------------------------ mailbox

    def post(self, msg: object) -> None:
        """``Mailbox.post_internal``: never refused."""
        self.mailbox.append(msg)
        if not self._scheduled:
            self._scheduled = True
            self.world.at(self.world.now, self._run)

    def try_send(self, msg: object, capacity: int) -> bool:
        """``Mailbox.try_send``: False when full."""
        if len(self.mailbox) >= capacity:
            return False
        self.post(msg)
        return True

    def _run(self) -> None:
        self._scheduled = False
        if not self.alive or not self.mailbox:
            return
        batch, self.mailbox = self.mailbox, []
        self._step_all(batch)

    # ------------------------------------------------------------------ loop

    def prime(self) -> None:
        if self.tracer is not None:
            self.tracer.started()
        self._step_all([RaftTick()])

    def _step_all(self, batch: list[Any]) -> None:
        core = self.core
        checkers = self.node.checkers
        for msg in batch:
            if not self.alive:
                return  # a step's effects crashed the node (a core raised)
            now = self.world.now
            if self.tracer is not None:
                self.tracer.step(msg, now, core)
            before = checkers.before_step(self)
            try:
                fx = core.step(msg, now)
            except Exception as exc:
                if self.tracer is not None:
                    self.tracer.raised()
                self.node.core_failed(self, msg, exc)
                return
            if self.tracer is not None:
                self.tracer.stepped(core)
            try:
                self._execute(fx)
            except DiskFull as exc:  # a term, vote or snapshot the core counts on was not stored
                self.node.storage_failed(self, exc)
                return
            checkers.after_step(self, before, fx)
        if self._sync_wanted and not self._syncing and not self._unwritten:
            self._start_sync()
        self._arm_timer()

    def _execute(self, fx: Effects) -> None:
        if fx.install is not None:
            self._install(fx.install)
        if fx.truncate_after is not None:
            self._unwritten = [(i, d) for i, d in self._unwritten if i <= fx.truncate_after]
            if fx.truncate_after < self.disk.last_index:
                self.disk.truncate_after(fx.truncate_after)
        if fx.appends:
            self._unwritten.extend((i, encode_record(t, d)) for i, t, d in fx.appends)
            self._write()
        if fx.hard_state is not None:
            hs = fx.hard_state
            if (hs.term, hs.vote) != self._saved_hs:
                self.disk.save_hard_state(hs)
                self._saved_hs = (hs.term, hs.vote)
            self._last_hs = hs
        for send in fx.sends:
            self.node.send_peer(send)
        if fx.sync_number is not None:
            self._sync_wanted = max(self._sync_wanted, fx.sync_number)
        if fx.replies:
            self.node.deliver(self, fx.replies)
        if isinstance(fx, CatalogEffects) and fx.publications:
            self.node.publish(fx.publications)
        elif fx.appends and self.snapshot_entries and isinstance(self.core, PartitionCore):
            self._appended += len(fx.appends)
            if self._appended >= self.snapshot_entries and not self._snapshotting:
                self._start_snapshot()

    # ------------------------------------------------------------------ log writes

    def _write(self) -> None:
        if not self._unwritten:
            return
        first = self._unwritten[0][0]
        assert first == self.disk.last_index + 1, (first, self.disk.last_index)
        try:
            last = self.disk.append_many([data for _, data in self._unwritten])
        except DiskFull:
            if not self.disk_full:
                self.disk_full = True
                self.post(DiskState(False))
                self.world.after(_DISK_RETRY_US, self._retry_write)
            return
        assert last == self._unwritten[-1][0], (last, self._unwritten[-1][0])
        self._unwritten.clear()
        if self.disk_full:
            self.disk_full = False
            self.post(DiskState(True))

    def _retry_write(self) -> None:
        if not self.alive:
            return
        self._write()
        if self._unwritten:
            self.world.after(_DISK_RETRY_US, self._retry_write)
        elif self._sync_wanted and not self._syncing:
            self._start_sync()

    def _install(self, snapshot: Snapshot) -> None:
        self._install_epoch += 1
        self._appended = 0
        meta = snapshot.meta
        self.write_snapshot(meta.index, meta.term, snapshot.data)
        self._unwritten.clear()
        self.disk.reset(meta.index + 1)

    def write_snapshot(self, index: int, term: int, data: bytes) -> None:
        blob = bytes(cbor2.dumps([term, list(self.core.members), data]))
        self.disk.write_snapshot(index, blob)

    # ------------------------------------------------------------------ group commit

    def _start_sync(self) -> None:
        self._syncing = True
        number = self._sync_wanted
        self._sync_wanted = 0
        self.disk.begin_sync()
        self.world.after(self.disk.device.fsync_delay(), self._sync_done, number)

    def _sync_done(self, number: int) -> None:
        if not self.alive:
            return
        self._syncing = False
        self.disk.end_sync()
        self.post(Persisted(number))
        if self._sync_wanted and not self._unwritten:
            self._start_sync()

    # ------------------------------------------------------------------ timers

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline_us()
        if deadline >= NEVER_US or (self._timer_at is not None and self._timer_at <= deadline):
            return
        self._timer_gen += 1
        self._timer_at = deadline
        self.world.at(deadline, self._fire, self._timer_gen)

    def _fire(self, generation: int) -> None:
        if generation != self._timer_gen or not self.alive:
            return
        self._timer_at = None
        self.post(RaftTick())

    # ------------------------------------------------------------------ stop

    def checkpoint(self) -> None:
        """``PartitionRuntime.checkpoint``: snapshot the applied state, compact Raft's log to
        it and the WAL to the older snapshot kept (the fallback)."""
        core = self.core
        if not isinstance(core, PartitionCore):
            return
        index = core.state.applied_index
        term = core.raft.term_at(index)
        if index == 0 or term is None or index <= core.raft.snapshot_index:
            return
        if self.disk.device.full:
            return  # the snapshot cannot be written; nothing is compacted
        self.write_snapshot(index, term, core.state.snapshot())
        core.raft.compact(index)
        older = [i for i, _ in self.disk.snapshots if i < index]
        if older:
            self.disk.compact_before(max(older) + 1)

    def _start_snapshot(self) -> None:
        """``Checkpoints``: the cut is fixed now, a forked child writes it, and once the file is
        published Raft's log is compacted to it -- unless a leader's snapshot came meanwhile."""
        core = self.core
        assert isinstance(core, PartitionCore)
        index = core.state.applied_index
        term = core.raft.term_at(index)
        if index == 0 or term is None or index <= core.raft.snapshot_index:
            return
        self._snapshotting = True
        self._appended = 0
        data = core.state.snapshot()
        delay = self.world.between(1_000, 100_000)
        self.world.after(delay, self._snapshot_written, index, term, data, self._install_epoch)

    def _snapshot_written(self, index: int, term: int, data: bytes, epoch: int) -> None:
        self._snapshotting = False
        if not self.alive or epoch != self._install_epoch:
            return
        if self.disk.device.full:  # the child failed: nothing is compacted, due again later
            self._appended = self.snapshot_entries
            return
        self.write_snapshot(index, term, data)
        raft = self.core.raft
        if index > raft.snapshot_index:
            raft.compact(index)
        older = [i for i, _ in self.disk.snapshots if i < index]
        if older:
            self.disk.compact_before(max(older) + 1)

    def stop(self, graceful: bool) -> None:
        """Crash (lose what is not durable) or stop as ``Node.stop`` does: sync, checkpoint,
        store the last hard state."""
        self.alive = False
        if graceful:
            if not self._unwritten and self.disk.durable_index < self.disk.last_index:
                self.disk.begin_sync()
                self.disk.end_sync()
            if self.disk.device.full:
                return  # the checkpoint and the last hard state cannot be written
            if not isinstance(self.core, CatalogCore):
                self.checkpoint()
            if self._last_hs is not None:
                self.disk.save_hard_state(self._last_hs)
