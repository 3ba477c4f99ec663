"""The leader's view of one follower: how far it matches, and how to send it more.

Theory of operation (the flow-control state machine, as in etcd-io/raft's tracker):

    state      sends                                   leaves when
    PROBE      one AppendEntries, then waits for an    an append succeeds -> REPLICATE
               answer or the next heartbeat answer     it needs compacted entries -> SNAPSHOT
    REPLICATE  streams entries optimistically, at      an append is rejected, or acks stall
               most ``inflight_appends_max`` (and          -> PROBE
               ``inflight_bytes_max``) unacknowledged  it needs compacted entries -> SNAPSHOT
    SNAPSHOT   nothing; the runtime is asked for a     it acks an index the log still holds
               snapshot, which is sent once                -> REPLICATE (or PROBE)
                                                       the snapshot times out -> PROBE

``match`` only moves forward and only on a follower's word that the entries are durable there.
``next`` is a guess; a rejection or a timeout moves it back (never below ``match + 1``).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Inflights:
    """Unacknowledged appends to one follower: (last index, bytes) in sending order."""

    count_max: int
    bytes_max: int
    _queue: deque[tuple[int, int]] = field(default_factory=deque)
    _bytes: int = 0

    def add(self, last_index: int, size_bytes: int) -> None:
        assert not self._queue or last_index > self._queue[-1][0]
        self._queue.append((last_index, size_bytes))
        self._bytes += size_bytes

    def free_to(self, index: int) -> None:
        """Forget every append whose last entry is at or below ``index`` (acknowledged)."""
        while self._queue and self._queue[0][0] <= index:
            self._bytes -= self._queue.popleft()[1]

    def full(self) -> bool:
        return len(self._queue) >= self.count_max or self._bytes >= self.bytes_max

    def __len__(self) -> int:
        return len(self._queue)

    def clear(self) -> None:
        self._queue.clear()
        self._bytes = 0


@dataclass(slots=True)
class Progress:
    match: int
    next: int
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False  # PROBE: an append is out; wait for its answer or a heartbeat's
    recent_active: bool = False  # heard from since the last check-quorum round
    # REPLICATE: since when we have waited for an answer with appends out (stall detection).
    waiting_since: float = 0.0
    snapshot_index: int = 0  # SNAPSHOT: index of the snapshot sent, 0 while still wanted
    snapshot_at: float = 0.0  # SNAPSHOT: when it was wanted or sent (retry timer)

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.clear()
        self.snapshot_index = 0

    def become_replicate(self, now: float) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.clear()
        self.snapshot_index = 0
        self.waiting_since = now

    def become_snapshot(self, now: float) -> None:
        self.state = ProgressState.SNAPSHOT
        self.probe_sent = False
        self.inflights.clear()
        self.snapshot_index = 0
        self.snapshot_at = now

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent(self, last_index: int, size_bytes: int, now: float) -> None:
        """An append carrying entries up to ``last_index`` went out."""
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next:
                if not len(self.inflights):
                    self.waiting_since = now  # an idle follower is not a stalled one
                self.inflights.add(last_index, size_bytes)
                self.next = last_index + 1
        else:
            self.probe_sent = True

    def maybe_update(self, match: int) -> bool:
        """The follower acknowledged ``match``; returns whether that was news."""
        updated = match > self.match
        if updated:
            self.match = match
            self.probe_sent = False
        self.next = max(self.next, match + 1)
        return updated

    def maybe_decrease(self, rejected: int, hint: int) -> bool:
        """The follower rejected an append after ``rejected``; returns whether to act on it."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # an answer to an append older than what is acknowledged
            self.next = self.match + 1
            return True
        if self.state is ProgressState.SNAPSHOT or rejected != self.next - 1:
            return False  # not an answer to the probe outstanding now
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True
