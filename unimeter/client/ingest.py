"""Sending one ingest's per-partition groups: sequence numbers, parallel sends, merged result.

Each group takes the next sequence number of its partition's window before it is first sent and
keeps it through every retry (the retries send the very same ``Ingest`` message), then releases
it whatever the outcome: once released, the number is never sent again. The groups run in
parallel and are all settled before ``send_groups`` returns or raises, so no send outlives the
call.

The common case costs no task: every group whose window has room and whose leader's connection
is open is started at once (``Sender.start``), the frames are written with one system call per
connection, then the replies are awaited one after the other (they travel in parallel all the
same). Only the groups that could not be started that way (at once), or whose first attempt
failed with a retriable error (as soon as that is seen), go through ``Sender.call``, which
retries under the deadline, each in a task of its own.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from unimeter.errors import TimeoutError, UnimeterError
from unimeter.model import IngestResult
from unimeter.wire.messages import Ingest, IngestReply, Reply, Request

from . import convert
from .batching import Group, merge_results
from .session import SeqWindow, Session

# Sends a request to the leader of a partition, retrying until the deadline.
Call = Callable[[int, Request, float], Awaitable[Reply]]


class Pending(Protocol):
    """A request started on its connection: ``flush`` writes it (with any other request
    started on that connection since), ``reply`` awaits the answer, ``abandon`` gives up."""

    def flush(self) -> None: ...

    async def reply(self) -> Reply: ...

    def abandon(self) -> None: ...


class Sender(Protocol):
    def start(self, target: int, request: Request, deadline: float) -> Pending | None:
        """Start ``request`` to ``target``'s leader if that can be done without waiting, else
        None. Raises only non-retriable errors."""

    async def call(
        self,
        target: int,
        request: Request,
        deadline: float,
        failed: UnimeterError | None = None,
    ) -> Reply:
        """Send ``request`` to ``target``'s leader, retrying until ``deadline``; ``failed`` is
        the retriable error of an attempt already made."""


class CallSender:
    """A ``Sender`` made of a plain retrying call: every group takes the general path."""

    __slots__ = ("_call",)

    def __init__(self, call: Call) -> None:
        self._call = call

    def start(self, target: int, request: Request, deadline: float) -> Pending | None:
        return None

    async def call(
        self,
        target: int,
        request: Request,
        deadline: float,
        failed: UnimeterError | None = None,
    ) -> Reply:
        return await self._call(target, request, deadline)


class _Send:
    """One group's progress: its sequence number while it holds one, and how it ended."""

    __slots__ = ("failed", "group", "outcome", "pending", "request", "seq", "window")

    def __init__(self, group: Group, window: SeqWindow) -> None:
        self.group = group
        self.window = window
        self.seq: int | None = None
        self.request: Ingest | None = None
        self.pending: Pending | None = None
        self.failed: UnimeterError | None = None  # a retriable first attempt's error
        self.outcome: IngestReply | BaseException | None = None

    def settle(self, outcome: IngestReply | BaseException, session: Session) -> None:
        if self.seq is not None:
            self.window.release(self.seq)
            self.seq = None
        if isinstance(outcome, IngestReply):
            session.note_ack(self.group.partition, outcome.log_index)
        self.outcome = outcome


async def send_groups(
    groups: Sequence[Group], session: Session, sender: Sender, *, sync: bool, deadline: float
) -> IngestResult:
    return merge_results(
        await send_group_replies(groups, session, sender, sync=sync, deadline=deadline)
    )


