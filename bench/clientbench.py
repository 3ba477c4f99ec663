"""What the ``AsyncClient`` costs its users: ingest through the library against a real node
(each workload in its own process, uvloop), the same packing and encoding without I/O, and
query round trips through the library.

Four ingest workloads, each measured in events per second of the client process's CPU (user +
system), the unit the client's bars are set in:

- ``events.plain``: ``client.ingest`` of 500 ``Event``s (8 calls in flight), the benchmark's
  plain workload (10,000 accounts, 5 SUM metrics, no optional field). Bar: 1,000,000.
- ``events.realistic``: what a billing producer sends, the node rows' realistic workload: on
  every event an event id (a 36-byte UUID string), a producer timestamp within the last hour
  and two properties, ``region`` (3 values) and ``endpoint`` (4 values), which a COUNT metric
  declares as dimensions; a SUM metric beside it; one event in ten an ADD of a seat (a user id)
  to a COUNT_UNIQUE metric. Bar: 500,000.
- ``columns.plain`` and ``columns.realistic``: ``client.ingest_columns`` of the same workloads
  as numpy arrays (ids and property values as lists of str), 50,000 events a call, 2 calls in
  flight: a high-volume producer's flushes. Bar: 5,000,000.

The inputs are built before the clock starts and then frozen out of the garbage collector's
sight (``gc.freeze``): the figures are the library's cost, not the building of the benchmark's
inputs nor the collector walking them. Realistic inputs carry ids that are distinct within a
run (inputs for the run's duration at a generous rate are built), so the node stores them
rather than dropping them as duplicates.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from bench import procs, settings, workload
from bench.report import Figure, Results
from bench.settings import Settings
from bench.stats import summary
from unimeter import (
    AsyncClient,
    Event,
    IngestResult,
    OperationType,
    current_month,
)
from unimeter.client.arrays import pack_arrays
from unimeter.client.batching import split_packed
from unimeter.client.cluster_map import Partitioner
from unimeter.client.columns import pack_events
from unimeter.wire.codec import ClientCodec
from unimeter.wire.messages import Ingest

KINDS = ("events.plain", "events.realistic", "columns.plain", "columns.realistic")
BARS = {
    "events.plain": 1_000_000.0,
    "events.realistic": 500_000.0,
    "columns.plain": 5_000_000.0,
    "columns.realistic": 5_000_000.0,
}
LABELS = {
    "events.plain": "AsyncClient.ingest, 500 plain Events",
    "events.realistic": "AsyncClient.ingest, 500 realistic Events",
    "columns.plain": "AsyncClient.ingest_columns, 50,000 plain events",
    "columns.realistic": "AsyncClient.ingest_columns, 50,000 realistic events",
}
EVENTS_PER_CALL = {"events": 500, "columns": 50_000}
CALLS_IN_FLIGHT = {"events": 8, "columns": 2}
# Plain inputs are reused in turn (nothing deduplicates them). Realistic ones carry ids, so a
# run gets calls' worth for its duration at this rate (events/s; above what the node does on
# the benchmark machine): a faster node would cycle through them and send repeats, which the
# node counts as duplicates and the details show.
PLAIN_INPUTS = {"events": 16, "columns": 2}
REALISTIC_RATE_EV_S = 80_000

HOUR_US = settings.REAL_TIME_SPAN_US
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REAL_SUM, REAL_COUNT, REAL_SEATS = workload.REAL_CODES


# --------------------------------------------------------------------------- workloads


def plain_columns(rng: np.random.Generator, n: int) -> dict[str, Any]:
    codes = np.array(settings.METRIC_CODES)
    return {
        "account_ids": rng.integers(1, settings.ACCOUNTS + 1, n, dtype=np.uint64),
        "metric_codes": codes[rng.integers(0, len(codes), n)],
        "values": rng.integers(1, settings.VALUE_MAX + 1, n, dtype=np.int64),
    }


def realistic_columns(rng: np.random.Generator, n: int) -> dict[str, Any]:
    """The node rows' realistic workload (``bench/workload.py``), as columns."""
    seat = rng.random(n) < 1 / settings.REAL_SEAT_EVERY
    codes = np.where(seat, REAL_SEATS, np.where(rng.random(n) < 0.5, REAL_COUNT, REAL_SUM))
    values = np.where(
        seat,
        rng.integers(1, settings.REAL_SEATS_PER_ACCOUNT + 1, n),
        np.where(codes == REAL_SUM, rng.integers(1, settings.VALUE_MAX + 1, n), 1),
    )
    regions = np.array(settings.REAL_REGIONS, dtype=object)
    endpoints = np.array(settings.REAL_ENDPOINTS, dtype=object)
    raw = rng.bytes(16 * n)
    return {
        "account_ids": rng.integers(1, settings.ACCOUNTS + 1, n, dtype=np.uint64),
        "metric_codes": codes,
        "values": values.astype(np.int64),
        "timestamps": time.time_ns() // 1000 - rng.integers(0, HOUR_US, n, dtype=np.int64),
        "event_ids": [str(uuid.UUID(bytes=raw[i : i + 16])) for i in range(0, 16 * n, 16)],
        "properties": {
            settings.REAL_REGION_KEY: regions[rng.integers(0, len(regions), n)].tolist(),
            settings.REAL_ENDPOINT_KEY: endpoints[rng.integers(0, len(endpoints), n)].tolist(),
        },
        "operation_types": np.where(seat, int(OperationType.ADD), 0).astype(np.uint8),
    }


