"""Which alerts to POST, and when: the pure core of one partition's webhook deliveries.

Theory of operation. A partition's alerts carry cursors 0, 1, 2, ... in log order. Every alert
below the partition's ``webhook_next`` (logged as ``WebhookMark`` entries, so every replica
and every restart knows it) is done. On the leader, a plan starts there and takes the next
alerts in cursor order, at most ``in_flight_max`` not done at a time, each with the webhook
URL its threshold names now (None: nothing to deliver, done at once). ``watermark()`` is the
lowest cursor not done: what the runtime reports as progress, and what a later leader starts
from. An alert is never done before a receiver answered 2xx, so progress never passes an
alert that was not delivered: at least once. A new leader resends what was delivered after
the last logged mark: the duplicates carry the same idempotency key.

Each alert taken is in one state (one table; any other transition is a bug):

    PENDING   --start (due)-->  IN_FLIGHT
    IN_FLIGHT --2xx--------->   DONE
    IN_FLIGHT --failure----->   PENDING, due after backoff(attempts): initial * 2^(n-1),
                                capped at backoff_max, times a jitter in [0.5, 1]

The plan never reads a clock: ``now`` (seconds, any monotonic origin) is passed in, and
``next_deadline()`` says when the runtime should call ``due`` again.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass

from unimeter.wire.messages import StoredAlert


class State(enum.Enum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DONE = "done"


_MOVES = {
    (State.PENDING, "start"): State.IN_FLIGHT,
    (State.IN_FLIGHT, "ok"): State.DONE,
    (State.IN_FLIGHT, "failed"): State.PENDING,
}


class PlanError(AssertionError):
    """A transition the table above does not allow: a bug in the caller."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One POST to make: ``attempt`` counts from 1."""

    alert: StoredAlert
    url: str
    attempt: int

    @property
    def cursor(self) -> int:
        return self.alert.cursor


@dataclass(slots=True)
class _Tracked:
    alert: StoredAlert
    url: str | None
    state: State
    attempts: int = 0
    due_s: float = 0.0


class DeliveryPlan:
    def __init__(
        self,
        start: int,
        *,
        in_flight_max: int,
        backoff_s_initial: float,
        backoff_s_max: float,
        rng: random.Random,
    ) -> None:
        assert start >= 0 and in_flight_max >= 1 and 0 < backoff_s_initial <= backoff_s_max
        self.next_offer = start  # the cursor the next offered alert may start from
        self._tracked: dict[int, _Tracked] = {}  # cursor -> state, in cursor order
        self._in_flight_max = in_flight_max
        self._initial = backoff_s_initial
        self._max = backoff_s_max
        self._rng = rng
        self.delivered = 0  # alerts a receiver took (2xx)
        self.failures = 0  # attempts that failed

    # ------------------------------------------------------------------ inputs

    def room(self) -> int:
        """How many more alerts ``offer`` takes now."""
        return self._in_flight_max - len(self._tracked)

    def offer(self, alerts: Iterable[tuple[StoredAlert, str | None]], now: float) -> None:
        """The next committed alerts in cursor order, each with its webhook URL or None. A
        cursor may skip ahead (alerts gone with retention), never back."""
        for alert, url in alerts:
            if alert.cursor < self.next_offer:
                continue  # already taken (a page that overlaps the last one)
            if len(self._tracked) >= self._in_flight_max:
                break
            self.next_offer = alert.cursor + 1
            if url is None:
                continue  # nothing to deliver: done as soon as it is taken
            self._tracked[alert.cursor] = _Tracked(alert, url, State.PENDING, due_s=now)

    def due(self, now: float) -> list[Delivery]:
        """The deliveries to start now (each moves to IN_FLIGHT)."""
        out = []
        for tracked in self._tracked.values():
            if tracked.state is State.PENDING and tracked.due_s <= now:
                self._move(tracked, "start")
                tracked.attempts += 1
                assert tracked.url is not None
                out.append(Delivery(tracked.alert, tracked.url, tracked.attempts))
        return out

    def finished(self, cursor: int, ok: bool, now: float) -> None:
        """The outcome of the delivery of ``cursor`` (ignored if the plan no longer holds it:
        the runtime replaced the plan, e.g. after a leader change)."""
        tracked = self._tracked.get(cursor)
        if tracked is None:
            return
        if ok:
            self._move(tracked, "ok")
            self.delivered += 1
            del self._tracked[cursor]
            return
        self._move(tracked, "failed")
        self.failures += 1
        delay = min(self._max, self._initial * 2 ** min(tracked.attempts - 1, 60))
        tracked.due_s = now + delay * self._rng.uniform(0.5, 1.0)

    # ------------------------------------------------------------------ outputs

    def watermark(self) -> int:
        """The lowest cursor not done: every alert below it was delivered or needed nothing."""
        return min(self._tracked, default=self.next_offer)

    def next_deadline(self) -> float | None:
        """When a pending delivery falls due (None: nothing waits on time)."""
        return min(
            (t.due_s for t in self._tracked.values() if t.state is State.PENDING), default=None
        )

    def pending(self) -> int:
        """Alerts taken and not delivered yet (in flight included)."""
        return len(self._tracked)

    def _move(self, tracked: _Tracked, event: str) -> None:
        new = _MOVES.get((tracked.state, event))
        if new is None:
            raise PlanError(f"alert {tracked.alert.cursor}: {event} while {tracked.state.value}")
        tracked.state = new
