"""The benchmark workload and its pre-encoded frames.

Accounts are the ids ``1..accounts``; metrics are the five SUM metrics of ``settings``
(CALENDAR periods, so "current month" is one whole period and a 30-day range has edges that
must be computed from stored events). Ingest frames are encoded once, before the clock starts,
with ``ClientCodec.encode_request``; every frame has its own request id and its own
``(producer_id, seq)``, so the node never takes one for a retry and the load generator sends
them unchanged. An Ingest belongs to one partition, so each frame's accounts are drawn only
from the accounts that route to its partition (``unimeter.routing.partition_of``).
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bench.settings import METRIC_CODES, REGION_KEY, REGIONS, VALUE_MAX
from unimeter import periods
from unimeter.model import AggType, DimensionFilter, MetricSchema, PeriodType
from unimeter.routing import partition_of
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec

US_PER_DAY = 86_400_000_000


def metric_schemas(*, with_region: bool = False) -> list[MetricSchema]:
    dims = (DimensionFilter(key=REGION_KEY, values=REGIONS),) if with_region else ()
    return [
        MetricSchema(code=code, agg_type=AggType.SUM, period_type=PeriodType.CALENDAR, filters=dims)
        for code in METRIC_CODES
    ]


def accounts_by_partition(accounts: int, partitions: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(partitions)]
    for account in range(1, accounts + 1):
        out[partition_of(account, partitions)].append(account)
    return out


@dataclass(frozen=True, slots=True)
class RawBatch:
    """One Ingest's worth of events for one partition, before encoding."""

    partition: int
    accounts: list[int]
    metrics: list[int]  # index into METRIC_CODES
    values: list[int]
    regions: list[str] | None = None


def random_batches(
    rng: random.Random,
    by_partition: Sequence[Sequence[int]],
    batch: int,
    count: int,
    *,
    with_region: bool = False,
) -> Iterator[RawBatch]:
    """``count`` batches of random events, round-robin over the partitions that have accounts."""
    parts = [p for p, accounts in enumerate(by_partition) if accounts]
    value_range = range(1, VALUE_MAX + 1)
    metric_range = range(len(METRIC_CODES))
    for i in range(count):
        p = parts[i % len(parts)]
        yield RawBatch(
            partition=p,
            accounts=rng.choices(by_partition[p], k=batch),
            metrics=rng.choices(metric_range, k=batch),
            values=rng.choices(value_range, k=batch),
            regions=rng.choices(REGIONS, k=batch) if with_region else None,
        )


def covering_batches(
    rng: random.Random, by_partition: Sequence[Sequence[int]], batch: int
) -> Iterator[RawBatch]:
    """Every (account, metric) pair exactly once, shuffled within its partition: the batches
    that make ``accounts * metrics`` active cells with one event each."""
    value_range = range(1, VALUE_MAX + 1)
    for p, accounts in enumerate(by_partition):
        pairs = [(a, mi) for a in accounts for mi in range(len(METRIC_CODES))]
        rng.shuffle(pairs)
        for start in range(0, len(pairs), batch):
            chunk = pairs[start : start + batch]
            yield RawBatch(
                partition=p,
                accounts=[a for a, _ in chunk],
                metrics=[mi for _, mi in chunk],
                values=rng.choices(value_range, k=len(chunk)),
            )


def event_batch(raw: RawBatch, timestamps: array[int] | None = None) -> m.EventBatch:
    """The columnar batch, with a code table of only the metrics it uses (as the client does)."""
    used = sorted(set(raw.metrics))
    slot = {mi: i for i, mi in enumerate(used)}
    props = None
    if raw.regions is not None:
        props = tuple({REGION_KEY: region} for region in raw.regions)
    return m.EventBatch(
        metric_codes=tuple(METRIC_CODES[mi] for mi in used),
        metric_index=array("B", [slot[mi] for mi in raw.metrics]),
        account_ids=array("Q", raw.accounts),
        values=array("q", raw.values),
        timestamps=timestamps,
        properties=props,
    )


def encode_ingest(
    batches: Iterator[RawBatch],
    *,
    partitions: int,
    producer_id: int,
    sync: bool,
    catalog_version: int,
    first_request_id: int = 1,
) -> tuple[list[bytes], list[int], int]:
    """Pre-encoded Ingest frames, their request ids and the number of events they carry.

    Sequence numbers count up per partition from 1, so with a non-zero ``producer_id`` every
    frame is a distinct producer batch (``producer_id`` 0 would turn producer dedup off).
    """
    codec = ClientCodec()
    seqs = [0] * partitions
    frames: list[bytes] = []
    ids: list[int] = []
    events = 0
    for i, raw in enumerate(batches):
        seqs[raw.partition] += 1
        request_id = first_request_id + i
        message = m.Ingest(
            partition=raw.partition,
            producer_id=producer_id,
            seq=seqs[raw.partition],
            sync=sync,
            catalog_version=catalog_version,
            batch=event_batch(raw),
        )
        frames.append(codec.encode_request(request_id, message))
        ids.append(request_id)
        events += len(raw.accounts)
    return frames, ids, events


# --------------------------------------------------------------------------- queries

QUERY_KINDS = ("month", "month_filtered", "realtime", "range30d")


def query_message(
    kind: str, account: int, metric: str, partitions: int, now_us: int
) -> m.Query | m.QueryRealtime:
    """One read of ``kind``; ``now_us`` anchors the current month and the 30-day range."""
    partition = partition_of(account, partitions)
    if kind == "realtime":
        return m.QueryRealtime(partition=partition, account_id=account, metric_code=metric)
    if kind == "range30d":
        # Ends at ``now_us`` (after every preloaded event), starts 30 days earlier: both the
        # current month and the one before are cut, so the answer needs stored events.
        return m.Query(
            partition=partition,
            account_id=account,
            metric_code=metric,
            start_us=now_us - 30 * US_PER_DAY,
            end_us=now_us,
        )
    start, end = periods.calendar_bounds(now_us, 1)
    filters = ((REGION_KEY, REGIONS[0]),) if kind == "month_filtered" else ()
    return m.Query(
        partition=partition,
        account_id=account,
        metric_code=metric,
        start_us=start,
        end_us=end,
        filters=filters,
    )


def encode_queries(
    kind: str, *, rng: random.Random, accounts: int, partitions: int, now_us: int, count: int
) -> tuple[list[bytes], list[int]]:
    """``count`` pre-encoded reads of ``kind`` over random accounts and metrics."""
    assert kind in QUERY_KINDS, kind
    codec = ClientCodec()
    frames: list[bytes] = []
    ids: list[int] = []
    for i in range(count):
        account = rng.randint(1, accounts)
        metric = rng.choice(METRIC_CODES)
        message = query_message(kind, account, metric, partitions, now_us)
        frames.append(codec.encode_request(i + 1, message))
        ids.append(i + 1)
    return frames, ids
