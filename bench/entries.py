"""Log entries built the way the partition leader builds them, for the in-process sections.

A batch goes the whole way a real one goes before it reaches the log: encoded by
``ClientCodec`` into an Ingest frame, decoded by ``ServerCodec`` (so its columns are the numpy
views over the received bytes that the node holds), judged by the leader's own admission
(``unimeter.actors.admission.admit``: the time window, unknown metrics, operation types, and
the event-id keys hashed once and checked against the state's id index), then put in a
``BatchEntry`` of one part or of several, as ``actors/partition.py`` groups the INGEST
requests a partition drains in one loop iteration. Plain batches carry no timestamps column:
the entry's stamp is every event's timestamp.

What is not reproduced: the leader also checks ids against entries proposed but not yet
applied. The benchmark's ids are random UUIDs, never repeated, so that check would find nothing
and the verdicts are the same.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Iterable, Iterator, Sequence

from bench import settings, workload
from unimeter import limits
from unimeter.actors.admission import admit
from unimeter.state.entries import BatchEntry, BatchPart, LiveMetric, SchemaEntry
from unimeter.state.partition_state import PartitionState
from unimeter.wire import messages as m
from unimeter.wire.batch import EventBatch
from unimeter.wire.codec import ClientCodec, ServerCodec

PRODUCER_ID = 0x5EED_0001  # non-zero: producer dedup runs, as for the load generator's frames
RETENTION_US = limits.retention_days_default * 86_400_000_000


def live_metrics(workload_name: str, *, with_region: bool = False) -> tuple[LiveMetric, ...]:
    schemas = workload.metric_schemas(with_region=with_region, workload=workload_name)
    return tuple(LiveMetric(generation=1, schema=s) for s in sorted(schemas, key=lambda x: x.code))


def new_state(workload_name: str, *, with_region: bool = False) -> PartitionState:
    """A partition's state holding the workload's metrics (log index 1: the schema entry)."""
    state = PartitionState(0)
    metrics = live_metrics(workload_name, with_region=with_region)
    state.apply(1, SchemaEntry(catalog_version=1, metrics=metrics))
    return state


def received(batches: Iterable[EventBatch], *, first_seq: int = 1) -> Iterator[m.Ingest]:
    """Each batch as the node receives it: encoded into an Ingest frame, then decoded."""
    client = ClientCodec()
    server = ServerCodec()
    for i, batch in enumerate(batches):
        message = m.Ingest(
            partition=0,
            producer_id=PRODUCER_ID,
            seq=first_seq + i,
            sync=False,
            catalog_version=1,
            batch=batch,
        )
        server.feed(client.encode_request(i + 1, message))
        frame = server.next_frame()
        assert isinstance(frame, m.RequestFrame) and isinstance(frame.message, m.Ingest)
        yield frame.message


def admitted(state: PartitionState, requests: Iterable[m.Ingest], now_us: int) -> list[BatchPart]:
    """The leader's verdict on each request, against ``state``'s id index."""
    metrics = {lm.schema.code: lm for lm in state.live_metrics()}
    return [admit(req, now_us, metrics, RETENTION_US, state.event_keys_seen) for req in requests]


def grouped(parts: Sequence[BatchPart], per_entry: int, stamp_us: int) -> list[BatchEntry]:
    """Entries of ``per_entry`` parts each, stamped one microsecond apart from ``stamp_us``
    (a leader's stamps only rise; callers keep them rising from one call to the next)."""
    return [
        BatchEntry(stamp_us=stamp_us + i, parts=tuple(parts[start : start + per_entry]))
        for i, start in enumerate(range(0, len(parts), per_entry))
    ]


def random_batches(
    workload_name: str, rng: random.Random, accounts: int, batch: int, count: int, now_us: int
) -> list[EventBatch]:
    """``count`` batches of ``batch`` random events of ``accounts`` accounts (one partition)."""
    by_partition = [list(range(1, accounts + 1))]
    pairs = workload.batches_of(workload_name, rng, by_partition, batch, count, now_us=now_us)
    return [b for _, b in pairs]


def apply_entries(state: PartitionState, entries: Iterable[BatchEntry]) -> int:
    """Apply in log order; returns the events stored."""
    stored = 0
    for entry in entries:
        state.apply(state.applied_index + 1, entry)
        stored += entry.n_stored
    return stored


def fill(
    state: PartitionState,
    workload_name: str,
    rng: random.Random,
    *,
    events: int,
    now_us: int,
    per_entry: int = 8,
    first_seq: int = 1,
    accounts: int = settings.ACCOUNTS,
) -> int:
    """Admit and apply ``events`` random events (batches of 500, ``per_entry`` parts per
    entry), a chunk at a time; returns the next producer sequence number."""
    chunk = 200  # batches admitted before they are applied, so ids never meet pending ids
    batches = events // 500
    done = 0
    while done < batches:
        count = min(chunk, batches - done)
        raw = random_batches(workload_name, rng, accounts, 500, count, now_us)
        parts = admitted(state, received(raw, first_seq=first_seq), now_us)
        apply_entries(state, grouped(parts, per_entry, now_us + first_seq))
        first_seq += count
        done += count
    return first_seq


def node_gc() -> None:
    """Collect, then set the cycle collector as the node does once it has recovered
    (``unimeter.node_cli.tune_gc``: thresholds raised, the heap so far frozen)."""
    from unimeter.node_cli import tune_gc

    gc.collect()
    tune_gc(recovered=True)
