"""Simulated disks: one per replica (its WAL, hard-state file and snapshot file), as the node
lays them out in ``data-dir/partitions/NNNN/`` and ``data-dir/catalog/``.

The model follows what the real storage promises (``unimeter/storage/wal.py``,
``unimeter/actors/runtime.py``):
- WAL appends land in the page cache: ``append_many`` adds records that are *not durable*;
  ``sync`` (begun, then finished after a simulated fsync latency) makes durable exactly what
  was appended before it began. A crash loses every record not yet durable, except that the
  OS may have flushed a prefix of them, whose last record may be torn (and is then cut away
  by recovery, so lost as well).
- ``truncate_after`` is durable when it returns (the real one fdatasyncs), and so is
  everything before the cut.
- The hard-state file and snapshot files are written atomically and durably, or not at all:
  with the disk full they fail (``DiskFull``), and a runtime that cannot store a term, a vote
  or a leader's snapshot stops its node (``ReplicaRuntime._fail_stop``).
- ENOSPC: while the node's disk is full, ``append_many`` raises ``DiskFull`` and leaves the
  log unchanged; the runtime keeps the records and retries (as ``ReplicaRuntime`` does).
Payloads are the runtime's own records: an 8-byte little-endian term, then the entry bytes.
"""

from __future__ import annotations

import struct

import cbor2

from unimeter.actors.replicated import Recovered
from unimeter.consensus.messages import HardState, LogEntry, SnapshotMeta
from unimeter.sim.settings import DiskSettings
from unimeter.sim.world import World

_TERM = struct.Struct("<Q")


class DiskFull(Exception):
    """ENOSPC: nothing was written."""


class NodeDisk:
    """What a node's replicas share: the device (free space) and its fsync latency."""

    def __init__(self, world: World, settings: DiskSettings) -> None:
        self.world = world
        self.s = settings
        self.full = False
        self.slow_until = 0  # a slow-disk episode: every fsync stalls until then
        self.fsyncs = 0

    def fsync_delay(self) -> int:
        world = self.world
        s = self.s
        if world.now < self.slow_until or world.chance(s.slow_p):
            return world.between(s.slow_min_us, s.slow_max_us)
        return world.between(s.fsync_min_us, s.fsync_max_us)


class ReplicaDisk:
    def __init__(self, device: NodeDisk) -> None:
        self.device = device
        self.first_index = 1
        self.records: list[bytes] = []  # WAL payloads of indexes first_index, first_index+1...
        self.durable_index = 0  # records up to here survive a crash
        self.hard_state: bytes | None = None  # the hard-state file
        self.snapshots: list[tuple[int, bytes]] = []  # (index, file contents), newest last
        self._syncing_to: int | None = None  # the target of the fsync in flight

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.records) - 1

    # ------------------------------------------------------------------ the WAL

    def append_many(self, payloads: list[bytes]) -> int:
        if self.device.full:
            raise DiskFull("no space left on device")
        self.records.extend(payloads)
        return self.last_index

    def truncate_after(self, index: int) -> None:
        assert self.first_index - 1 <= index <= self.last_index, (index, self.first_index)
        del self.records[index - self.first_index + 1 :]
        # The real truncation fdatasyncs: the cut and everything before it are durable. An fsync
        # in flight finished first (truncation waits for it) and covers nothing beyond the cut.
        self.durable_index = index
        if self._syncing_to is not None:
            self._syncing_to = min(self._syncing_to, index)

    def begin_sync(self) -> None:
        self._syncing_to = self.last_index

    def end_sync(self) -> None:
        self.device.fsyncs += 1
        if self._syncing_to is None:
            return  # a snapshot replaced the log while the fsync ran: nothing left to cover
        self.durable_index = max(self.durable_index, self._syncing_to)
        self._syncing_to = None

    def read_from(self, index: int) -> list[tuple[int, bytes]]:
        start = max(index, self.first_index)
        return [(i, self.records[i - self.first_index]) for i in range(start, self.last_index + 1)]

    def reset(self, first_index: int) -> None:
        """A snapshot replaced the log: every WAL file is deleted, a new one starts."""
        self.first_index = first_index
        self.records = []
        self.durable_index = first_index - 1
        self._syncing_to = None

    def compact_before(self, index: int) -> None:
        drop = min(max(0, index - self.first_index), len(self.records))
        del self.records[:drop]
        self.first_index += drop

    # ------------------------------------------------------------------ small files

    def save_hard_state(self, hs: HardState) -> None:
        if self.device.full:
            raise DiskFull("no space left for the hard-state file")
        self.hard_state = bytes(cbor2.dumps([hs.term, hs.vote, hs.commit]))

    def write_snapshot(self, index: int, blob: bytes) -> None:
        """Atomic and durable; the newest two are kept (the older one is the fallback)."""
        if self.device.full:
            raise DiskFull("no space left for the snapshot file")
        older = [s for s in self.snapshots if s[0] < index][-1:]
        self.snapshots = [*older, (index, blob)]

    @property
    def snapshot_index(self) -> int:
        return self.snapshots[-1][0] if self.snapshots else 0

    # ------------------------------------------------------------------ crash and recovery

    def crash(self) -> str:
        """Lose what was not durable (a random flushed prefix may survive, its last record
        possibly torn). Returns what happened, for the run's notes."""
        world = self.device.world
        self._syncing_to = None
        unsynced = self.last_index - self.durable_index
        if unsynced <= 0:
            return ""
        kept = 0
        if world.chance(self.device.s.keep_unsynced_p):
            kept = world.between(0, unsynced)
            if kept and world.chance(self.device.s.torn_p):
                kept -= 1  # recovery finds the last one torn and cuts it
        self.durable_index += kept
        del self.records[self.durable_index - self.first_index + 1 :]
        return f"lost {unsynced - kept} of {unsynced} unsynced records"


def recover(disk: ReplicaDisk) -> tuple[Recovered, bytes | None]:
    """What ``unimeter.actors.runtime.recover_replica`` reads from a replica directory, read
    from the simulated one, by the same rules."""
    meta: SnapshotMeta | None = None
    app: bytes | None = None
    if disk.snapshots:
        index, blob = disk.snapshots[-1]
        term, members, app = cbor2.loads(blob)
        meta = SnapshotMeta(index=index, term=term, members=tuple(members))
    hard = HardState()
    if disk.hard_state is not None:
        term, vote, commit = cbor2.loads(disk.hard_state)
        hard = HardState(term=term, vote=vote, commit=commit)
    first = meta.index + 1 if meta else 1
    if disk.last_index < first - 1:
        disk.reset(first)  # a log that ends before the snapshot starts after it
    if disk.first_index > first:  # the node refuses to start on a hole (CorruptLogError)
        raise AssertionError(f"the log starts at {disk.first_index}, the snapshot ends at {first}")
    entries = tuple(
        LogEntry(term=_TERM.unpack_from(data)[0], index=index, data=bytes(data[8:]))
        for index, data in disk.read_from(max(disk.first_index, first))
    )
    if meta is not None and hard.commit < meta.index:
        hard = HardState(term=hard.term, vote=hard.vote, commit=meta.index)
    if entries and hard.commit > entries[-1].index:
        hard = HardState(term=hard.term, vote=hard.vote, commit=entries[-1].index)
    return Recovered(hard_state=hard, entries=entries, snapshot=meta), app