async def send_group_replies(
    groups: Sequence[Group], session: Session, sender: Sender, *, sync: bool, deadline: float
) -> list[tuple[Group, IngestReply]]:
    """``send_groups`` before the replies are summed: each group with its reply."""
    assert groups
    sends = [_Send(group, session.window(group.partition)) for group in groups]
    general: list[tuple[_Send, asyncio.Task[None]]] = []

    def take_general_path(send: _Send) -> None:
        task = asyncio.get_running_loop().create_task(
            _finish(send, session, sender, sync=sync, deadline=deadline)
        )
        general.append((send, task))

    try:
        try:
            for send in sends:
                _start(send, session, sender, sync=sync, deadline=deadline)
        finally:
            # Every started frame is written before anything can give up on it (a number is
            # released only after its request was written, or knowing it never will be).
            for send in sends:
                if send.pending is not None:
                    send.pending.flush()
        for send in sends:
            if send.pending is None and send.outcome is None:
                take_general_path(send)  # at once, not after the other groups' replies
        for send in sends:
            if send.pending is not None:
                await _first_reply(send, session)
                if send.failed is not None:
                    take_general_path(send)
        if general:
            # return_exceptions: a KeyboardInterrupt in one must not leave the others running.
            await asyncio.gather(*(task for _, task in general), return_exceptions=True)
    finally:
        # Cancelled (or a bug): give up on what is still in flight, wait for the retrying
        # tasks to stop, and release every number still held.
        for send in sends:
            if send.pending is not None:
                send.pending.abandon()
                send.pending = None
        running = [task for _, task in general if not task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for send in sends:
            if send.seq is not None:
                send.window.release(send.seq)
                send.seq = None
    for send, task in general:
        if send.outcome is None:  # only a BaseException gets past _finish
            send.outcome = task.exception() if not task.cancelled() else asyncio.CancelledError()
    parts: list[tuple[Group, IngestReply]] = []
    failures: list[tuple[Group, BaseException]] = []
    for send in sends:
        assert send.outcome is not None
        if isinstance(send.outcome, BaseException):
            failures.append((send.group, send.outcome))
        else:
            parts.append((send.group, send.outcome))
    if not failures:
        return parts
    for _, failure in failures:
        if not isinstance(failure, Exception):
            raise failure  # KeyboardInterrupt and the like are not ours to annotate
    error = failures[0][1]
    if len(groups) > 1:
        error.add_note(partial_failure_note(parts, failures))
    raise error


def _start(send: _Send, session: Session, sender: Sender, *, sync: bool, deadline: float) -> None:
    """Take a sequence number and write the group's request, if both can be done at once."""
    seq = send.window.try_acquire()
    if seq is None:
        return  # earlier batches of the partition are unsettled: ``_finish`` waits for them
    send.seq = seq
    send.request = _ingest(send.group, session, seq, sync)
    try:
        send.pending = sender.start(send.group.partition, send.request, deadline)
    except UnimeterError as exc:
        send.settle(exc, session)


async def _first_reply(send: _Send, session: Session) -> None:
    assert send.pending is not None
    pending, send.pending = send.pending, None
    try:
        reply = convert.expect(await pending.reply(), IngestReply)
    except UnimeterError as exc:
        if exc.retriable:
            send.failed = exc  # ``_finish`` retries it, with the same number
        else:
            send.settle(exc, session)
        return
    send.settle(reply, session)


async def _finish(
    send: _Send, session: Session, sender: Sender, *, sync: bool, deadline: float
) -> None:
    """The general path: wait for a sequence number if need be, then send with retries."""
    try:
        if send.seq is None:
            send.seq = await _acquire(send.window, send.group.partition, deadline)
            send.request = _ingest(send.group, session, send.seq, sync)
        assert send.request is not None
        reply = await sender.call(send.group.partition, send.request, deadline, send.failed)
        send.settle(convert.expect(reply, IngestReply), session)
    except Exception as exc:
        send.settle(exc, session)


async def _acquire(window: SeqWindow, partition: int, deadline: float) -> int:
    seq = window.try_acquire()
    if seq is not None:
        return seq
    try:
        async with asyncio.timeout_at(deadline):
            return await window.acquire()
    except builtins.TimeoutError:
        raise TimeoutError(
            f"partition {partition}: earlier batches still unsettled at the deadline"
        ) from None


def _ingest(group: Group, session: Session, seq: int, sync: bool) -> Ingest:
    return Ingest(
        partition=group.partition,
        producer_id=session.producer_id,
        seq=seq,
        sync=sync,
        catalog_version=session.catalog_version,
        batch=group.batch,
    )


async def send_group(
    group: Group, session: Session, call: Call, *, sync: bool, deadline: float
) -> IngestReply:
    """One group through the general path (sequence number, retries, acknowledgement)."""
    send = _Send(group, session.window(group.partition))
    try:
        await _finish(send, session, CallSender(call), sync=sync, deadline=deadline)
    finally:
        if send.seq is not None:  # cancelled
            send.window.release(send.seq)
    if isinstance(send.outcome, BaseException):
        raise send.outcome
    assert send.outcome is not None
    return send.outcome


def partial_failure_note(
    parts: Sequence[tuple[Group, IngestReply]], failures: Sequence[tuple[Group, BaseException]]
) -> str:
    """What the caller needs to retry without double-counting: which events were settled."""
    failed = sorted(i for group, _ in failures for i in group.origin.tolist())
    lines = [
        f"{len(failed)} event(s) in {len(failures)} batch(es) were not acknowledged and may or "
        "may not have been stored: resend them only if they carry an event_id, or they may be "
        "counted twice."
    ]
    if parts:
        merged = merge_results(parts)
        settled = sum(len(group.origin) for group, _ in parts)
        lines.append(
            f"{settled} event(s) were acknowledged: {merged.n_stored} stored, "
            f"{merged.n_duplicates} duplicates, {merged.n_rejected} rejected."
        )
    shown = ", ".join(map(str, failed[:20])) + (", ..." if len(failed) > 20 else "")
    lines.append(f"failed event indices: {shown}")
    for group, failure in failures[1:]:
        lines.append(f"partition {group.partition} also failed: {failure!r}")
    return "\n".join(lines)
