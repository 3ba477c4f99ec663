"""Measurements that drive ``PartitionState`` directly, each in a fresh spawned process.

Entries are built as the partition leader builds them (``bench/entries.py``: encoded, decoded,
judged by the leader's admission, the id keys hashed once), and the cycle collector is set as
the node sets it (``unimeter.node_cli.tune_gc``).

- Apply rate: ``PartitionState.apply`` alone, in CPU time, on a warm state (every account and
  aggregate row of the workload exists already, the event store and the id index hold as many
  events as are measured), over fresh batches of 500 events. Two layouts of the same batches:
  one part per entry (the batch-500 workload as one request per entry) and eight parts per
  entry (what a partition that drains eight requests in one loop iteration logs). Plain and
  realistic workloads; best of ``APPLY_ROUNDS`` rounds, each layout once per round.
- Server-side query latency: a ``PartitionState`` holding the query scenario's workload (all
  10,000 accounts in one partition, the same events per cell); each read is timed twice: the
  read alone, and the whole server path of one request in this process, the path the node
  takes for it. The connection actor's read fast path (``ConnectionCore._fast``): the frame fed
  to a ``ServerCodec``, ``next_item``, the direct decoder (``wire/fast.py``), the partition
  core's wire-level read (``PartitionCore.read_period_body`` / ``read_realtime_body``, on a
  ready leader) and ``encode_ok``; for a read that path leaves (a range that cuts periods), what
  the node does next: the generic decoder (``request_of``), ``PartitionState.query``,
  ``AggReply`` and ``encode_response``. Not timed: the connection actor's checks of the
  principal and the route, its request statistics, the partition actor's dispatch of a general
  read, and the event loop.
- Memory, by ``tracemalloc`` (which sees numpy's buffers; not pyroaring's, whose C library
  allocates with ``malloc``: the node RSS rows of ``recovery`` count those), after
  ``gc.collect``: per active cell, a state gaining N (account, metric) cells with one plain
  event each; per stored event, a warm state (every cell exists) gaining N more events, plain
  and realistic. The floor is the same count of entries in a plain ``dict[int, int]``.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from typing import Any

from bench import entries, procs, settings, workload
from bench.report import Figure, Results
from bench.settings import Settings
from bench.stats import summary
from unimeter.actors.partition import PartitionCore
from unimeter.consensus.config import Role
from unimeter.state.partition_state import PartitionState
from unimeter.wire import fast
from unimeter.wire import messages as m
from unimeter.wire.codec import ServerCodec

# Issue 11: a read of a whole period, server side, within 20 us (p50). The range-cutting read
# has its own bar (bench/rangeread.py).
TARGET_QUERY_SERVER_P50_US = {"month": 20.0, "month_filtered": 20.0, "realtime": 20.0}
# Issue 10's bars for apply alone (CPU time) and memory.
TARGET_APPLY = {workload.PLAIN: 5_000_000.0, workload.REALISTIC: 2_000_000.0}
TARGET_BYTES_PER_CELL = 150.0
TARGET_BYTES_PER_EVENT = 40.0
APPLY_ROUNDS = 2
APPLY_LAYOUTS = (1, 8)  # parts per entry
APPLY_WARMUP_EVENTS_MIN = 200_000


# --------------------------------------------------------------------------- apply


def apply_rate(workload_name: str, frames: int) -> dict[str, Any]:
    """CPU-time rate of ``PartitionState.apply`` alone over ``frames`` fresh batches of 500
    events per layout and round, on a state warmed up with as many events first."""
    rng = random.Random(51)
    now_us = time.time_ns() // 1000
    state = entries.new_state(workload_name)
    warmup = max(frames * 500, APPLY_WARMUP_EVENTS_MIN)
    seq = entries.fill(state, workload_name, rng, events=warmup, now_us=now_us)
    stamp = now_us + seq
    rates: dict[int, list[float]] = {n: [] for n in APPLY_LAYOUTS}
    for _ in range(APPLY_ROUNDS):
        for per_entry in APPLY_LAYOUTS:
            raw = entries.random_batches(workload_name, rng, settings.ACCOUNTS, 500, frames, now_us)
            parts = entries.admitted(state, entries.received(raw, first_seq=seq), now_us)
            seq += frames
            batch_entries = entries.grouped(parts, per_entry, stamp)
            stamp += len(batch_entries)
            del raw, parts
            entries.node_gc()
            t0 = time.process_time()
            stored = entries.apply_entries(state, batch_entries)
            took = time.process_time() - t0
            rates[per_entry].append(stored / took)
    return {
        "workload": workload_name,
        "warmup_events": warmup,
        "events_per_round": frames * 500,
        "accounts": settings.ACCOUNTS,
        "events_per_s": {str(n): max(r) for n, r in rates.items()},
        "events_per_s_rounds": {str(n): r for n, r in rates.items()},
    }


def apply_figures(res: Results, s: Settings) -> None:
    for name in workload.WORKLOADS:
        out = procs.call_in_process(apply_rate, name, s.apply_frames, timeout_s=900)
        res.detail(f"component.apply.{name}", out)
        for per_entry in APPLY_LAYOUTS:
            rate = out["events_per_s"][str(per_entry)]
            layout = "1 part of 500 per entry" if per_entry == 1 else f"{per_entry} parts of 500"
            res.add(
                Figure(
                    key=f"component.apply.{name}.x{per_entry}",
                    label=f"component: PartitionState.apply alone, {name}, {layout} "
                    "(CPU time, warm state)",
                    value=rate,
                    unit="ev/s",
                    limit_key="limit.python.sum_loop",
                    target=TARGET_APPLY[name],
                    note=f"{1e6 / rate:.3f} us of CPU per event; best of {APPLY_ROUNDS} rounds "
                    f"of {out['events_per_round']:,} events after {out['warmup_events']:,}",
                )
            )


# --------------------------------------------------------------------------- server queries


class _ReadyLeader:
    """What ``PartitionCore.read_period_body`` and ``read_realtime_body`` read of their core: a
    leader, ready, whose state is ``state`` (every write and catalog version the reads ask for
    is applied). A whole ``PartitionCore`` needs a Raft log; these two read nothing else."""

    role = Role.LEADER

    def __init__(self, state: PartitionState) -> None:
        self.state = state
        self.raft = self  # .raft.leader_ready
        self.leader_ready = True


FAST = "fast"
GENERAL = "general"


def server_queries(preload_events: int, samples: int) -> dict[str, Any]:
    rng = random.Random(21)
    now_us = time.time_ns() // 1000
    state = entries.new_state(workload.PLAIN, with_region=True)
    stamp = now_us - 60_000_000
    batches = [
        workload.event_batch(raw)
        for raw in workload.random_batches(
            rng, [list(range(1, settings.ACCOUNTS + 1))], 500, preload_events // 500,
            with_region=True,
        )
    ]  # fmt: skip
    parts = entries.admitted(state, entries.received(batches), stamp)
    entries.apply_entries(state, entries.grouped(parts, 8, stamp))
    del batches, parts
    out: dict[str, Any] = {}
    codec = ServerCodec()
    leader: Any = _ReadyLeader(state)
    read_period = PartitionCore.read_period_body
    read_realtime = PartitionCore.read_realtime_body
    clock = time.perf_counter_ns
    entries.node_gc()
    for kind in workload.QUERY_KINDS:
        frames, _ = workload.encode_queries(
            kind, rng=rng, accounts=settings.ACCOUNTS, partitions=1, now_us=now_us, count=samples
        )
        read_us: list[float] = []
        path_us: list[float] = []
        paths = {FAST: 0, GENERAL: 0}
        for frame in frames:
            # As ConnectionCore.process and ._fast take a request, then (if the fast path
            # leaves it) ._general and the partition's read.
            t0 = clock()
            codec.feed(frame)
            item = codec.next_item()
            raw_kind, rid, body = item
            body_out: dict[str, Any] | None = None
            if raw_kind == fast.KIND_QUERY:
                q = fast.query(body)
                t1 = clock()
                if q is not None:
                    _, account, code, start, end, min_index, catalog, filters = q
                    body_out = read_period(leader, account, code, start, end, min_index,
                                           catalog, filters)  # fmt: skip
            else:
                r = fast.query_realtime(body)
                t1 = clock()
                if r is not None:
                    _, account, code, catalog = r
                    body_out = read_realtime(leader, account, code, catalog, now_us)
            if body_out is not None:
                t2 = clock()
                codec.encode_ok(rid, body_out)
                paths[FAST] += 1
            else:
                request = codec.request_of(item)
                assert isinstance(request, m.RequestFrame)
                t1 = clock()
                reply = read(state, request.message, now_us)
                t2 = clock()
                codec.encode_response(request.request_id, 0, reply)
                paths[GENERAL] += 1
            t3 = clock()
            read_us.append((t2 - t1) / 1000)
            path_us.append((t3 - t0) / 1000)
        out[kind] = {"read_us": summary(read_us), "server_path_us": summary(path_us),
                     "paths": paths}  # fmt: skip
    return out


def read(state: PartitionState, msg: object, now_us: int) -> m.AggReply:
    """What the partition answers to a Query or a QueryRealtime on the general path."""
    if isinstance(msg, m.QueryRealtime):
        value, start, end = state.query_realtime(msg.metric_code, msg.account_id, now_us)
        return m.AggReply(value=value, period_start_us=start, period_end_us=end)
    assert isinstance(msg, m.Query)
    value = state.query(msg.metric_code, msg.account_id, msg.start_us, msg.end_us, msg.filters)
    return m.AggReply(value=value, period_start_us=msg.start_us, period_end_us=msg.end_us)


_PATH_LABELS = {
    FAST: ("read fast path: codec, direct decode, wire-level read, encode_ok",
           "the wire-level read alone"),
    GENERAL: ("general path: codec, generic decode, PartitionState.query, encode_response",
              "PartitionState.query alone"),
}  # fmt: skip


def server_query_figures(res: Results, s: Settings) -> None:
    out = procs.call_in_process(
        server_queries, s.query_preload_events, s.server_query_samples, timeout_s=600
    )
    res.detail("query.server", out)
    for kind, data in out.items():
        paths = data["paths"]
        taken = FAST if paths[FAST] >= paths[GENERAL] else GENERAL
        label, alone = _PATH_LABELS[taken]
        notes = {p: f"{alone} {data['read_us'][p]:.1f} us" for p in ("p50", "p99")}
        if paths[FAST] and paths[GENERAL]:  # not one path throughout: say how it was split
            notes["p50"] += f"; {paths[FAST]} fast, {paths[GENERAL]} general"
        res.add_latency(
            f"query.server.{kind}",
            f"server-side query ({kind}), {label}",
            data["server_path_us"],
            limit_key="limit.codec.query",
            target_p50=TARGET_QUERY_SERVER_P50_US.get(kind),
            notes=notes,
        )


# --------------------------------------------------------------------------- memory


def _traced(build: Any) -> tuple[float, Any]:
    """(bytes ``build()`` left allocated after ``gc.collect``, what it returned)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