def events_of(columns: dict[str, Any]) -> list[Event]:
    """The ``Event`` objects the columns describe: the Event workloads are these."""
    accounts = columns["account_ids"].tolist()
    codes = columns["metric_codes"].tolist()
    values = columns["values"].tolist()
    if "timestamps" not in columns:
        triples = zip(accounts, codes, values, strict=True)
        return [Event(account_id=a, metric_code=c, value=v) for a, c, v in triples]
    one_us = timedelta(microseconds=1)
    stamps = [EPOCH + us * one_us for us in columns["timestamps"].tolist()]
    operations = [OperationType(o) for o in columns["operation_types"].tolist()]
    regions = columns["properties"][settings.REAL_REGION_KEY]
    endpoints = columns["properties"][settings.REAL_ENDPOINT_KEY]
    return [
        Event(
            account_id=accounts[i],
            metric_code=codes[i],
            value=values[i],
            timestamp=stamps[i],
            operation_type=operations[i],
            properties={
                settings.REAL_REGION_KEY: regions[i],
                settings.REAL_ENDPOINT_KEY: endpoints[i],
            },
            event_id=columns["event_ids"][i],
        )
        for i in range(len(accounts))
    ]


def inputs(kind: str, duration_s: float, seed: int = 5) -> list[Any]:
    """Calls' worth of arguments for a run of ``duration_s``: lists of Events, or column
    dicts."""
    form, workload = kind.split(".")
    if workload == "plain":
        calls = PLAIN_INPUTS[form]
    else:
        calls = max(2, int(REALISTIC_RATE_EV_S * duration_s / EVENTS_PER_CALL[form]))
    rng = np.random.default_rng(seed)
    make = plain_columns if workload == "plain" else realistic_columns
    n = EVENTS_PER_CALL[form]
    made = [make(rng, n) for _ in range(calls)]
    return [events_of(c) for c in made] if form == "events" else made


async def _send(client: AsyncClient, kind: str, call: Any) -> IngestResult:
    if kind.startswith("events"):
        return await client.ingest(call)
    return await client.ingest_columns(**call)


# --------------------------------------------------------------------------- with I/O


