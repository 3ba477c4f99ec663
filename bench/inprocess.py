"""Measurements that drive ``PartitionState`` directly, each in a fresh spawned process.

- Apply rate: ``PartitionState.apply`` alone over the ingest workload, in CPU time: an upper
  bound for the node's ingest rate whatever the rest of it does.
- Server-side query latency: a ``PartitionState`` holding the query scenario's workload (all
  10,000 accounts in one partition, the same events per cell); each read is timed twice: the
  state call alone, and the whole server path of one request in this process (``ServerCodec``
  decode, the state call, ``AggReply``, ``encode_response``). Not timed: the connection and
  partition actors' dispatch and the event loop.
- Memory per active cell: ``tracemalloc`` over a ``PartitionState`` that gains N (account,
  metric) cells with one event each (then N/10 cells with ten events each, for the cost of an
  event), after ``gc.collect``. The floor is the same count of entries in a plain
  ``dict[int, int]`` (one key and one running sum per cell).
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from array import array
from collections.abc import Iterator
from typing import Any

from bench import procs, settings, workload
from bench.report import Figure, Results
from bench.settings import Settings
from bench.stats import summary
from unimeter.state.entries import BatchEntry, LiveMetric, SchemaEntry
from unimeter.state.partition_state import PartitionState
from unimeter.wire import messages as m
from unimeter.wire.codec import ServerCodec

TARGET_QUERY_SERVER_P50_US = 100.0
TARGET_ASYNC_B500 = 1_000_000.0  # the node cannot ingest faster than its state applies
TARGET_BYTES_PER_CELL = 300.0


def _state(with_region: bool) -> PartitionState:
    state = PartitionState(0)
    metrics = tuple(
        LiveMetric(generation=1, schema=schema)
        for schema in sorted(workload.metric_schemas(with_region=with_region), key=lambda x: x.code)
    )
    state.apply(1, SchemaEntry(catalog_version=1, metrics=metrics))
    return state


def _apply_all(state: PartitionState, batches: Iterator[workload.RawBatch], stamp: int) -> int:
    """Apply the batches as the leader would log them (every event stamped); returns events."""
    events = 0
    for raw in batches:
        n = len(raw.accounts)
        entry = BatchEntry(
            producer_id=0,
            seq=0,
            stamp_us=stamp,
            batch=workload.event_batch(raw, timestamps=array("q", [stamp]) * n),
            n_duplicates=0,
            n_rejected=0,
            rejected=(),
        )
        state.apply(state.applied_index + 1, entry)
        events += n
        stamp += 1
    return events


def server_queries(preload_events: int, samples: int) -> dict[str, Any]:
    rng = random.Random(21)
    state = _state(with_region=True)
    accounts = [list(range(1, settings.ACCOUNTS + 1))]
    stamp = time.time_ns() // 1000 - 60_000_000
    batches = workload.random_batches(rng, accounts, 500, preload_events // 500, with_region=True)
    _apply_all(state, batches, stamp)
    now_us = time.time_ns() // 1000
    out: dict[str, Any] = {}
    codec = ServerCodec()
    clock = time.perf_counter_ns
    gc.collect()
    for kind in workload.QUERY_KINDS:
        frames, _ = workload.encode_queries(
            kind, rng=rng, accounts=settings.ACCOUNTS, partitions=1, now_us=now_us, count=samples
        )
        state_us: list[float] = []
        path_us: list[float] = []
        for frame in frames:
            t0 = clock()
            codec.feed(frame)
            request = codec.next_frame()
            assert isinstance(request, m.RequestFrame)
            msg = request.message
            t1 = clock()
            reply = _read(state, msg, now_us)
            t2 = clock()
            codec.encode_response(request.request_id, 0, reply)
            t3 = clock()
            state_us.append((t2 - t1) / 1000)
            path_us.append((t3 - t0) / 1000)
        out[kind] = {"state_us": summary(state_us), "server_path_us": summary(path_us)}
    return out


def _read(state: PartitionState, msg: object, now_us: int) -> m.AggReply:
    if isinstance(msg, m.QueryRealtime):
        value, start, end = state.query_realtime(msg.metric_code, msg.account_id, now_us)
        return m.AggReply(value=value, period_start_us=start, period_end_us=end)
    assert isinstance(msg, m.Query)
    value = state.query(msg.metric_code, msg.account_id, msg.start_us, msg.end_us, msg.filters)
    return m.AggReply(value=value, period_start_us=msg.start_us, period_end_us=msg.end_us)


def apply_rate(frames: int) -> dict[str, float]:
    """CPU-time rate of ``PartitionState.apply`` alone over the ingest workload (batch 500,
    10,000 accounts, every event stamped as the leader logs it)."""
    rng = random.Random(51)
    state = _state(with_region=False)
    accounts = [list(range(1, settings.ACCOUNTS + 1))]
    stamp = time.time_ns() // 1000
    entries = [
        BatchEntry(
            producer_id=1,
            seq=i + 1,
            stamp_us=stamp,
            batch=workload.event_batch(raw, timestamps=array("q", [stamp]) * 500),
            n_duplicates=0,
            n_rejected=0,
            rejected=(),
        )
        for i, raw in enumerate(workload.random_batches(rng, accounts, 500, frames))
    ]
    gc.collect()
    t0 = time.process_time()
    for entry in entries:
        state.apply(state.applied_index + 1, entry)
    took = time.process_time() - t0
    return {"events_per_s": frames * 500 / took, "us_per_event": took / (frames * 500) * 1e6}


def _cells_bytes(cells: int, events_per_cell: int) -> float:
    accounts = [list(range(1, cells // len(settings.METRIC_CODES) + 1))]
    rng = random.Random(31)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    state = _state(with_region=False)
    stamp = time.time_ns() // 1000 - 3_600_000_000
    for _ in range(events_per_cell):
        _apply_all(state, workload.covering_batches(rng, accounts, 500), stamp)
        stamp += 1_000_000
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del state
    return (after - before) / cells


def _dict_floor_bytes(cells: int) -> float:
    rng = random.Random(41)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table: dict[int, int] = {}
    for key in range(cells):
        table[key * 8 + 3] = rng.randint(1_000, 2**40)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / cells


def memory(cells: int) -> dict[str, float]:
    one = _cells_bytes(cells, 1)
    ten = _cells_bytes(cells // 10, 10)
    return {
        "cells": cells,
        "bytes_per_cell_1_event": one,
        "bytes_per_cell_10_events": ten,
        "bytes_per_extra_event": (ten - one) / 9,
        "dict_floor_bytes_per_cell": _dict_floor_bytes(cells),
    }


# --------------------------------------------------------------------------- figures


def server_query_figures(res: Results, s: Settings) -> None:
    out = procs.call_in_process(
        server_queries, s.query_preload_events, s.server_query_samples, timeout_s=600
    )
    res.detail("query.server", out)
    for kind, data in out.items():
        res.add_latency(
            f"query.server.{kind}",
            f"server-side query ({kind}): codec + PartitionState",
            data["server_path_us"],
            limit_key="limit.codec.query",
            target_p50=TARGET_QUERY_SERVER_P50_US,
            notes={p: f"PartitionState alone {data['state_us'][p]:.1f} us" for p in ("p50", "p99")},
        )


def apply_figures(res: Results, s: Settings) -> None:
    out = procs.call_in_process(apply_rate, s.pool_frames_b500, timeout_s=600)
    res.detail("component.apply", out)
    res.add(
        Figure(
            key="component.apply.b500",
            label="component: PartitionState.apply alone, batch 500 (CPU time)",
            value=out["events_per_s"],
            unit="ev/s",
            limit_key="limit.python.sum_loop",
            target=TARGET_ASYNC_B500,
            note=f"{out['us_per_event']:.2f} us of CPU per event",
        )
    )


def memory_figures(res: Results, s: Settings) -> None:
    out = procs.call_in_process(memory, s.memory_cells, timeout_s=1800)
    res.detail("memory.tracemalloc", out)
    res.add(
        Figure(
            key="limit.memory.dict_floor",
            label="limit: plain dict[int, int] entry (one key, one sum)",
            value=out["dict_floor_bytes_per_cell"],
            unit="B/cell",
            lower_is_better=True,
        )
    )
    res.add(
        Figure(
            key="memory.cell",
            label=f"memory per active cell, 1 event each (tracemalloc, {out['cells']:,} cells)",
            value=out["bytes_per_cell_1_event"],
            unit="B/cell",
            limit_key="limit.memory.dict_floor",
            target=TARGET_BYTES_PER_CELL,
            lower_is_better=True,
        )
    )
    res.add(
        Figure(
            key="memory.event",
            label="memory per further stored event in a cell (tracemalloc)",
            value=out["bytes_per_extra_event"],
            unit="B/event",
            lower_is_better=True,
        )
    )