def _cells_bytes(cells: int) -> float:
    """Per cell, a state gaining ``cells`` (account, metric) cells of one plain event each."""
    rng = random.Random(31)
    accounts = [list(range(1, cells // len(settings.METRIC_CODES) + 1))]
    stamp = time.time_ns() // 1000 - 3_600_000_000

    def build() -> PartitionState:
        state = entries.new_state(workload.PLAIN)
        batches = [workload.event_batch(r) for r in workload.covering_batches(rng, accounts, 500)]
        parts = entries.admitted(state, entries.received(batches), stamp)
        del batches
        entries.apply_entries(state, entries.grouped(parts, 8, stamp))
        return state

    took, state = _traced(build)
    del state
    return took / cells


def _event_bytes(workload_name: str, events: int) -> float:
    """Per stored event, a warm state (every account's rows exist) gaining ``events`` more.
    The new batches are built and admitted before tracing starts; only the state is traced."""
    rng = random.Random(61)
    now_us = time.time_ns() // 1000
    state = entries.new_state(workload_name)
    warmup = max(events, APPLY_WARMUP_EVENTS_MIN)
    seq = entries.fill(state, workload_name, rng, events=warmup, now_us=now_us)
    raw = entries.random_batches(workload_name, rng, settings.ACCOUNTS, 500, events // 500, now_us)
    parts = entries.admitted(state, entries.received(raw, first_seq=seq), now_us)
    batch_entries = entries.grouped(parts, 8, now_us + seq)
    del raw, parts
    took, stored = _traced(lambda: entries.apply_entries(state, batch_entries))
    return float(took / stored)


def _dict_floor_bytes(cells: int) -> float:
    rng = random.Random(41)

    def build() -> dict[int, int]:
        table: dict[int, int] = {}
        for key in range(cells):
            table[key * 8 + 3] = rng.randint(1_000, 2**40)
        return table

    took, table = _traced(build)
    del table
    return took / cells


def memory(cells: int, events: int) -> dict[str, float]:
    return {
        "cells": cells,
        "bytes_per_cell_1_event": _cells_bytes(cells),
        "events": events,
        "bytes_per_stored_event_plain": _event_bytes(workload.PLAIN, events),
        "bytes_per_stored_event_realistic": _event_bytes(workload.REALISTIC, events),
        "dict_floor_bytes_per_cell": _dict_floor_bytes(cells),
    }


def memory_figures(res: Results, s: Settings) -> None:
    out = procs.call_in_process(memory, s.memory_cells, s.memory_events, timeout_s=1800)
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
    for name in workload.WORKLOADS:
        res.add(
            Figure(
                key=f"memory.event.{name}",
                label=f"memory per stored event, {name}, warm state (tracemalloc, "
                f"{out['events']:,} events)",
                value=out[f"bytes_per_stored_event_{name}"],
                unit="B/event",
                target=TARGET_BYTES_PER_EVENT if name == workload.PLAIN else None,
                lower_is_better=True,
            )
        )
