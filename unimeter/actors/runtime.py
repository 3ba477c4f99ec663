"""The thin asyncio runtime around a replicated pure core (partition or catalog).

One task per actor: wait for mail, drain the mailbox, ``step`` the core once per message and
execute each step's effects in the fixed order of ``effects.py``. Log writes are buffered
``pwrite``s; the fsync runs in a worker thread once per loop iteration at most (only one is in
flight per log), so every append made while a sync runs shares the next one: group commit, and
the number of fsyncs does not grow with the number of clients. A finished fsync comes back to
the core as ``Persisted``; the core's Raft timer comes back as ``RaftTick``.

Disk full: a write that fails with ENOSPC is kept in memory, the core is told the disk is not
writable (new writes get BACKPRESSURE), and the write is retried every ``disk_retry_s`` until it
lands; the log stays in order and nothing appended is dropped. A failed fsync or any other I/O
error stops the node: a restart recovers from what is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import cbor2

from unimeter import errors, testing_switches
from unimeter.actors.effects import Effects, Outgoing, Send
from unimeter.actors.mailbox import Mailbox, MailboxClosed
from unimeter.actors.replicated import DiskState, Persisted, RaftTick, Recovered
from unimeter.consensus.messages import HardState, LogEntry, Snapshot, SnapshotMeta
from unimeter.observe import FSYNC_BUCKETS_S, Histogram
from unimeter.storage.backup import RemovalGuard
from unimeter.storage.fsutil import atomic_write
from unimeter.storage.snapshot import load_latest_snapshot, write_snapshot
from unimeter.storage.wal import (
    DiskFullError,
    LogFailedError,
    WriteAheadLog,
    segment_bytes_max_default,
)
from unimeter.storage.walformat import CorruptLogError
from unimeter.supervisor import EXIT_CRASHED, EXIT_STORAGE_FAILED
from unimeter.wire import messages as m

if TYPE_CHECKING:
    from unimeter.tracefile import ActorTracer

log = logging.getLogger("unimeter.runtime")

_TERM = struct.Struct("<Q")
HARD_STATE_FILE = "raft-state.cbor"
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


# ---------------------------------------------------------------------- on-disk replica state


def encode_record(term: int, data: bytes) -> bytes:
    return _TERM.pack(term) + data


def recover_replica(
    directory: Path, *, segment_bytes_max: int = segment_bytes_max_default
) -> tuple[WriteAheadLog, Recovered, bytes | None]:
    """Read a replica's snapshot, hard state and log. Returns the open WAL, what Raft needs,
    and the snapshot's application bytes (None without a snapshot)."""
    directory.mkdir(parents=True, exist_ok=True)
    meta: SnapshotMeta | None = None
    app: bytes | None = None
    snap = load_latest_snapshot(directory)
    if snap is not None:
        term, members, app = cbor2.loads(snap[1])
        meta = SnapshotMeta(index=snap[0], term=term, members=tuple(members))
    hard = HardState()
    path = directory / HARD_STATE_FILE
    if path.exists():
        term, vote, commit = cbor2.loads(path.read_bytes())
        hard = HardState(term=term, vote=vote, commit=commit)
    first = meta.index + 1 if meta else 1
    wal, _ = WriteAheadLog.open(directory, first_index=first, segment_bytes_max=segment_bytes_max)
    if wal.last_index < first - 1:
        # A crash during a snapshot install: the log ends before the snapshot; start after it.
        wal.reset(first)
    if wal.first_index > first:  # compacted past every snapshot still readable: a hole
        wal.close()
        raise CorruptLogError(
            directory, 0, f"the log starts at index {wal.first_index} but no readable snapshot "
            f"reaches index {wal.first_index - 1} (snapshot files missing or damaged)",
        )  # fmt: skip
    entries = tuple(
        LogEntry(term=_TERM.unpack_from(data)[0], index=index, data=bytes(data[8:]))
        for index, data in wal.read_from(max(wal.first_index, first))
    )
    if meta is not None and hard.commit < meta.index:
        hard = HardState(term=hard.term, vote=hard.vote, commit=meta.index)
    if entries and hard.commit > entries[-1].index:
        hard = HardState(term=hard.term, vote=hard.vote, commit=entries[-1].index)
    return wal, Recovered(hard_state=hard, entries=entries, snapshot=meta), app


