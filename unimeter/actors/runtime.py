"""The thin asyncio runtime around a pure core.

One task per actor: wait for mail, drain the mailbox, ``step`` the core once per message, then
execute the collected effects in the fixed order of ``effects.py``. Because a whole drained
mailbox is stepped before the runtime starts an fsync, every append made in one loop iteration
shares one fsync (group commit), and only one fsync per log is in flight at a time: the number of
fsyncs does not grow with the number of clients. The fsync runs in a worker thread; its
completion is posted back to the same mailbox as a ``Durable`` message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from unimeter import errors
from unimeter.actors.effects import Effects, Outgoing
from unimeter.actors.mailbox import Mailbox, MailboxClosed
from unimeter.storage.wal import DiskFullError, WriteAheadLog
from unimeter.wire import messages as m

log = logging.getLogger("unimeter.runtime")


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


class LogRuntime:
    """Runs a core that owns a write-ahead log; subclasses say how to encode and what else to do.

    ``durable_message`` builds the core's "durable up to index" message.
    """

    def __init__(
        self,
        name: str,
        core: Any,
        wal: WriteAheadLog,
        mailbox: Mailbox[Any],
        encode: Callable[[Any], bytes],
        durable_message: Callable[[int], object],
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.name = name
        self.core = core
        self.wal = wal
        self.mailbox = mailbox
        self._encode = encode
        self._durable_message = durable_message
        self._clock = clock
        self._syncing = False
        self._sync_again = False
        self._sync_task: asyncio.Future[int] | None = None
        self.disk_full_until = 0.0  # monotonic time before which writes are refused
        self.steps = 0
        self.fsyncs = 0

    async def run(self) -> None:
        mailbox = self.mailbox
        try:
            while True:
                await mailbox.wait()
                batch = mailbox.drain()
                if not batch:
                    continue
                fx = self._new_effects()
                for msg in batch:
                    fx.merge(self.core.step(msg, self._clock()))
                self.steps += len(batch)
                self._execute(fx)
        except MailboxClosed:
            pass

    def _new_effects(self) -> Effects:
        return Effects()

    def _execute(self, fx: Effects) -> None:
        replies = fx.replies
        if fx.appends:
            first = fx.appends[0][0]
            try:
                last = self.wal.append_many([self._encode(e) for _, e in fx.appends])
            except DiskFullError as exc:
                log.warning("actor=%s event=disk_full error=%r", self.name, str(exc))
                self.disk_full_until = time.monotonic() + 1.0
                replies = self._abandon_from(first, replies)
            else:
                assert last == fx.appends[-1][0], (last, fx.appends[-1][0])
        if fx.sync:
            self._request_sync()
        deliver(replies)
        self._after(fx)

    def _abandon_from(self, first: int, replies: list[Outgoing]) -> list[Outgoing]:
        """The appends from ``first`` on never reached the log: take them back."""
        failed = self.core.truncate_uncommitted(first - 1)
        message = "disk full: the write was not stored; retry later"
        fail_all(failed, errors.Status.BACKPRESSURE, message)
        kept: list[Outgoing] = []
        for out in replies:
            msg = out.message
            if isinstance(msg, m.IngestReply) and msg.log_index >= first:
                kept.append(
                    Outgoing(out.token, errors.Status.BACKPRESSURE, m.ErrorReply(message=message))
                )
            else:
                kept.append(out)
        return kept

    def _after(self, fx: Effects) -> None:
        """Hook for effects beyond the common ones."""

    # ------------------------------------------------------------------ group commit

    def _request_sync(self) -> None:
        if self._syncing:
            self._sync_again = True
            return
        self._syncing = True
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, self.wal.sync)
        fut.add_done_callback(self._sync_done)
        self._sync_task = fut

    def _sync_done(self, fut: asyncio.Future[int]) -> None:
        self._syncing = False
        self.fsyncs += 1
        exc = fut.exception()
        if exc is not None:
            # A failed fsync may have dropped dirty pages: nothing after the last durable index
            # can be trusted. Stop this actor; the node exits and recovery sorts it out.
            log.critical("actor=%s event=fsync_failed error=%r", self.name, exc)
            self.mailbox.close()
            raise SystemExit(f"fsync failed in {self.name}: {exc}")
        if self.mailbox.closed:
            return
        self.mailbox.post_internal(self._durable_message(fut.result()))
        if self._sync_again:
            self._sync_again = False
            self._request_sync()

    async def flush(self) -> None:
        """Wait until everything appended so far is durable (used on shutdown)."""
        while self._syncing and self._sync_task is not None:
            await asyncio.wait({self._sync_task})
        if self.wal.durable_index < self.wal.last_index:
            await asyncio.get_running_loop().run_in_executor(None, self.wal.sync)
