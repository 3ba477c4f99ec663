"""What a node counts while it serves: request latencies, ingest outcomes, rejected events.

Everything here is plain integers and lists, updated on the event loop thread with a few
operations per *request* (never per event): the ingest hot path pays a counter increment, two
clock reads and one ``bisect`` per batch. ``/metrics`` turns these numbers into the Prometheus
text format only when it is scraped (``unimeter/server/prometheus.py``), so a node nobody
scrapes pays nothing more.

A rejected event is also logged, at most once per ``REJECT_LOG_INTERVAL_S`` for each (metric,
reason), with the number of rejections folded into that line: a misconfigured producer shows up
in the log without flooding it. Metric codes come from clients, so the number of distinct
(metric, reason) labels is capped (``REJECT_LABELS_MAX``); beyond the cap, rejections are
counted under the metric label ``OTHER_METRIC``.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence

from unimeter.errors import Status
from unimeter.wire.messages import EventBatch, IngestReply

log = logging.getLogger("unimeter.ingest")

# Request latency buckets, seconds: 50 us (a read answered in the callback) to 10 s.
REQUEST_BUCKETS_S = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# fsync buckets: from a fast NVMe flush to a disk that stalls.
FSYNC_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
)  # fmt: skip
# Snapshots and recoveries take from milliseconds to minutes.
SLOW_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

REJECT_LOG_INTERVAL_S = 10.0
REJECT_LABELS_MAX = 1000
OTHER_METRIC = "_other"


class Histogram:
    """Counts per bucket (``le`` upper bounds, plus one for +Inf) and the sum of observations."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        assert list(bounds) == sorted(bounds) and bounds, "bucket bounds must ascend"
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, so the value counts in that bucket (le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def merge(self, other: Histogram) -> None:
        assert other.bounds == self.bounds
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.total += other.total


_STATUS_SLOTS = max(Status) + 2  # one per status, and one for a status this build lacks


class RequestStats:
    """Latency and outcome of one kind of request (``ingest``, ``query``, ``http_usage``...)."""

    __slots__ = ("latency", "statuses")

    def __init__(self) -> None:
        self.latency = Histogram(REQUEST_BUCKETS_S)
        self.statuses = [0] * _STATUS_SLOTS  # requests answered with each status

    def done(self, status: int, seconds: float) -> None:
        # Histogram.observe inlined: this runs once per request on the ingest path.
        latency = self.latency
        latency.counts[bisect_left(latency.bounds, seconds)] += 1
        latency.total += seconds
        self.statuses[status if 0 <= status < _STATUS_SLOTS else -1] += 1

    def by_status(self) -> dict[str, int]:
        """Status name -> requests answered with it (statuses seen at least once)."""
        names = [s.name for s in Status] + ["UNKNOWN"]
        return {names[i]: n for i, n in enumerate(self.statuses) if n}


class IngestStats:
    """Events answered by this node's partition leaders, whatever protocol brought them."""

    __slots__ = (
        "_clock", "_next_log", "_suppressed", "duplicates", "ingested", "rejected", "stored",
    )  # fmt: skip

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.ingested = 0  # events in Ingest requests answered OK (stored + dup + rejected)
        self.stored = 0
        self.duplicates = 0
        self.rejected: dict[tuple[str, str], int] = {}  # (metric, reason) -> events
        self._next_log: dict[tuple[str, str], float] = {}  # when that key may log again
        self._suppressed: dict[tuple[str, str], int] = {}  # rejections since its last line

    def note(self, batch: EventBatch, reply: IngestReply) -> None:
        self.ingested += len(batch)
        self.stored += reply.n_stored
        self.duplicates += reply.n_duplicates
        if reply.rejected:
            self._note_rejected(batch, reply.rejected)

    def _note_rejected(self, batch: EventBatch, rejected: Sequence[tuple[int, str]]) -> None:
        now = self._clock()
        for index, reason in rejected:
            metric = metric_of(batch, index)
            key = (metric, reason)
            if key not in self.rejected and len(self.rejected) >= REJECT_LABELS_MAX:
                key = (OTHER_METRIC, reason)
            self.rejected[key] = self.rejected.get(key, 0) + 1
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            if now >= self._next_log.get(key, 0.0):
                self._log(key, batch, index, now)

    def _log(self, key: tuple[str, str], batch: EventBatch, index: int, now: float) -> None:
        count = self._suppressed.pop(key)
        event_id = batch.event_ids[index] if batch.event_ids is not None else None
        log.warning(
            # count: rejections of this metric and reason since the previous such line
            "event=ingest_rejected metric=%s reason=%s account=%d event_id=%s count=%d",
            key[0], key[1], int(batch.account_ids[index]), event_id, count,
        )  # fmt: skip
        if len(self._next_log) >= REJECT_LABELS_MAX:
            self._next_log.clear()  # bounded: forgetting only makes the next line come sooner
        self._next_log[key] = now + REJECT_LOG_INTERVAL_S


def metric_of(batch: EventBatch, index: int) -> str:
    """The metric code of event ``index`` of ``batch`` (the one place that reads the batch's
    metric columns for observability)."""
    return batch.metric_codes[int(batch.metric_index[index])]


class NodeStats:
    """Everything a node counts for ``/metrics``, besides what its actors already keep."""

    __slots__ = ("_by_type", "ingest", "recovery_seconds", "requests")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], RequestStats] = {}  # (protocol, kind) -> stats
        self._by_type: dict[type, RequestStats] = {}  # binary request class -> its stats
        self.ingest = IngestStats()
        self.recovery_seconds: dict[str, float] = {}  # actor name -> its last recovery

    def request(self, protocol: str, kind: str) -> RequestStats:
        """The stats of one request kind, made on first use (kinds are a fixed, small set)."""
        key = (protocol, kind)
        stats = self.requests.get(key)
        if stats is None:
            stats = self.requests[key] = RequestStats()
        return stats

    def binary(self, message: object) -> RequestStats:
        """The stats of a binary-protocol request, by its message class (one dict lookup)."""
        stats = self._by_type.get(type(message))
        if stats is None:
            kind = getattr(message, "KIND", None)
            name = kind.name.lower() if kind is not None else type(message).__name__.lower()
            stats = self._by_type[type(message)] = self.request("binary", name)
        return stats
