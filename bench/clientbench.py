"""What the ``AsyncClient`` costs its users: ingest throughput and query round trips through
the library, each in its own process (uvloop), plus its pure CPU cost per event without I/O.

The client process reports its own CPU time, so "client CPU per event" is what an application
pays for ``client.ingest`` on top of building its ``Event`` objects (those are built before
the clock starts).
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from pathlib import Path
from typing import Any

import uvloop

from bench import procs, settings
from bench.report import Figure, Results
from bench.settings import Settings
from bench.stats import summary
from unimeter import AsyncClient, Event, current_month
from unimeter.client.cluster_map import Partitioner
from unimeter.wire.codec import ClientCodec
from unimeter.wire.messages import Ingest

CLIENT_TASKS = 8  # concurrent ingest calls in flight
EVENT_LISTS = 16  # distinct 500-event lists, reused in turn


def _events(rng: random.Random, n: int) -> list[Event]:
    return [
        Event(
            account_id=rng.randint(1, settings.ACCOUNTS),
            metric_code=rng.choice(settings.METRIC_CODES),
            value=rng.randint(1, settings.VALUE_MAX),
        )
        for _ in range(n)
    ]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _ingest(address: str, duration_s: float) -> dict[str, Any]:
    rng = random.Random(5)
    lists = [_events(rng, 500) for _ in range(EVENT_LISTS)]
    stored = calls = 0
    latencies: list[float] = []
    async with AsyncClient([address]) as client:
        await client.ingest(lists[0][:10])  # connections and map are warm before the clock
        cpu0, t0 = _cpu(), time.perf_counter()
        deadline = t0 + duration_s

        async def worker(k: int) -> None:
            nonlocal stored, calls
            i = k
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                result = await client.ingest(lists[i % EVENT_LISTS])
                latencies.append((time.perf_counter() - sent) * 1e6)
                stored += result.n_stored
                calls += 1
                i += CLIENT_TASKS

        await asyncio.gather(*(worker(k) for k in range(CLIENT_TASKS)))
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    return {
        "stored": stored,
        "calls": calls,
        "wall_s": wall,
        "cpu_s": cpu,
        "call_latency_us": summary(latencies),
    }


def ingest_in_process(address: str, duration_s: float) -> dict[str, Any]:
    return uvloop.run(_ingest(address, duration_s))


async def _queries(address: str, samples: int, kind: str) -> dict[str, Any]:
    rng = random.Random(9)
    period = current_month()
    took: list[float] = []
    async with AsyncClient([address]) as client:
        for i in range(samples + 100):
            account = rng.randint(1, settings.ACCOUNTS)
            code = rng.choice(settings.METRIC_CODES)
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


def library_cost(rounds: int) -> dict[str, float]:
    """CPU time of ``build_groups`` (validation, routing, columns) plus ``encode_request`` for
    a 500-event ``client.ingest`` over 8 partitions, with no I/O: the library's floor."""
    from unimeter.client.batching import build_groups  # internal: the client's own path

    rng = random.Random(3)
    lists = [_events(rng, 500) for _ in range(EVENT_LISTS)]
    codec = ClientCodec()
    route = Partitioner(settings.PARTITIONS).many  # what the client's partition map uses
    request_id = 0
    t0 = time.process_time()
    for r in range(rounds):
        groups = build_groups(lists[r % EVENT_LISTS], route)
        for group in groups:
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
    took = time.process_time() - t0
    return {"events_per_s": rounds * 500 / took, "us_per_event": took / (rounds * 500) * 1e6}


def client_ingest(res: Results, work: Path, s: Settings) -> None:
    from bench.scenarios import fresh_node

    with fresh_node(work, "client-ingest") as node:
        cpu0 = node.child.cpu_seconds()
        out = procs.call_in_process(
            ingest_in_process,
            node.child.address,
            s.client_duration_s,
            timeout_s=s.client_duration_s + settings.LOAD_SLACK_S,
        )
        node_cpu = node.child.cpu_seconds() - cpu0
    rate = out["stored"] / out["wall_s"]
    cpu_us = out["cpu_s"] / max(1, out["stored"]) * 1e6
    floor = procs.call_in_process(library_cost, 400 if s.name == "full" else 100, timeout_s=120)
    res.detail("client.ingest", {**out, "node_cpu_s": node_cpu, "library_floor": floor})
    note = (
        f"{CLIENT_TASKS} concurrent calls of 500 events; client CPU "
        f"{out['cpu_s'] / out['wall_s']:.2f}, node CPU {node_cpu / out['wall_s']:.2f} (cores busy)"
    )
    res.add(
        Figure(
            key="client.ingest.rate",
            label="AsyncClient.ingest(500 Events) throughput",
            value=rate,
            unit="ev/s",
            limit_key="limit.codec.encode.b500",
            note=note,
        )
    )
    res.add(
        Figure(
            key="client.ingest.cpu_per_event",
            label="AsyncClient CPU per ingested event (with I/O)",
            value=cpu_us,
            unit="us",
            lower_is_better=True,
        )
    )
    res.add(
        Figure(
            key="client.library.rate",
            label="AsyncClient batching + encode only (no I/O), 500 events",
            value=floor["events_per_s"],
            unit="ev/s",
            limit_key="limit.codec.encode.b500",
        )
    )


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
