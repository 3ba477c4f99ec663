"""The thin asyncio runtime around a replicated pure core (partition or catalog).

One task per actor: wait for mail, drain the mailbox, ``step`` the core once per message and
execute each step's effects in the fixed order of ``effects.py``. Log appends are buffered
``pwrite``s on the loop thread (page cache only). Everything that fsyncs -- the WAL sync, the
hard state, a segment rotation, a log truncation or reset, a snapshot install, a compaction --
is a job for the node's one storage thread (``storage/syncthread.py``), which runs jobs in
submission order and wakes the loop once per batch. Only one WAL sync per log is queued or
running at a time, so every append made meanwhile shares the next one: group commit, and the
number of fsyncs does not grow with the number of clients. A finished sync comes back to the
core as ``Persisted``; the core's Raft timer comes back as ``RaftTick``.

Ordering without waiting: a hard state job submitted before a step's WAL sync is durable before
that sync completes (one thread, submission order), and the Raft core holds back every message
that promises durable state until ``Persisted`` covers it. A job that changes the log's shape
(truncate, reset, rotate) *blocks* appends: they wait in ``_unwritten`` (as on a full disk) and
are written when the job has completed.

Disk full: a write that fails with ENOSPC is kept in memory, the core is told the disk is not
writable (new writes get BACKPRESSURE), and the write is retried every ``disk_retry_s`` until it
lands; the log stays in order and nothing appended is dropped. A failed fsync or any other I/O
error stops the node: a restart recovers from what is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cbor2

from unimeter import errors, limits, testing_switches
from unimeter.actors.effects import Effects, Outgoing, Send
from unimeter.actors.mailbox import Mailbox
from unimeter.actors.replica_files import (
    HARD_STATE_FILE,
    encode_record,
    recover_replica,
    save_hard_state,
)
from unimeter.actors.replicated import NEVER_US, DiskState, Persisted, RaftTick
from unimeter.consensus.messages import HardState, Snapshot
from unimeter.observe import FSYNC_BUCKETS_S, Histogram
from unimeter.storage.backup import RemovalGuard
from unimeter.storage.snapshot import write_snapshot
from unimeter.storage.syncthread import StorageThread
from unimeter.storage.wal import DiskFullError, LogFailedError, SegmentFullError, WriteAheadLog
from unimeter.supervisor import EXIT_CRASHED, EXIT_STORAGE_FAILED
from unimeter.wire import messages as m

if TYPE_CHECKING:
    from unimeter.tracefile import ActorTracer

__all__ = [  # the replica's files are read and written by replica_files; these stay importable
    "HARD_STATE_FILE",
    "ReplicaRuntime",
    "encode_record",
    "recover_replica",
    "save_hard_state",
]

log = logging.getLogger("unimeter.runtime")

disk_retry_s = 0.2


class ReplyTo(Protocol):
    """What a core's opaque ``token`` is at runtime: something that can take an answer."""

    def send(self, status: int, message: m.Reply) -> None: ...


