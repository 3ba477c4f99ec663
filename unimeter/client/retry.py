"""Retrying a request: which failures to retry, how long to wait, and when to stop.

The policy lives on the error classes (``retriable``, ``refresh_routing``); this module runs it.
Retrying is always safe: reads change nothing, catalog writes are idempotent, and an ``Ingest``
retry is the very same message, with its producer id and sequence number (see ``session.py``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from unimeter import limits
from unimeter.errors import NotLeaderError, UnimeterError

_T = TypeVar("_T")


class Backoff:
    """Exponential backoff with "equal jitter": each wait is uniform in [b/2, b], b doubling from
    ``initial`` up to ``maximum``. The jitter keeps many clients failing together (a leader
    change) from retrying in lockstep; the lower half keeps every wait meaningfully long."""

    __slots__ = ("_base", "_maximum", "_rng", "_routing_maximum")

    def __init__(
        self,
        rng: random.Random,
        *,
        initial: float = limits.retry_backoff_s_initial,
        maximum: float = limits.retry_backoff_s_max,
        routing_maximum: float = limits.retry_backoff_s_routing_max,
    ) -> None:
        assert 0 < initial <= maximum
        self._rng = rng
        self._base = initial
        self._maximum = maximum
        self._routing_maximum = max(initial, min(routing_maximum, maximum))

    def next_delay(self, routing: bool = False) -> float:
        """The next wait; ``routing`` failures (the leader moved or is being elected) wait at
        most ``routing_maximum``, so a failover is noticed soon after it ends."""
        base = min(self._base, self._routing_maximum) if routing else self._base
        self._base = min(self._base * 2, self._maximum)
        return self._rng.uniform(base / 2, base)


class Attempts:
    """How many times a request has been sent so far; more than one means an earlier attempt
    may have been applied even though its answer never arrived."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


async def retry_until(
    attempt: Callable[[], Awaitable[_T]],
    *,
    deadline: float,
    backoff: Backoff,
    before_retry: Callable[[UnimeterError], None],
    attempts: Attempts | None = None,
    failed: UnimeterError | None = None,
) -> _T:
    """Run ``attempt`` until it succeeds, fails with a non-retriable error, or the next wait
    would end past ``deadline`` (loop time); then its last error is raised, with a note.
    ``before_retry`` sees every retriable failure first (to re-route, or to raise instead).
    ``failed`` is the retriable error of an attempt the caller already made itself (its fast
    path): the loop starts by retrying it."""
    loop = asyncio.get_running_loop()
    hinted = False
    counter = attempts if attempts is not None else Attempts()
    if failed is not None:
        assert failed.retriable
        counter.count += 1
    while True:
        if failed is None:
            counter.count += 1
            try:
                return await attempt()
            except UnimeterError as exc:
                if not exc.retriable:
                    raise
                failed = exc
        before_retry(failed)
        if isinstance(failed, NotLeaderError) and failed.leader and not hinted:
            delay = 0.0  # the node named the new leader: go there now (once per hint in a row)
            hinted = True
        else:
            delay = backoff.next_delay(failed.refresh_routing)
            hinted = False
        if loop.time() + delay >= deadline:
            failed.add_note(f"gave up after {counter.count} attempt(s): the deadline passed")
            raise failed
        await asyncio.sleep(delay)
        failed = None
