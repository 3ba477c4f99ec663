"""The counters behind /metrics: histogram buckets, ingest outcomes, rate-limited rejection logs."""

from __future__ import annotations

import logging
from array import array

import pytest

from unimeter.observe import REJECT_LABELS_MAX, Histogram, IngestStats, RequestStats
from unimeter.wire.messages import EventBatch, IngestReply


def test_histogram_counts_each_value_in_the_first_bucket_whose_bound_is_not_below_it() -> None:
    hist = Histogram((0.1, 1.0, 10.0))
    for value in (0.05, 0.1, 0.5, 1.0, 10.0, 11.0):
        hist.observe(value)
    assert hist.counts == [2, 2, 1, 1]  # le=0.1, le=1, le=10, +Inf
    assert hist.count == 6 and hist.total == pytest.approx(22.65)
    stats = RequestStats()
    stats.done(0, 0.002)
    stats.done(1, 0.002)
    stats.done(1, 20.0)
    assert stats.by_status() == {"OK": 1, "BACKPRESSURE": 2}
    assert stats.latency.count == 3 and stats.latency.counts[-1] == 1


def batch(codes: tuple[str, ...], index: list[int]) -> EventBatch:
    n = len(index)
    return EventBatch(
        metric_codes=codes,
        metric_index=array("B", index),
        account_ids=array("Q", range(n)),
        values=array("q", [1] * n),
    )


def reply(stored: int, duplicates: int, rejected: tuple[tuple[int, str], ...]) -> IngestReply:
    return IngestReply(
        n_stored=stored, n_duplicates=duplicates, n_rejected=len(rejected), rejected=rejected,
        last_offset=None, log_index=1,
    )  # fmt: skip


def test_rejections_are_counted_by_metric_and_reason_and_logged_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    stats = IngestStats(clock=lambda: now[0])
    events = batch(("calls", "typo"), [0, 1, 1, 0])
    caplog.set_level(logging.WARNING, logger="unimeter.ingest")
    for _ in range(3):
        stats.note(events, reply(2, 0, ((1, "unknown_metric"), (2, "unknown_metric"))))
    assert (stats.ingested, stats.stored, stats.duplicates) == (12, 6, 0)
    assert stats.rejected == {("typo", "unknown_metric"): 6}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["event=ingest_rejected metric=typo reason=unknown_metric account=1 "
                     "event_id=None count=1"]  # fmt: skip
    now[0] += 10.0  # the interval passed: the next one logs, with what was held back
    stats.note(events, reply(3, 0, ((2, "unknown_metric"),)))
    assert caplog.records[-1].getMessage().endswith("account=2 event_id=None count=6")
    assert len(caplog.records) == 2


def test_rejection_labels_are_bounded() -> None:
    stats = IngestStats(clock=lambda: 0.0)
    for start in range(0, REJECT_LABELS_MAX + 400, 200):
        names = tuple(f"x{start + i}" for i in range(200))
        stats.note(batch(names, list(range(200))), reply(0, 0, tuple((i, "r") for i in range(200))))
    assert len(stats.rejected) == REJECT_LABELS_MAX + 1  # the rest under one label
    assert stats.rejected[("_other", "r")] == 400
    assert sum(stats.rejected.values()) == REJECT_LABELS_MAX + 400