async def _ingest(address: str, kind: str, duration_s: float) -> dict[str, Any]:
    form = kind.split(".")[0]
    in_flight = CALLS_IN_FLIGHT[form]
    calls = inputs(kind, duration_s)
    gc.collect()
    gc.freeze()  # the inputs are the benchmark's, not the library's: not the collector's work
    answered = stored = duplicates = stored_calls = 0
    latencies: list[float] = []
    async with AsyncClient([address]) as client:
        for schema in workload.realistic_schemas():
            await client.metrics.create(schema)
        warm = calls[-1]  # connections and map are warm before the clock
        await _send(client, kind, warm[:10] if form == "events" else warm)
        cpu0, t0 = time.process_time(), time.perf_counter()
        deadline = t0 + duration_s

        async def worker(k: int) -> None:
            nonlocal answered, stored, duplicates, stored_calls
            i = k
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                result = await _send(client, kind, calls[i % len(calls)])
                latencies.append((time.perf_counter() - sent) * 1e6)
                answered += result.n_stored + result.n_duplicates + result.n_rejected
                stored += result.n_stored
                duplicates += result.n_duplicates
                stored_calls += 1
                i += in_flight

        await asyncio.gather(*(worker(k) for k in range(in_flight)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    gc.unfreeze()
    return {
        "events": answered,
        "stored": stored,
        "duplicates": duplicates,
        "calls": stored_calls,
        "distinct_calls": len(calls),
        "wall_s": wall,
        "cpu_s": cpu,
        "call_latency_us": summary(latencies),
    }


def ingest_in_process(
    address: str, duration_s: float, kind: str = "events.plain"
) -> dict[str, Any]:
    return uvloop.run(_ingest(address, kind, duration_s))


# --------------------------------------------------------------------------- without I/O


def encode_only(rounds: dict[str, int]) -> dict[str, dict[str, float]]:
    """CPU time of what a call costs without I/O: packing (validation included), routing and
    splitting into batches, and each batch's INGEST frame, for each workload."""
    codec = ClientCodec()
    route = Partitioner(settings.PARTITIONS).many  # what the client's partition map uses
    out = {}
    request_id = 0
    for kind, count in rounds.items():
        calls = inputs(kind, 0.0, seed=3)
        gc.collect()
        gc.freeze()
        events = 0
        t0 = 0.0
        for r in range(-1, count):  # round -1 warms up (first calls of numpy's paths, caches)
            if r == 0:
                events, t0 = 0, time.process_time()
            call = calls[r % len(calls)]
            packed = pack_events(call) if kind.startswith("events") else pack_arrays(**call)
            events += len(packed)
            for group in split_packed(packed, route):
                request_id += 1
                message = Ingest(
                    partition=group.partition,
                    producer_id=1,
                    seq=request_id,
                    sync=False,
                    catalog_version=5,
                    batch=group.batch,
                )
                codec.encode_request(request_id, message)
                codec.forget(request_id)
        took = time.process_time() - t0
        gc.unfreeze()
        out[kind] = {"events_per_s": events / took, "us_per_event": took / events * 1e6}
    return out


# --------------------------------------------------------------------------- the section


def client_ingest(res: Results, work: Path, s: Settings) -> None:
    from bench.scenarios import fresh_node

    runs: dict[str, dict[str, Any]] = {}
    with fresh_node(work, "client-ingest") as node:
        for kind in KINDS:
            cpu0 = node.child.cpu_seconds()
            out = procs.call_in_process(
                ingest_in_process,
                node.child.address,
                s.client_duration_s,
                kind,
                timeout_s=s.client_duration_s + 2 * settings.LOAD_SLACK_S,
            )
            out["node_cpu_s"] = node.child.cpu_seconds() - cpu0
            runs[kind] = out
    full = s.name == "full"
    rounds = {  # about 0.1 s each in the quick run, 0.4 s in the full one
        "events.plain": 800 if full else 200,
        "events.realistic": 400 if full else 100,
        "columns.plain": 40 if full else 10,
        "columns.realistic": 20 if full else 5,
    }
    floors = procs.call_in_process(encode_only, rounds, timeout_s=300)
    res.detail("client.ingest", {"with_io": runs, "encode_only": floors})
    for kind in KINDS:
        out = runs[kind]
        key = f"client.{kind}"
        wall = out["wall_s"]
        note = (
            f"{out['calls']} calls of {EVENTS_PER_CALL[kind.split('.')[0]]:,} events; client "
            f"{out['cpu_s'] / wall:.2f} cores, node {out['node_cpu_s'] / wall:.2f}"
        )
        res.add(
            Figure(
                key=f"{key}.rate",
                label=f"{LABELS[kind]}: throughput (wall)",
                value=out["events"] / out["wall_s"],
                unit="ev/s",
                limit_key="limit.codec.encode.b500",
                note=note,
            )
        )
        res.add(
            Figure(
                key=f"{key}.cpu_rate",
                label=f"{LABELS[kind]}: events per client CPU second",
                value=out["events"] / out["cpu_s"],
                unit="ev/s",
                target=BARS[kind],
                note=f"{out['cpu_s'] / max(1, out['events']) * 1e6:.2f} us of client CPU per event",
            )
        )
        res.add(
            Figure(
                key=f"{key}.encode_only",
                label=f"{LABELS[kind]}: encode only (no I/O), events per CPU second",
                value=floors[kind]["events_per_s"],
                unit="ev/s",
                target=BARS[kind],
            )
        )


# --------------------------------------------------------------------------- queries


async def _queries(address: str, samples: int, kind: str) -> dict[str, Any]:
    rng = np.random.default_rng(9)
    period = current_month()
    took: list[float] = []
    async with AsyncClient([address]) as client:
        for i in range(samples + 100):
            account = int(rng.integers(1, settings.ACCOUNTS + 1))
            code = settings.METRIC_CODES[int(rng.integers(0, len(settings.METRIC_CODES)))]
            t0 = time.perf_counter()
            if kind == "realtime":
                await client.query_realtime(account, code)
            else:
                await client.query(account, code, period)
            if i >= 100:
                took.append((time.perf_counter() - t0) * 1e6)
    return summary(took)


def queries_in_process(address: str, samples: int, kind: str) -> dict[str, Any]:
    return uvloop.run(_queries(address, samples, kind))


def client_queries(res: Results, address: str, s: Settings) -> None:
    for kind in ("month", "realtime"):
        lat = procs.call_in_process(
            queries_in_process, address, s.client_query_samples, kind, timeout_s=300
        )
        res.detail(f"query.client.{kind}", lat)
        method = "query_realtime" if kind == "realtime" else "query"
        res.add_latency(
            f"query.client.{kind}",
            f"AsyncClient.{method} round trip ({kind})",
            lat,
            limit_key="limit.rtt",
            target_p50=250.0,
        )
