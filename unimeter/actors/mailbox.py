"""Bounded mailboxes in the style of trio's memory channels.

``try_send`` never waits: a full mailbox raises ``MailboxFull`` and the sender turns that into a
BACKPRESSURE answer. ``send`` waits for room (used by actors talking to each other where waiting
is the right thing). ``post_internal`` is for the owner's own runtime (a finished fsync, a timer):
such messages are few, bounded by construction, and must never be dropped, so they skip the
capacity check. ``close`` fails every pending waiter; the runtime then fails pending requests
with a typed error.
"""

from __future__ import annotations

import asyncio
from collections import deque
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


class Mailbox(Generic[T]):
    __slots__ = ("_capacity", "_closed", "_items", "_peak", "_rejected", "_room", "_wakeup")

    def __init__(self, capacity: int) -> None:
        assert capacity > 0
        self._capacity = capacity
        self._items: deque[T] = deque()
        self._wakeup: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._closed = False
        self._peak = 0
        self._rejected = 0

    def __len__(self) -> int:
        return len(self._items)

    def try_send(self, item: T) -> None:
        if self._closed:
            raise MailboxClosed()
        if len(self._items) >= self._capacity:
            self._rejected += 1
            raise MailboxFull()
        self._push(item)

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

    def drain(self) -> list[T]:
        """Everything queued now, without waiting (one loop iteration's worth of work)."""
        items = list(self._items)
        self._items.clear()
        if self._room is not None:
            self._room.set()
        return items

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

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> MailboxStats:
        return MailboxStats(
            depth=len(self._items),
            peak=self._peak,
            capacity=self._capacity,
            rejected=self._rejected,
        )
