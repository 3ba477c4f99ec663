"""The simulated world: one seeded ``random.Random``, a virtual clock and an event queue.

Everything that happens in a run is an event on one queue, ordered by (virtual time, the order
it was scheduled in): message deliveries, fsync completions, core timers, client actions and
faults. Time only moves when the next event is taken, in integer microseconds, and every random
choice comes from ``world.rng`` in event order, so a seed always produces the same run.

Nothing here reads the wall clock, iterates an unordered collection of objects, or uses
``id()``/``hash()`` of objects; the optional ``tracer`` records every core input (the format of
``unimeter.trace``), which is also what the determinism test hashes.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unimeter.tracefile import TraceWriter


@dataclass(frozen=True, slots=True)
class Violation:
    checker: str
    at_us: int
    message: str

    def __str__(self) -> str:
        return f"[{self.checker}] t={self.at_us / 1e6:.6f}s {self.message}"


# More events than this at one virtual instant is a livelock (a timer that never moves on).
EVENTS_PER_INSTANT_MAX = 100_000
# A run (of scale 1) takes some thousands of events; this many means something spins.
EVENTS_PER_RUN_MAX = 3_000_000

# (time, scheduling order, function, arguments): the order is unique, so ties never compare
# the functions.
_Event = tuple[int, int, Callable[..., None], tuple[Any, ...]]


class World:
    def __init__(self, seed: int, start_us: int, tracer: TraceWriter | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.start_us = start_us
        self.now = start_us
        self.tracer = tracer
        self.violations: list[Violation] = []
        self.events_run = 0
        self._queue: list[_Event] = []
        self._seq = 0

    # ------------------------------------------------------------------ scheduling

    def at(self, when_us: int, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (max(when_us, self.now), self._seq, fn, args))

    def after(self, delay_us: int, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay_us, fn, *args)

    def run_until(self, end_us: int, done: Callable[[], bool] | None = None) -> bool:
        """Run events up to ``end_us`` (or until ``done()`` or a violation); True if ``done``."""
        queue = self._queue
        same = 0
        while queue and queue[0][0] <= end_us and not self.violations:
            at, _, fn, args = heapq.heappop(queue)
            if at == self.now:
                same += 1
                if same > EVENTS_PER_INSTANT_MAX:
                    self.fail("Liveness", f"livelock: {same} events without time moving ({fn})")
                    break
            else:
                same = 0
            self.now = at
            self.events_run += 1
            if self.events_run > EVENTS_PER_RUN_MAX:
                self.fail("Liveness", f"{self.events_run} events: the run does not settle")
                break
            fn(*args)
            if done is not None and done():
                return True
        if not self.violations:
            self.now = max(self.now, end_us)
        return done is not None and done()

    # ------------------------------------------------------------------ outcomes

    def fail(self, checker: str, message: str) -> None:
        self.violations.append(Violation(checker, self.now, message))
        self.note(f"VIOLATION [{checker}] {message}")

    @property
    def failed(self) -> bool:
        return bool(self.violations)

    def note(self, text: str) -> None:
        if self.tracer is not None:
            self.tracer.note(self.now, text)

    # ------------------------------------------------------------------ random helpers

    def chance(self, p: float) -> bool:
        return p > 0 and self.rng.random() < p

    def between(self, low: int, high: int) -> int:
        return self.rng.randint(low, high) if high > low else low

    def new_seed(self) -> int:
        return self.rng.getrandbits(63)
