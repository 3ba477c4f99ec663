"""The records of a partition's log: the only inputs of the partition's applied state.

Everything that changes a partition's applied state is an entry in its log, so every replica,
and every replay after a restart, reaches the same state from the same log:
- ``SchemaEntry``: the partition's copy of the metric catalog from this point of the log on.
  Dimensions, thresholds and deletions therefore apply "from then on" deterministically.
- ``BatchEntry``: one or more INGEST requests the partition leader accepted in one loop
  iteration (``parts``), stamped with the leader's clock. Each part keeps the batch exactly as
  the client sent it, plus the leader's verdict: which events are not stored (rejected or
  duplicate, ``dropped``), the rejection reasons, and the 64-bit hashes of the stored events'
  ids, so no follower and no replay ever hashes an id again. The producer sequence number and
  the verdict make a retry of the same ``(producer_id, seq)`` get the same answer even after a
  restart or a leader change.
- ``WebhookMark``: how far the partition's alerts have been delivered to their webhooks
  (``unimeter/webhooks``), so a new leader, or a restarted node, goes on from there.

A stored event's timestamp is its own, or the entry's ``stamp_us`` when it came without one
(``NO_TIMESTAMP``). Stored events get consecutive offsets in part order, then batch order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from unimeter.model import MetricSchema
from unimeter.wire.batch import NO_TIMESTAMP, EventBatch

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveMetric:
    """A metric as the partition knows it. ``generation`` is the catalog version that created
    it: a metric deleted and created again under the same code is a different metric."""

    generation: int
    schema: MetricSchema


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaEntry:
    catalog_version: int
    metrics: tuple[LiveMetric, ...]  # every live metric, sorted by code


class LoggedEvent(NamedTuple):
    """One stored event of a part, spelled out (for tests, the simulator and tools)."""

    metric_code: str
    account_id: int
    value: int
    timestamp_us: int
    operation_type: int
    properties: dict[str, str] | None
    event_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class BatchPart:
    producer_id: int  # 0 when the request carried no producer id
    seq: int
    batch: EventBatch  # as the client sent it: stored, rejected and duplicate events alike
    dropped: Array | None  # uint32, sorted: positions in ``batch`` not stored; None: none
    n_duplicates: int
    rejected: tuple[tuple[int, str], ...]  # (position in batch, reason)
    id_hashes: Array | None  # uint64: one per stored event with an id, in batch order

    @property
    def n_stored(self) -> int:
        return len(self.batch) - (0 if self.dropped is None else len(self.dropped))

    @property
    def n_rejected(self) -> int:
        return len(self.rejected)

    def stored_mask(self) -> Array | None:
        """Boolean mask of the stored events, or None when every event is stored."""
        if self.dropped is None or not len(self.dropped):
            return None
        mask = np.ones(len(self.batch), dtype=bool)
        mask[self.dropped] = False
        return mask

    def stored_events(self, stamp_us: int) -> Iterator[LoggedEvent]:
        """The stored events one by one, timestamps filled in (a slow path)."""
        b = self.batch
        mask = self.stored_mask()
        codes = b.metric_codes
        index = b.metric_index.tolist()
        accounts = b.account_ids.tolist()
        values = b.values.tolist()
        stamps = b.timestamps.tolist() if b.timestamps is not None else None
        ops = b.operation_types.tolist() if b.operation_types is not None else None
        props = b.properties
        ids = b.event_ids
        for i in range(len(b)):
            if mask is not None and not mask[i]:
                continue
            ts = stamps[i] if stamps is not None else NO_TIMESTAMP
            yield LoggedEvent(
                codes[index[i]],
                accounts[i],
                values[i],
                stamp_us if ts == NO_TIMESTAMP else ts,
                ops[i] if ops is not None else 0,
                props[i] if props is not None else None,
                ids[i] if ids is not None else None,
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BatchPart):
            return NotImplemented
        return (
            self.producer_id == other.producer_id
            and self.seq == other.seq
            and self.batch == other.batch
            and _same(self.dropped, other.dropped)
            and self.n_duplicates == other.n_duplicates
            and self.rejected == other.rejected
            and _same(self.id_hashes, other.id_hashes)
        )


def _same(a: Array | None, b: Array | None) -> bool:
    a_empty = a is None or not len(a)
    b_empty = b is None or not len(b)
    if a_empty or b_empty:
        return a_empty and b_empty
    return bool(np.array_equal(a, b))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchEntry:
    stamp_us: int  # the leader's clock at proposal: stamps events, drives expiry
    parts: tuple[BatchPart, ...]

    @property
    def n_stored(self) -> int:
        return sum(part.n_stored for part in self.parts)

    def stored_events(self) -> Iterator[LoggedEvent]:
        for part in self.parts:
            yield from part.stored_events(self.stamp_us)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookMark:
    """Every alert with a cursor below ``next_cursor`` was delivered to its webhook (or had
    none). A leader logs one after deliveries succeed; a mark below the current one changes
    nothing."""

    next_cursor: int


Entry = SchemaEntry | BatchEntry | WebhookMark
