"""Periodic snapshots of a node's partitions while it runs, and what follows (operations.md §1).

Theory of operation
-------------------
*When.* Each partition runtime reports every batch of log appends (entries and payload bytes).
Once a partition's log has grown by ``SnapshotPolicy.entries`` entries or ``.bytes`` bytes since
its last snapshot began, the partition is *due*. Leaders and followers count alike: every
replica compacts its own log.

*How.* A snapshot is written by a forked child (``storage/forksnap.py`` says why), and at most
one child runs per node: every fork copies the page tables of the whole process, and children
compete with the loop for the CPU and for copy-on-write memory. A child writes every partition
due when it starts (up to ``jobs_per_child_max``), so N due partitions cost one fork, not N.
For each, the parent fixes the cut before forking: the state's ``applied_index``, the term
at that index, the members.

*After.* Once the child exits 0, each file is published (renamed into place, older snapshots
pruned to one) in a worker thread under the runtime's ``snapshot_lock``, unless the replica
installed a leader's snapshot meanwhile (``install_epoch`` moved): that one is newer and its
WAL starts after it, so the child's file is dropped. Then, on the loop: Raft's in-memory log is
compacted to the new index, and the WAL to the *older* kept snapshot -- if the newest file
turns out damaged, recovery falls back to the older one plus the WAL after it, so the WAL must
still reach back that far.

*Cost.* Writing a snapshot costs time proportional to the whole state, replaying the log
costs time proportional to the log: small thresholds on a large state would keep a child busy
all the time. So a partition's next snapshot starts no sooner than ``duty_factor`` times its
last child's duration after that child started: at most a tenth of a core goes to snapshots,
and the log grows a little past the thresholds instead.

*Space.* A snapshot must not take the space the log needs: a child is forked only while the
free space, less the node's disk reserve, holds the partition's last snapshot size plus an
eighth (or, after an ENOSPC, what the failed attempt had written). Otherwise the partition is
deferred for ``retry_s``: no retry storm writing and deleting large files on a nearly full disk.

*Failure.* A child that fails (disk full, I/O error, killed) leaves only temp files; they are
removed and its partitions are due again after ``retry_s``. Nothing is compacted unless a
snapshot is durable under its final name. ``stop`` kills a running child by its PID.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cbor2

from unimeter import limits
from unimeter.observe import SLOW_BUCKETS_S, Histogram
from unimeter.state import snapshot as state_snapshot  # noqa: F401 - imported before any fork uses it
from unimeter.storage.forksnap import EXIT_OK, ForkedWrite, SnapshotJob, fork_snapshots
from unimeter.storage.snapshot import (
    publish_snapshot,
    snapshot_indexes,
    snapshot_path,
    snapshot_temp_path,
)

if TYPE_CHECKING:
    from unimeter.node_runtimes import PartitionRuntime

__all__ = ["Checkpoints", "SnapshotPolicy", "payload_prefix"]

log = logging.getLogger("unimeter.snapshots")

jobs_per_child_max = 64
duty_factor = 9  # a partition's next snapshot waits 9x its last one's duration: <= 10% busy
poll_s = 0.05
retry_s = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotPolicy:
    """Snapshot a partition once its log grew by this many entries or bytes (0: never)."""

    entries: int = limits.snapshot_entries_default
    bytes: int = limits.snapshot_bytes_default

    def __post_init__(self) -> None:
        if self.entries < 0 or self.bytes < 0:
            raise ValueError(f"snapshot thresholds must be >= 0: {self}")

    def due(self, entries: int, nbytes: int) -> bool:
        return (0 < self.entries <= entries) or (0 < self.bytes <= nbytes)


def payload_prefix(term: int, members: Sequence[int], data_bytes: int) -> bytes:
    """The bytes before ``data`` in ``cbor2.dumps([term, list(members), data])``: the replica
    snapshot payload (``ReplicaRuntime._write_snapshot``), built without copying ``data``."""
    head = b"\x83" + cbor2.dumps(term) + cbor2.dumps(list(members))
    if data_bytes < 24:
        return head + bytes([0x40 | data_bytes])
    for tag, fmt in ((0x58, ">B"), (0x59, ">H"), (0x5A, ">I"), (0x5B, ">Q")):
        if data_bytes < 1 << (8 * struct.calcsize(fmt)):
            return head + bytes([tag]) + struct.pack(fmt, data_bytes)
    raise ValueError(f"{data_bytes} bytes cannot be one CBOR byte string")


@dataclass(slots=True)
class _Tracked:
    runtime: PartitionRuntime
    entries: int = 0  # appended since the last snapshot began
    bytes: int = 0
    retry_at: float = 0.0  # monotonic; a failed attempt waits until then
    failed: bool = False  # due again after a failure, whatever the counters say
    snapshots: int = 0
    epoch: int = 0  # the runtime's install_epoch the counters belong to
    size_hint: int = 0  # bytes the next snapshot file is expected to take
    last_started: float = 0.0  # monotonic start of its last successful snapshot
    last_child_s: float = 0.0  # how long that snapshot's child ran


@dataclass(frozen=True, slots=True)
class _Pending:
    tracked: _Tracked
    job: SnapshotJob
    epoch: int
    entries: int
    bytes: int


class Checkpoints:
    """The node's snapshot scheduler; every method runs on the event loop."""

    def __init__(self, policy: SnapshotPolicy, *, reserve_bytes: int = 0) -> None:
        self.policy = policy
        self.reserve_bytes = reserve_bytes  # free space a snapshot must leave untouched
        self._tracked: dict[str, _Tracked] = {}
        self._child: ForkedWrite | None = None
        self._pending: list[_Pending] = []
        self._busy = False  # a child or its publication is in progress
        self._started_at = 0.0
        self._fork_ms = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # loop time the timer fires at
        self._stopped = False
        self.completed = 0
        self.failed = 0
        self.seconds = Histogram(SLOW_BUCKETS_S)  # each completed snapshot's child run time

    def track(self, runtime: PartitionRuntime) -> None:
        tracked = _Tracked(runtime)
        newest = max(snapshot_indexes(runtime.directory).items(), default=None)
        if newest is not None:
            tracked.size_hint = _file_bytes(newest[1])
        self._tracked[runtime.name] = tracked
        runtime.on_appended = self.appended

    def appended(self, runtime: PartitionRuntime, entries: int, nbytes: int) -> None:
        tracked = self._tracked[runtime.name]
        if tracked.epoch != runtime.install_epoch:  # a leader's snapshot restarted its log
            tracked.epoch = runtime.install_epoch
            tracked.entries = tracked.bytes = 0
        tracked.entries += entries
        tracked.bytes += nbytes
        if not self._busy:
            at = self._eligible_at(tracked)
            if at is not None:
                self._arm(max(0.0, at - time.monotonic()))

    def stop(self) -> None:
        """Kill a running child (by its PID) and forget what is pending."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._child is not None:
            self._child.abort()
            self._child = None

    # ------------------------------------------------------------------ starting a child

    def _eligible_at(self, tracked: _Tracked) -> float | None:
        """When (monotonic) the partition may next be snapshotted; None if it is not due."""
        if tracked.runtime.mailbox.closed:
            return None
        if tracked.failed:
            return tracked.retry_at
        if not self.policy.due(tracked.entries, tracked.bytes):
            return None
        # Snapshots of a large state must not take more than their share of the CPU.
        return max(tracked.retry_at, tracked.last_started + duty_factor * tracked.last_child_s)

    def _is_due(self, tracked: _Tracked, now: float) -> bool:
        at = self._eligible_at(tracked)
        return at is not None and at <= now

    def _arm_next(self) -> None:
        """Arm the timer for the earliest partition that will be due, if any."""
        times = [at for t in self._tracked.values() if (at := self._eligible_at(t)) is not None]
        if times:
            self._arm(max(0.0, min(times) - time.monotonic()))

    def _start(self) -> None:
        self._timer = None
        if self._busy or self._stopped:
            return
        now = time.monotonic()
        due = [t for t in self._tracked.values() if self._is_due(t, now)]
        due.sort(key=lambda t: (t.bytes, t.entries), reverse=True)
        pending: list[_Pending] = []
        deferred: list[_Tracked] = []
        room = _free_bytes(due[0].runtime.directory) - self.reserve_bytes if due else 0
        for tracked in due[:jobs_per_child_max]:
            need = tracked.size_hint + tracked.size_hint // 8  # the state has grown since
            if need > room:  # do not eat the space the log needs: wait for space instead
                tracked.retry_at = now + retry_s
                deferred.append(tracked)
                continue
            room -= need
            job = self._job(tracked)
            if job is None:  # nothing applied since the last snapshot yet: look again later
                tracked.retry_at = now + 1.0
                continue
            pending.append(
                _Pending(
                    tracked, job, tracked.runtime.install_epoch, tracked.entries, tracked.bytes
                )
            )
        if deferred:
            log.warning(
                "event=snapshot_deferred partitions=%d need_bytes=%d free_bytes_over_reserve=%d "
                "(retried in %.0f s)", len(deferred), sum(t.size_hint for t in deferred),
                room, retry_s,
            )  # fmt: skip
        if not pending:
            self._arm_next()
            return
        started = time.perf_counter()
        try:
            child = fork_snapshots([p.job for p in pending])
        except OSError as exc:
            log.error("event=snapshot_fork_failed error=%r", str(exc))
            self._failed(pending, now)
            self._arm_next()
            return
        self._fork_ms = (time.perf_counter() - started) * 1000
        self._started_at = now
        self._child, self._pending, self._busy = child, pending, True
        for p in pending:
            p.tracked.entries = p.tracked.bytes = 0
            p.tracked.failed = False
            p.tracked.last_started = now
        log.info(
            "event=snapshot_started pid=%d partitions=%s fork_ms=%.1f",
            child.pid, ",".join(f"{p.tracked.runtime.name}@{p.job.index}" for p in pending),
            self._fork_ms,
        )  # fmt: skip
        self._arm(poll_s)

    def _job(self, tracked: _Tracked) -> SnapshotJob | None:
        runtime = tracked.runtime
        core = runtime.core
        state = core.state
        index = state.applied_index
        if index <= core.raft.snapshot_index:
            return None
        term = core.raft.term_at(index)
        assert term is not None, f"{runtime.name}: no term for applied index {index}"
        members = tuple(core.members)

        def render() -> Sequence[bytes]:  # runs in the child, on its frozen copy of the state
            data = state.snapshot()
            return (payload_prefix(term, members, len(data)), data)

        return SnapshotJob(directory=runtime.directory, index=index, render=render)

    def _arm(self, delay_s: float) -> None:
        """Run ``_poll`` (a child runs) or ``_start`` after ``delay_s``, unless sooner."""
        if self._stopped:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay_s
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._poll if self._busy else self._start)

    # ------------------------------------------------------------------ the child ends

    def _poll(self) -> None:
        self._timer = None
        child = self._child
        if child is None or self._stopped:
            return
        code = child.poll()
        if code is None:
            self._arm(poll_s)
            return
        self._child = None
        child_s = time.monotonic() - self._started_at
        if code != EXIT_OK:
            for p in self._pending:  # what it got to write is a lower bound of what it needs
                written = _file_bytes(snapshot_temp_path(p.job.directory, p.job.index))
                p.tracked.size_hint = max(p.tracked.size_hint, written)
            log.error(
                "event=snapshot_failed pid=%d exit=%d child_s=%.3f (temp files removed; "
                "retried in %.0f s)", child.pid, code, child_s, retry_s,
            )  # fmt: skip
            child.discard()
            self._failed(self._pending, time.monotonic())
            self._finish()
            return
        pending = self._pending
        loop = asyncio.get_running_loop()
        publishing = loop.run_in_executor(None, _publish_all, pending)
        publishing.add_done_callback(lambda fut: self._published(fut, pending, child_s))

    def _published(
        self,
        fut: asyncio.Future[list[int | BaseException | None]],
        pending: list[_Pending],
        child_s: float,
    ) -> None:
        outcomes = fut.result()
        now = time.monotonic()
        for p, outcome in zip(pending, outcomes, strict=True):
            runtime = p.tracked.runtime
            if isinstance(outcome, BaseException):
                log.error(
                    "event=snapshot_publish_failed actor=%s index=%d error=%r",
                    runtime.name, p.job.index, str(outcome),
                )  # fmt: skip
                self._failed([p], now)
                continue
            if runtime.mailbox.closed or runtime.install_epoch != p.epoch:
                continue  # stopping, or a leader's snapshot replaced this one
            self._compact(runtime, p.job.index, outcome)
            p.tracked.size_hint = _file_bytes(snapshot_path(p.job.directory, p.job.index))
            p.tracked.last_child_s = child_s
            p.tracked.snapshots += 1
            self.completed += 1
            self.seconds.observe(child_s)
            log.info(
                "event=snapshot actor=%s index=%d older=%s fork_ms=%.1f child_s=%.3f "
                "grown_entries=%d grown_bytes=%d",
                runtime.name, p.job.index, outcome, self._fork_ms, child_s, p.entries, p.bytes,
            )  # fmt: skip
        self._finish()

    def _compact(self, runtime: PartitionRuntime, index: int, older: int | None) -> None:
        raft = runtime.core.raft
        if index > raft.snapshot_index:
            raft.compact(index)
        if older is not None:
            runtime.compact_before(older + 1)

    def _failed(self, pending: Sequence[_Pending], now: float) -> None:
        self.failed += 1
        for p in pending:
            p.tracked.failed = True
            p.tracked.retry_at = now + retry_s
            p.tracked.entries += p.entries
            p.tracked.bytes += p.bytes

    def _finish(self) -> None:
        self._busy = False
        self._pending = []
        if not self._stopped:
            self._arm_next()


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def _publish_all(pending: Sequence[_Pending]) -> list[int | BaseException | None]:
    """In a worker thread: rename each temp file into place (or drop it if superseded)."""
    outcomes: list[int | BaseException | None] = []
    for p in pending:
        runtime, job = p.tracked.runtime, p.job
        with runtime.snapshot_lock:
            try:
                if runtime.install_epoch != p.epoch or runtime.mailbox.closed:
                    snapshot_temp_path(job.directory, job.index).unlink(missing_ok=True)
                    outcomes.append(None)
                else:
                    with runtime.removals() as allowed:  # not while a backup copies
                        outcomes.append(publish_snapshot(job.directory, job.index, prune=allowed))
            except OSError as exc:
                snapshot_temp_path(job.directory, job.index).unlink(missing_ok=True)
                outcomes.append(exc)
    return outcomes
