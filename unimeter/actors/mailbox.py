"""Bounded mailboxes in the style of trio's memory channels.

``try_send`` never waits: a full mailbox raises ``MailboxFull`` and the sender turns that into a
BACKPRESSURE answer. A mailbox is bounded in items and, when given ``bytes_max``, in the bytes
its senders say the items stand for (an Ingest frame's size): 1024 requests of up to 4 MiB each
would otherwise be 4 GiB. One item larger than the byte bound is still accepted into an empty
mailbox, or it could never be delivered. ``send`` waits for room (used by actors talking to
each other where waiting is the right thing). ``post_internal`` is for the owner's own runtime
(a finished fsync, a timer): such messages are few, bounded by construction, and must never be
dropped, so they skip the capacity check. ``close`` fails every pending waiter; the runtime
then fails pending requests with a typed error. ``notify`` (set by the owner) is called on
every push, so one actor can wait on several mailboxes (its client mailbox and its peer lane);
``when_room`` registers a callback for the next ``drain`` (flow control: a sender that found it
full resumes then).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class MailboxFull(Exception):
    """The mailbox is at capacity; the caller should answer BACKPRESSURE."""


class MailboxClosed(Exception):
    """The owning actor stopped."""


@dataclass(frozen=True, slots=True)
class MailboxStats:
    depth: int
    peak: int
    capacity: int
    rejected: int
    bytes: int = 0
    bytes_max: int | None = None


class Mailbox(Generic[T]):
    __slots__ = (
        "_bytes",
        "_bytes_max",
        "_capacity",
        "_closed",
        "_items",
        "_on_room",
        "_peak",
        "_rejected",
        "_room",
        "_wakeup",
        "notify",
    )

    def __init__(self, capacity: int, *, bytes_max: int | None = None) -> None:
        assert capacity > 0 and (bytes_max is None or bytes_max > 0)
        self._capacity = capacity
        self._bytes_max = bytes_max
        self._bytes = 0
        self._items: deque[T] = deque()
        self._wakeup: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._on_room: list[Callable[[], None]] = []
        self._closed = False
        self._peak = 0
        self._rejected = 0
        self.notify: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def try_send(self, item: T, nbytes: int = 0) -> None:
        if self._closed:
            raise MailboxClosed()
        if len(self._items) >= self._capacity or (
            self._bytes_max is not None and self._items and self._bytes + nbytes > self._bytes_max
        ):
            self._rejected += 1
            raise MailboxFull()
        self._bytes += nbytes
        self._push(item)

    def when_room(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, at the next ``drain`` (or ``close``)."""
        self._on_room.append(callback)

    async def send(self, item: T) -> None:
        while len(self._items) >= self._capacity:
            if self._closed:
                raise MailboxClosed()
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        if self._closed:
            raise MailboxClosed()
        self._push(item)

    def post_internal(self, item: T) -> None:
        if self._closed:
            raise MailboxClosed()
        self._push(item)

    def _push(self, item: T) -> None:
        self._items.append(item)
        depth = len(self._items)
        if depth > self._peak:
            self._peak = depth
        if self._wakeup is not None:
            self._wakeup.set()
        if self.notify is not None:
            self.notify()

    def drain(self) -> list[T]:
        """Everything queued now, without waiting (one loop iteration's worth of work)."""
        items = list(self._items)
        self._items.clear()
        self._bytes = 0
        if self._room is not None:
            self._room.set()
        if self._on_room:
            self._call_on_room()
        return items

    def _call_on_room(self) -> None:
        callbacks, self._on_room = self._on_room, []
        for callback in callbacks:
            callback()

    async def wait(self) -> None:
        """Wait until at least one item is queued (or the mailbox is closed)."""
        if self._items:
            return
        if self._closed:
            raise MailboxClosed()
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.clear()
        await self._wakeup.wait()
        if self._closed and not self._items:
            raise MailboxClosed()

    def close(self) -> None:
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._room is not None:
            self._room.set()
        if self.notify is not None:
            self.notify()
        if self._on_room:
            self._call_on_room()

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> MailboxStats:
        return MailboxStats(
            depth=len(self._items),
            peak=self._peak,
            capacity=self._capacity,
            rejected=self._rejected,
            bytes=self._bytes,
            bytes_max=self._bytes_max,
        )