class FutureReply:
    """A token for requests made by other actors: the answer resolves a future."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[tuple[int, m.Reply]] = (
            asyncio.get_running_loop().create_future()
        )

    def send(self, status: int, message: m.Reply) -> None:
        if not self.future.done():
            self.future.set_result((status, message))


def now_us() -> int:
    return time.time_ns() // 1000


def deliver(replies: list[Outgoing]) -> None:
    for out in replies:
        token: ReplyTo = out.token  # type: ignore[assignment]
        token.send(out.status, out.message)


def fail_all(tokens: list[object], status: errors.Status, message: str) -> None:
    for token in tokens:
        reply: ReplyTo = token  # type: ignore[assignment]
        reply.send(status, m.ErrorReply(message=message))


# ---------------------------------------------------------------------- the runtime


class ReplicaRuntime:
    """Runs one replicated core; ``send_peer`` carries its Raft messages to other nodes."""

    def __init__(
        self,
        name: str,
        core: Any,
        wal: WriteAheadLog,
        directory: Path,
        mailbox: Mailbox[Any],
        send_peer: Callable[[Send], None],
        clock: Callable[[], int] = now_us,
        storage: StorageThread | None = None,
    ) -> None:
        self.name = name
        self.core = core
        self.wal = wal
        self.directory = directory
        self.mailbox = mailbox
        self.submit = mailbox.try_send  # a client request (MailboxFull, MailboxClosed)
        # Raft messages from peers: a lane of their own, drained first (see run).
        self.peer_lane: Mailbox[Any] = Mailbox(
            limits.mailbox_peer_capacity, bytes_max=limits.mailbox_peer_bytes_max
        )
        self._mail = asyncio.Event()
        mailbox.notify = self.peer_lane.notify = self._mail.set
        self._send_peer = send_peer
        self._clock = clock
        self._saved_hs = core.raft.status().term, core.raft.status().vote
        self._syncing = False
        self._sync_wanted = 0  # highest Ready number waiting for an fsync
        # Appends not yet written: refused by a full disk, or waiting for a job that changes
        # the log's shape (``_blocked`` of them queued or running).
        self._unwritten: list[tuple[int, bytes]] = []
        self._blocked = 0
        self._wal_last = wal.last_index  # the log's last index once every job has run
        self._own_storage = storage is None  # a replica outside a node runs its own thread
        self.storage = storage or StorageThread(f"storage-{name}")
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self.disk_full = False
        self.steps = 0
        self.fsyncs = 0
        # For /metrics: fsync durations, and leadership changes seen after each drained batch.
        self.fsync_seconds = Histogram(FSYNC_BUCKETS_S)
        self.leader_changes = 0
        self._seen_leader: int | None = None
        # Set by the node to ``Supervisor.crash`` (ends the process). Unset (in-process tests),
        # a crash raises SystemExit out of the loop instead.
        self.on_crash: Callable[[str, BaseException, int], None] | None = None

    # ------------------------------------------------------------------ loop

    # Set by ``python -m unimeter.node --trace``: records the core's start and every step.
    tracer: ActorTracer | None = None

    def now(self) -> int:
        """The runtime's clock (microseconds), as the core's steps see it."""
        return self._clock()

    def prime(self) -> None:
        """Step once before serving: applies what recovery found committed, starts timers."""
        if self.tracer is not None:
            self.tracer.started()
        if self._own_storage and not self.storage.running:
            self.storage.start(asyncio.get_running_loop())
        self._step_all([RaftTick()])

    async def run(self) -> None:
        """Step everything queued in both lanes, peers' first: a heartbeat or a vote is never
        queued behind client requests (which would delay it and could cost an election)."""
        mailbox, lane, mail = self.mailbox, self.peer_lane, self._mail
        while not mailbox.closed:
            if not len(mailbox) and not len(lane):
                mail.clear()
                await mail.wait()
                continue
            batch = lane.drain()
            if len(mailbox):
                batch += mailbox.drain()
            self._step_all(batch)

    def _step_all(self, batch: list[Any]) -> None:
        core = self.core
        clock = self._clock
        tracer = self.tracer
        try:
            if testing_switches.PLANTED_FAULT:
                self._planted_fault(batch)
            if tracer is None:
                for msg in batch:
                    self._execute(core.step(msg, clock()))
            else:
                for msg in batch:
                    now = clock()
                    tracer.step(msg, now, core)
                    fx = core.step(msg, now)
                    tracer.stepped(core)
                    self._execute(fx)
        except (DiskFullError, LogFailedError, OSError) as exc:
            self._fail_stop(exc)
            return
        except Exception as exc:
            # A bug: the core may be half-way through a change. Nothing it does from here on
            # can be trusted, and a dead actor would hang its clients: stop the node.
            self._crash(exc, EXIT_CRASHED, "step failed")
            return
        self.steps += len(batch)
        if core.raft.leader_id != self._seen_leader:
            self._seen_leader = core.raft.leader_id
            self.leader_changes += 1
        if self._sync_wanted and not self._syncing and not self._unwritten:
            self._start_sync()
        self._arm_timer()

    def _execute(self, fx: Effects) -> None:
        if fx.install is not None:
            self._install(fx.install)
        if fx.truncate_after is not None:
            cut = fx.truncate_after
            self._unwritten = [(i, d) for i, d in self._unwritten if i <= cut]
            if cut < self._wal_last:
                self._wal_last = cut
                self._reshape(lambda: self.wal.truncate_after(cut))
        if fx.appends:
            self._unwritten.extend((i, encode_record(t, d)) for i, t, d in fx.appends)
            self._write()
        if fx.hard_state is not None:
            hs = fx.hard_state
            if (hs.term, hs.vote) != self._saved_hs:
                # Durable before this step's WAL sync completes (the same thread runs both, in
                # order); the core sends nothing that relies on it before that.
                directory = self.directory
                self.storage.submit(lambda: save_hard_state(directory, hs), self._job_done)
                self._saved_hs = (hs.term, hs.vote)
            self._last_hs = hs
        for send in fx.sends:
            self._send_peer(send)
        if fx.sync_number is not None:
            self._sync_wanted = max(self._sync_wanted, fx.sync_number)
        if fx.replies:
            deliver(fx.replies)
        self._after(fx)

    _last_hs: HardState | None = None

    def _after(self, fx: Effects) -> None:
        """Hook for effects beyond the common ones."""

    def _planted_fault(self, batch: list[Any]) -> None:
        if (
            testing_switches.PLANTED_FAULT == "partition-step"
            and self.name != "catalog"
            and any(type(msg).__name__ == "ClientRequest" for msg in batch)
        ):
            raise testing_switches.PlantedFault(f"planted fault in {self.name}'s step")

    def _fail_stop(self, exc: BaseException) -> None:
        """A write the core already counts on failed (a term or vote, a leader's snapshot, a
        log truncation -- log appends have their own retry): acting on it undurable would break
        Raft's promises and leaving the actor dead would hang its requests, so the node stops;
        a restart recovers from what is on disk."""
        self._crash(exc, EXIT_STORAGE_FAILED, "storage failed")

    def _crash(self, exc: BaseException, status: int, what: str) -> None:
        """Stop this actor for good and tell the node (which ends the process). Without a
        node (``on_crash`` unset) it raises SystemExit out of the loop instead."""
        if self.mailbox.closed and self.crashed is not None:
            return
        self.crashed = exc
        self.mailbox.close()
        if self._timer is not None:
            self._timer.cancel()
        if self.on_crash is not None:
            self.on_crash(f"actor:{self.name}", exc, status)
            return
        log.critical("actor=%s event=crashed error=%r", self.name, exc, exc_info=exc)
        raise SystemExit(f"{self.name}: {what}: {exc}") from exc

    crashed: BaseException | None = None

    # ------------------------------------------------------------------ log writes

    def _write(self) -> None:
        if not self._unwritten or self._blocked:
            return
        first = self._unwritten[0][0]
        expected = self._wal_last + 1
        assert first == expected, (first, expected)
        try:
            last = self.wal.append_many([data for _, data in self._unwritten], rotate=False)
        except SegmentFullError:
            self._reshape(self.wal.rotate)  # fsyncs the full segment: not on this thread
            return
        except DiskFullError as exc:
            self._write_refused(exc)
            return
        assert last == self._unwritten[-1][0], (last, self._unwritten[-1][0])
        self._wal_last = last
        self._unwritten.clear()
        if self.disk_full:
            log.info("actor=%s event=disk_writable", self.name)
            self.disk_full = False
            self.mailbox.post_internal(self._disk_state(True))

    def _write_refused(self, exc: DiskFullError) -> None:
        if not self.disk_full:
            log.warning("actor=%s event=disk_full error=%r", self.name, str(exc))
            self.disk_full = True
            self.mailbox.post_internal(self._disk_state(False))
            asyncio.get_running_loop().call_later(disk_retry_s, self._retry_write)

    def _retry_write(self) -> None:
        if self.mailbox.closed:
            return
        self._write()
        if self._unwritten:
            if not self._blocked:  # (a job that blocks writes retries when it completes)
                asyncio.get_running_loop().call_later(disk_retry_s, self._retry_write)
        elif self._sync_wanted and not self._syncing:
            self._start_sync()

    # ------------------------------------------------------------------ storage jobs

    def _reshape(self, job: Callable[[], object]) -> None:
        """Run a job that changes the log's shape; appends wait until it has run."""
        self._blocked += 1
        self.storage.submit(job, self._reshaped)

    def _reshaped(self, result: object, error: BaseException | None) -> None:
        self._blocked -= 1
        if self.mailbox.closed:
            return
        if isinstance(error, DiskFullError):
            # Only a rotation can get here (a truncation or reset that failed stops the node):
            # the full segment could not be closed. Writes wait and retry, as for any append.
            self._write_refused(error)
            return
        if error is not None:
            self._fail_stop(error)
            return
        self._retry_write()

    def _job_done(self, result: object, error: BaseException | None) -> None:
        if error is not None and not self.mailbox.closed:  # (closed: the log is let go)
            self._fail_stop(error)

    def _disk_state(self, writable: bool) -> object:
        return DiskState(writable)

    def _install(self, snapshot: Snapshot) -> None:
        """A leader's snapshot replaces this replica's log and state (the core has loaded it).
        The files change on the storage thread; the step's sync, queued after, reports it."""
        meta = snapshot.meta
        self._unwritten.clear()
        self._wal_last = meta.index
        self._reshape(lambda: self._install_files(meta.index, meta.term, snapshot.data))

    def _install_files(self, index: int, term: int, data: bytes) -> None:
        """On the storage thread: the snapshot file, then the log restarted after it (newest
        segment first, each removal durable: any crash point leaves a valid log)."""
        self._write_snapshot(index, term, data)
        self.wal.reset(index + 1)

    def _write_snapshot(self, index: int, term: int, data: bytes) -> None:
        blob = cbor2.dumps([term, list(self.core.members), data])
        with self.removals() as allowed:
            write_snapshot(self.directory, index, blob, prune=allowed)

    # Set by the node: deletions (compaction, snapshot pruning) wait while a backup copies.
    removal_guard: RemovalGuard | None = None

    def removals(self) -> contextlib.AbstractContextManager[bool]:
        """``with runtime.removals() as allowed``: may files be deleted now?"""
        if self.removal_guard is None:
            return contextlib.nullcontext(True)
        return self.removal_guard.removals()

    def compact_before(self, index: int) -> None:
        """Drop the log's whole segments before ``index``, on the storage thread -- unless a
        backup is copying (the next snapshot's compaction then drops them)."""
        self.storage.submit(lambda: self.compact_now(index), self._job_done)

    def compact_now(self, index: int) -> None:
        with self.removals() as allowed:
            if allowed:
                self.wal.compact_before(index)

    # ------------------------------------------------------------------ group commit

    def _start_sync(self) -> None:
        self._syncing = True
        number = self._sync_wanted
        self._sync_wanted = 0
        self.storage.submit(
            self._timed_sync, lambda elapsed, error: self._sync_done(number, error, elapsed or 0.0)
        )

    def _timed_sync(self) -> float:
        """On the storage thread: the WAL sync, and how long it took (for /metrics)."""
        started = time.perf_counter()
        self.wal.sync()
        return time.perf_counter() - started

    def _sync_done(self, number: int, error: BaseException | None, elapsed_s: float) -> None:
        self._syncing = False
        self.fsyncs += 1
        self.fsync_seconds.observe(elapsed_s)
        if self.mailbox.closed:
            return
        if error is not None:
            if isinstance(error, DiskFullError):
                # The WAL keeps what it could not sync and rewrites it on the next sync.
                log.warning("actor=%s event=sync_disk_full error=%r", self.name, str(error))
                self._sync_wanted = max(self._sync_wanted, number)
                asyncio.get_running_loop().call_later(disk_retry_s, self._retry_write)
                return
            self._fail_stop(error)
            return
        if testing_switches.PLANTED_FAULT == "fsync-callback":
            raise testing_switches.PlantedFault(f"planted fault in {self.name}'s fsync callback")
        # Step the core here rather than through the mailbox: this callback already runs on
        # the loop thread between steps, so the core still sees one message at a time. Ends
        # by starting the next sync if appends arrived meanwhile (``_step_all``).
        self._step_all([Persisted(number)])

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every job has run and everything appended is durable (shutdown)."""
        deadline = time.monotonic() + timeout_s
        while (self._syncing or self._blocked) and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        if not self._unwritten and not self._blocked:
            await self.storage.run(self.wal.sync)

    # ------------------------------------------------------------------ timers

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline_us()
        if deadline >= NEVER_US or (self._timer is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, (deadline - self._clock()) / 1_000_000)
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if not self.mailbox.closed:
            self.mailbox.post_internal(RaftTick())

    def close(self) -> None:
        """After ``flush`` (shutdown): the last hard state, then the files are let go."""
        if self._timer is not None:
            self._timer.cancel()
        self.mailbox.close()
        self.peer_lane.close()
        if self._own_storage:
            self.storage.stop()
        if self._last_hs is not None:
            save_hard_state(self.directory, self._last_hs)
        self.wal.close()
