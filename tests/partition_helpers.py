"""Entry builders shared by the PartitionState tests: readable events and log entries."""

from __future__ import annotations

from array import array
from datetime import UTC, datetime
from typing import Any, NamedTuple

from unimeter import periods
from unimeter.model import MetricSchema, OperationType
from unimeter.state.entries import BatchEntry, BatchPart, LiveMetric, SchemaEntry
from unimeter.state.hashing import batch_id_keys
from unimeter.state.partition_state import ApplyResult, PartitionState
from unimeter.wire.messages import EventBatch

H = 6 * 3600 * 1_000_000  # the grid most generated times sit on
DAY = periods.US_PER_DAY
T0 = periods.to_us(datetime(2024, 1, 27, tzinfo=UTC))
ADD, REMOVE, NONE = int(OperationType.ADD), int(OperationType.REMOVE), int(OperationType.NONE)


class E(NamedTuple):
    metric: str
    account: int
    value: int
    ts: int
    op: int = 0
    props: dict[str, str] | None = None
    event_id: str | None = None


def live(code: str, generation: int = 1, **kwargs: Any) -> LiveMetric:
    return LiveMetric(generation=generation, schema=MetricSchema(code=code, **kwargs).normalized())


def schema_entry(version: int, *metrics: LiveMetric) -> SchemaEntry:
    return SchemaEntry(
        catalog_version=version, metrics=tuple(sorted(metrics, key=lambda m: m.schema.code))
    )


def batch_entry(
    stamp: int,
    events: list[E],
    producer: tuple[int, int] = (0, 0),
    duplicates: int = 0,
    leader_stamped: bool = False,
) -> BatchEntry:
    """One part of ``events``; ``leader_stamped``: the batch carries no timestamps, so every
    event takes the entry's ``stamp`` (the events' own ``ts`` must be that stamp)."""
    assert not leader_stamped or all(e.ts == stamp for e in events)
    codes = tuple(sorted({e.metric for e in events}))
    batch = EventBatch(
        metric_codes=codes,
        metric_index=array("B", [codes.index(e.metric) for e in events]),
        account_ids=array("Q", [e.account for e in events]),
        values=array("q", [e.value for e in events]),
        timestamps=None if leader_stamped else array("q", [e.ts for e in events]),
        operation_types=array("B", [e.op for e in events]) if any(e.op for e in events) else None,
        properties=tuple(e.props for e in events) if any(e.props for e in events) else None,
        event_ids=tuple(e.event_id for e in events) if any(e.event_id for e in events) else None,
    )
    part = BatchPart(
        producer_id=producer[0],
        seq=producer[1],
        batch=batch,
        dropped=None,
        n_duplicates=duplicates,
        rejected=(),
        id_hashes=batch_id_keys(batch),
    )
    return BatchEntry(stamp_us=stamp, parts=(part,))


class Partition:
    """A PartitionState with a log cursor, for readable examples."""

    def __init__(self, *metrics: LiveMetric, retention_days: int = 400, window: int = 35) -> None:
        self.state = PartitionState(2, retention_days=retention_days, dedup_window_days=window)
        self.index = 0
        self.version = 0
        if metrics:
            self.schema(*metrics)

    def schema(self, *metrics: LiveMetric) -> None:
        self.version += 1
        self.index += 1
        self.state.apply(self.index, schema_entry(self.version, *metrics))

    def ingest(
        self, *events: E, stamp: int = T0 + 40 * DAY, producer: tuple[int, int] = (0, 0)
    ) -> ApplyResult:
        self.index += 1
        return self.state.apply(self.index, batch_entry(stamp, list(events), producer))


def ev(metric: str, value: int = 1, at: int = 0, **kwargs: Any) -> E:
    """An event for account 1 at T0 + at microseconds."""
    return E(metric, kwargs.pop("account", 1), value, T0 + at, **kwargs)


FAR = (T0 - 400 * DAY, T0 + 400 * DAY)  # a range that covers every example's periods
