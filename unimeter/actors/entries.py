"""The records of a partition's log: the only inputs of the partition's applied state.

Everything that changes a partition's applied state is an entry in its log, so every replica,
and every replay after a restart, reaches the same state from the same log:
- ``SchemaEntry``: the partition's copy of the metric catalog from this point of the log on.
  Dimensions, thresholds and deletions therefore apply "from then on" deterministically.
- ``BatchEntry``: events accepted by the partition leader, already validated, deduplicated and
  timestamped, together with the producer sequence number and the result the producer was (or
  will be) told, so that a retry of the same ``(producer_id, seq)`` gets the same answer even
  after a restart or a leader change.
"""

from __future__ import annotations

from dataclasses import dataclass

from unimeter.model import MetricSchema
from unimeter.wire.messages import EventBatch


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


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchEntry:
    producer_id: int  # 0 when the request carried no producer id
    seq: int
    stamp_us: int  # the leader's clock at proposal; drives dedup-window and retention expiry
    batch: EventBatch  # accepted events only, every timestamp filled in
    n_duplicates: int
    n_rejected: int
    rejected: tuple[tuple[int, str], ...]


Entry = SchemaEntry | BatchEntry
