"""The benchmark workloads and their pre-encoded frames.

Accounts are the ids ``1..accounts``. Two workloads:

- *plain*: the five SUM metrics of ``settings`` (CALENDAR periods, so "current month" is one
  whole period and a 30-day range has edges that must be computed from stored events), values
  uniform in 1..1000, no timestamps (the leader stamps), no properties, no event ids;
- *realistic*: what a billing producer sends. Every event has a 36-byte UUID event id, a
  producer timestamp within the last hour and two properties (``region`` of 3 values,
  ``endpoint`` of 4); nine events in ten go, half and half, to a COUNT metric that declares
  both properties as dimensions and to a SUM metric, and one in ten is an ADD of a seat (a user
  id) to a COUNT_UNIQUE metric. Built with numpy, a batch at a time.

Ingest frames are encoded once, before the clock starts,
with ``ClientCodec.encode_request``; every frame has its own request id and its own
``(producer_id, seq)``, so the node never takes one for a retry and the load generator sends
them unchanged. An Ingest belongs to one partition, so each frame's accounts are drawn only
from the accounts that route to its partition (``unimeter.routing.partition_of``).
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bench import settings as st
from bench.settings import METRIC_CODES, REGION_KEY, REGIONS, VALUE_MAX
from unimeter import periods
from unimeter.model import AggType, DimensionFilter, MetricSchema, OperationType, PeriodType
from unimeter.routing import partition_of
from unimeter.wire import messages as m
from unimeter.wire.batch import EventBatch, PropertyColumn
from unimeter.wire.codec import ClientCodec

US_PER_DAY = 86_400_000_000
PLAIN = "plain"
REALISTIC = "realistic"
WORKLOADS = (PLAIN, REALISTIC)
# The realistic metrics, sorted by code: a batch's metric index points into this table.
REAL_CODES = (st.REAL_SUM_CODE, st.REAL_COUNT_CODE, st.REAL_SEATS_CODE)
assert tuple(sorted(REAL_CODES)) == REAL_CODES
_SUM, _COUNT, _SEATS = range(3)

Array = npt.NDArray[Any]


def metric_schemas(*, with_region: bool = False, workload: str = PLAIN) -> list[MetricSchema]:
    """The metrics a workload needs, sorted by code (``with_region``: the plain metrics
    declare the query scenario's ``region`` dimension)."""
    if workload == REALISTIC:
        return realistic_schemas()
    assert workload == PLAIN, workload
    dims = (DimensionFilter(key=REGION_KEY, values=REGIONS),) if with_region else ()
    return [
        MetricSchema(code=code, agg_type=AggType.SUM, period_type=PeriodType.CALENDAR, filters=dims)
        for code in METRIC_CODES
    ]


def realistic_schemas() -> list[MetricSchema]:
    calendar = PeriodType.CALENDAR
    dims = (
        DimensionFilter(key=st.REAL_ENDPOINT_KEY, values=st.REAL_ENDPOINTS),
        DimensionFilter(key=st.REAL_REGION_KEY, values=st.REAL_REGIONS),
    )
    return [
        MetricSchema(code=st.REAL_SUM_CODE, agg_type=AggType.SUM, period_type=calendar),
        MetricSchema(
            code=st.REAL_COUNT_CODE, agg_type=AggType.COUNT, period_type=calendar, filters=dims
        ),
        MetricSchema(code=st.REAL_SEATS_CODE, agg_type=AggType.COUNT_UNIQUE, period_type=calendar),
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


def event_batch(raw: RawBatch, timestamps: array[int] | None = None) -> EventBatch:
    """The columnar batch, with a code table of only the metrics it uses (as the client does)."""
    used = sorted(set(raw.metrics))
    slot = {mi: i for i, mi in enumerate(used)}
    props = None
    if raw.regions is not None:
        props = tuple({REGION_KEY: region} for region in raw.regions)
    return EventBatch(
        metric_codes=tuple(METRIC_CODES[mi] for mi in used),
        metric_index=array("B", [slot[mi] for mi in raw.metrics]),
        account_ids=array("Q", raw.accounts),
        values=array("q", raw.values),
        timestamps=timestamps,
        properties=props,
    )


def plain_pairs(raws: Iterable[RawBatch]) -> Iterator[tuple[int, EventBatch]]:
    """(partition, batch) of each plain batch, as ``encode_ingest`` takes them."""
    for raw in raws:
        yield raw.partition, event_batch(raw)


# --------------------------------------------------------------------------- realistic

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_HEX_AT = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def uuid_ids(gen: np.random.Generator, n: int) -> tuple[bytes, Array]:
    """``n`` random version-4 UUIDs as text (36 bytes each), packed as the batch carries ids:
    one byte string and ``n + 1`` uint32 offsets."""
    raw = gen.integers(0, 256, (n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    nibbles = np.empty((n, 32), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 0x0F
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    text[:, _UUID_HEX_AT] = _HEX[nibbles]
    return text.tobytes(), np.arange(0, 36 * n + 1, 36, dtype=np.uint32)


def realistic_batch(gen: np.random.Generator, accounts: Array, n: int, now_us: int) -> EventBatch:
    """``n`` realistic events of ``accounts`` (uint64), timestamps within the hour before
    ``now_us``; the code table lists only the metrics the batch uses, as the client's does."""
    seat = np.zeros(n, dtype=bool)
    seats = n // st.REAL_SEAT_EVERY + (gen.random() < (n % st.REAL_SEAT_EVERY) / st.REAL_SEAT_EVERY)
    seat[gen.permutation(n)[:seats]] = True
    metric = np.where(seat, _SEATS, gen.integers(_SUM, _COUNT + 1, n))
    values = np.where(
        seat,
        gen.integers(1, st.REAL_SEATS_PER_ACCOUNT + 1, n),
        np.where(metric == _SUM, gen.integers(1, VALUE_MAX + 1, n), 1),
    )
    used, index = np.unique(metric, return_inverse=True)
    ids, offsets = uuid_ids(gen, n)
    return EventBatch.from_columns(
        tuple(REAL_CODES[i] for i in used.tolist()),
        index.astype(np.uint8),
        gen.choice(accounts, n),
        values.astype(np.int64),
        (now_us - gen.integers(0, st.REAL_TIME_SPAN_US, n)).astype(np.int64),
        np.where(seat, int(OperationType.ADD), 0).astype(np.uint8),
        (
            PropertyColumn(
                st.REAL_ENDPOINT_KEY,
                st.REAL_ENDPOINTS,
                gen.integers(1, len(st.REAL_ENDPOINTS) + 1, n).astype(np.uint8),
            ),
            PropertyColumn(
                st.REAL_REGION_KEY,
                st.REAL_REGIONS,
                gen.integers(1, len(st.REAL_REGIONS) + 1, n).astype(np.uint8),
            ),
        ),
        ids,
        offsets,
    )


def realistic_batches(
    rng: random.Random,
    by_partition: Sequence[Sequence[int]],
    batch: int,
    count: int,
    now_us: int,
) -> Iterator[tuple[int, EventBatch]]:
    """``count`` (partition, batch) pairs of realistic events, round-robin over the partitions
    that have accounts; the event ids are random, so distinct across runs and workers."""
    gen = np.random.default_rng(rng.getrandbits(64))
    columns = [np.array(accounts, dtype=np.uint64) for accounts in by_partition]
    parts = [p for p, accounts in enumerate(by_partition) if accounts]
    for i in range(count):
        p = parts[i % len(parts)]
        yield p, realistic_batch(gen, columns[p], batch, now_us)


def plain_batch(
    gen: np.random.Generator, accounts: Array, n: int, *, with_region: bool = False
) -> EventBatch:
    """``n`` plain events of ``accounts`` (uint64), drawn as ``random_batches`` draws them but
    a column at a time (a pool of millions of events builds in a second or two)."""
    metric = gen.integers(0, len(METRIC_CODES), n)
    used, index = np.unique(metric, return_inverse=True)
    regions: tuple[PropertyColumn, ...] = ()
    if with_region:
        region = gen.integers(1, len(REGIONS) + 1, n).astype(np.uint8)
        regions = (PropertyColumn(REGION_KEY, REGIONS, region),)
    return EventBatch.from_columns(
        tuple(METRIC_CODES[i] for i in used.tolist()),
        index.astype(np.uint8),
        gen.choice(accounts, n),
        gen.integers(1, VALUE_MAX + 1, n).astype(np.int64),
        property_columns=regions,
    )


def batches_of(
    workload: str,
    rng: random.Random,
    by_partition: Sequence[Sequence[int]],
    batch: int,
    count: int,
    *,
    now_us: int,
    with_region: bool = False,
) -> list[tuple[int, EventBatch]]:
    """``count`` random (partition, batch) pairs of ``workload``, round-robin over the
    partitions that have accounts."""
    if workload == REALISTIC:
        return list(realistic_batches(rng, by_partition, batch, count, now_us))
    assert workload == PLAIN, workload
    gen = np.random.default_rng(rng.getrandbits(64))
    columns = [np.array(accounts, dtype=np.uint64) for accounts in by_partition]
    parts = [p for p, accounts in enumerate(by_partition) if accounts]
    return [
        (p, plain_batch(gen, columns[p], batch, with_region=with_region))
        for p in (parts[i % len(parts)] for i in range(count))
    ]


# --------------------------------------------------------------------------- encoding


def encode_ingest(
    batches: Iterable[tuple[int, EventBatch]],
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
    for i, (partition, batch) in enumerate(batches):
        seqs[partition] += 1
        request_id = first_request_id + i
        message = m.Ingest(
            partition=partition,
            producer_id=producer_id,
            seq=seqs[partition],
            sync=sync,
            catalog_version=catalog_version,
            batch=batch,
        )
        frames.append(codec.encode_request(request_id, message))
        ids.append(request_id)
        events += len(batch)
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
