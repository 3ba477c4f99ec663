"""The deadlines of one connection's requests, all kept by a single timer.

A timer per request (``loop.call_at`` and its cancel, or ``asyncio.timeout_at``) costs more than
the rest of the client's own work for a request. Here a request only pushes ``(deadline,
request_id)`` on a heap, and one timer is armed at the earliest deadline. When it fires, every
request whose deadline has passed and which is still pending is resolved with None (the
connection turns that into ``TimeoutError``), and the timer is armed again at the next
deadline. Entries of requests answered in time stay on the heap until the heap holds more than
twice the pending requests (plus a margin); it is then rebuilt from the pending ones, so its
size follows what is in flight and the timer seldom fires for nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Any

_SLACK = 64  # answered entries tolerated on the heap beyond twice the pending ones
# A timer may fire this much before its time (libuv counts milliseconds); what is due by then
# counts as due, as asyncio's own loop does, instead of arming again for a sliver.
_RESOLUTION_S = 0.001


class Deadlines:
    __slots__ = ("_armed_at", "_heap", "_loop", "_pending", "_timer")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pending: dict[int, asyncio.Future[Any]]
    ) -> None:
        """``pending``: the connection's futures by request id, removed once settled."""
        self._loop = loop
        self._pending = pending
        self._heap: list[tuple[float, int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def add(self, deadline: float, request_id: int) -> None:
        """Resolve ``pending[request_id]`` with None at ``deadline`` (loop time) unless it is
        settled before."""
        heap = self._heap
        heapq.heappush(heap, (deadline, request_id))
        if len(heap) > 2 * len(self._pending) + _SLACK:
            pending = self._pending
            heap[:] = [entry for entry in heap if entry[1] in pending]
            heapq.heapify(heap)
        if deadline < self._armed_at:
            self._arm(deadline)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_at = math.inf
        self._heap.clear()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = math.inf
        heap, pending = self._heap, self._pending
        due = self._loop.time() + _RESOLUTION_S
        while heap and heap[0][0] <= due:
            _, request_id = heapq.heappop(heap)
            future = pending.get(request_id)
            if future is not None and not future.done():
                future.set_result(None)
        if heap:
            self._arm(heap[0][0])
