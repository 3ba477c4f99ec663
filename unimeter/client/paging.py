"""An async iterator over a paged listing (events, alerts), one page fetched at a time."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from unimeter.errors import ProtocolError

_T = TypeVar("_T")

# Fetches the page after a cursor: its items and the next cursor (None: nothing more).
PageFetch = Callable[[int], Awaitable[tuple[list[_T], int | None]]]


class Pages(AsyncIterator[_T]):
    """Yields every item of every page. A failed fetch can be retried by iterating again: the
    cursor only moves once a page has arrived."""

    __slots__ = ("_after", "_buffer", "_done", "_fetch")

    def __init__(self, fetch: PageFetch[_T], after: int = -1) -> None:
        self._fetch = fetch
        self._after = after
        self._buffer: deque[_T] = deque()
        self._done = False

    def __aiter__(self) -> Pages[_T]:
        return self

    async def __anext__(self) -> _T:
        while not self._buffer:
            if self._done:
                raise StopAsyncIteration
            items, next_cursor = await self._fetch(self._after)
            if next_cursor is None:
                self._done = True
            elif next_cursor <= self._after:
                # A cursor that does not advance would page forever.
                raise ProtocolError(f"page cursor went from {self._after} to {next_cursor}")
            else:
                self._after = next_cursor
            self._buffer.extend(items)
        return self._buffer.popleft()