def save_hard_state(directory: Path, hs: HardState) -> None:
    atomic_write(directory / HARD_STATE_FILE, cbor2.dumps([hs.term, hs.vote, hs.commit]))


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
    ) -> None:
        self.name = name
        self.core = core
        self.wal = wal
        self.directory = directory
        self.mailbox = mailbox
        self._send_peer = send_peer
        self._clock = clock
        self._saved_hs = core.raft.status().term, core.raft.status().vote
        self._syncing = False
        self._sync_wanted = 0  # highest Ready number waiting for an fsync
        self._sync_task: asyncio.Future[None] | None = None
        self._unwritten: list[tuple[int, bytes]] = []  # appends the disk refused (ENOSPC)
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
        self._step_all([RaftTick()])

    async def run(self) -> None:
        mailbox = self.mailbox
        try:
            while True:
                await mailbox.wait()
                batch = mailbox.drain()
                if batch:
                    self._step_all(batch)
        except MailboxClosed:
            pass

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
        except Exception as exc:
            # A bug: the core may be half-way through a change. Nothing it does from here on
            # can be trusted, and a dead actor would hang its clients: stop the node.
            self._crash(exc, EXIT_CRASHED, "step_failed")
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
            self._unwritten = [(i, d) for i, d in self._unwritten if i <= fx.truncate_after]
            if fx.truncate_after < self.wal.last_index:
                self.wal.truncate_after(fx.truncate_after)
        if fx.appends:
            self._unwritten.extend((i, encode_record(t, d)) for i, t, d in fx.appends)
            self._write()
        if fx.hard_state is not None:
            hs = fx.hard_state
            if (hs.term, hs.vote) != self._saved_hs:
                # Term and vote must be durable before any message that depends on them.
                save_hard_state(self.directory, hs)
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

    def _fail_stop(self, exc: BaseException) -> NoReturn:
        """A write the core already counts on failed (a term or vote, a leader's snapshot, a
        log truncation -- log appends have their own retry): acting on it undurable would break
        Raft's promises and leaving the actor dead would hang its requests, so the node stops;
        a restart recovers from what is on disk."""
        self._crash(exc, EXIT_STORAGE_FAILED, "storage failed")

    def _crash(self, exc: BaseException, status: int, what: str) -> NoReturn:
        self.mailbox.close()
        if self.on_crash is not None:
            self.on_crash(f"actor:{self.name}", exc, status)
        log.critical("actor=%s event=crashed error=%r", self.name, exc, exc_info=exc)
        raise SystemExit(f"{self.name}: {what}: {exc}") from exc

    # ------------------------------------------------------------------ log writes

    def _write(self) -> None:
        if not self._unwritten:
            return
        first = self._unwritten[0][0]
        expected = self.wal.last_index + 1
        assert first == expected, (first, expected)
        try:
            last = self.wal.append_many([data for _, data in self._unwritten])
        except DiskFullError as exc:
            if not self.disk_full:
                log.warning("actor=%s event=disk_full error=%r", self.name, str(exc))
                self.disk_full = True
                self.mailbox.post_internal(self._disk_state(False))
                asyncio.get_running_loop().call_later(disk_retry_s, self._retry_write)
            return
        assert last == self._unwritten[-1][0], (last, self._unwritten[-1][0])
        self._unwritten.clear()
        if self.disk_full:
            log.info("actor=%s event=disk_writable", self.name)
            self.disk_full = False
            self.mailbox.post_internal(self._disk_state(True))

    def _retry_write(self) -> None:
        if self.mailbox.closed:
            return
        self._write()
        if self._unwritten:
            asyncio.get_running_loop().call_later(disk_retry_s, self._retry_write)
        elif self._sync_wanted and not self._syncing:
            self._start_sync()

    def _disk_state(self, writable: bool) -> object:
        return DiskState(writable)

    def _install(self, snapshot: Snapshot) -> None:
        """A leader's snapshot replaces this replica's log and state (the core has loaded it)."""
        meta = snapshot.meta
        self._write_snapshot(meta.index, meta.term, snapshot.data)
        self._unwritten.clear()
        # Newest segment first, each removal durable: any crash point leaves a valid log.
        self.wal.reset(meta.index + 1)

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
        """Drop the log's whole segments before ``index`` -- unless a backup is copying
        (the next snapshot's compaction then drops them)."""
        with self.removals() as allowed:
            if allowed:
                self.wal.compact_before(index)

    # ------------------------------------------------------------------ group commit

    def _start_sync(self) -> None:
        self._syncing = True
        number = self._sync_wanted
        self._sync_wanted = 0
        loop = asyncio.get_running_loop()
        self._sync_task = loop.run_in_executor(None, self._sync_in_thread, loop, number)

    def _sync_in_thread(self, loop: asyncio.AbstractEventLoop, number: int) -> None:
        """In a worker thread: fsync, then hand the outcome straight to the loop. One wake-up
        of the loop, instead of the executor future's two hops plus a mailbox task switch:
        on a lone SYNC request every hop is latency."""
        error: BaseException | None = None
        started = time.perf_counter()
        try:
            self.wal.sync()
        except BaseException as exc:  # handed to the loop thread, which decides
            error = exc
        elapsed = time.perf_counter() - started
        with contextlib.suppress(RuntimeError):  # the loop closed while this fsync ran
            loop.call_soon_threadsafe(self._sync_done, number, error, elapsed)

    def _sync_done(self, number: int, error: BaseException | None, elapsed_s: float) -> None:
        self._syncing = False
        self.fsyncs += 1
        self.fsync_seconds.observe(elapsed_s)
        if error is not None:
            if isinstance(error, DiskFullError):
                # The WAL keeps what it could not sync and rewrites it on the next sync.
                log.warning("actor=%s event=sync_disk_full error=%r", self.name, str(error))
                self._sync_wanted = max(self._sync_wanted, number)
                asyncio.get_running_loop().call_later(disk_retry_s, self._retry_write)
                return
            self._fail_stop(error)
        if self.mailbox.closed:
            return
        if testing_switches.PLANTED_FAULT == "fsync-callback":
            raise testing_switches.PlantedFault(f"planted fault in {self.name}'s fsync callback")
        # Step the core here rather than through the mailbox: this callback already runs on
        # the loop thread between steps, so the core still sees one message at a time. Ends
        # by starting the next sync if appends arrived meanwhile (``_step_all``).
        self._step_all([Persisted(number)])

    async def flush(self) -> None:
        """Wait until everything appended so far is durable (used on shutdown)."""
        while self._syncing and self._sync_task is not None:
            await asyncio.wait({self._sync_task})
        if not self._unwritten and self.wal.durable_index < self.wal.last_index:
            await asyncio.get_running_loop().run_in_executor(None, self.wal.sync)

    # ------------------------------------------------------------------ timers

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline_us()
        if self._timer is not None and self._timer_at <= deadline:
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
        if self._timer is not None:
            self._timer.cancel()
        self.mailbox.close()
        if self._last_hs is not None:
            save_hard_state(self.directory, self._last_hs)
        self.wal.close()
