"""Scenarios against a real node process: ingest throughput, SYNC latency, scaling, queries.

Every measurement gets a fresh node (``python -m unimeter.node`` on 127.0.0.1, a free port, its
own data directory under the work directory, ``--disk-reserve-bytes 0``), whose five SUM metrics
are created with the ``AsyncClient`` before the clock starts; the node is stopped by its PID
afterwards and its data removed. The load generator runs in separate processes and competes
with the node for the machine's cores; each result records both sides' CPU time.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import driver, loadgen, procs, settings, workload
from bench.report import Figure, Results
from bench.settings import SETTLE_S_MAX, Settings
from unimeter import AsyncClient

# Issue 10's bars: the plain workload at batch 500, one load-generator process, and the
# realistic workload at half the plain figure of the same run or better.
TARGET_ASYNC_B500 = 1_200_000.0
TARGET_SYNC_B500 = 1_000_000.0
TARGET_REALISTIC_RATIO = 0.5
# Issue 11's bars: a lone SYNC event within 1.2x (p50) and 2x (p99) of the loopback round trip
# plus an fdatasync after idle; batch-1 ASYNC at half the raw Python server's batch-1 figure.
TARGET_SYNC_RATIO = {"p50": 1.2, "p99": 2.0}
TARGET_B1_RATIO = 0.5


@dataclass(slots=True)
class RunningNode:
    child: procs.Child
    data_dir: Path
    catalog_version: int
    start_s: float


async def create_metrics(
    address: str, with_region: bool, workload_name: str = workload.PLAIN
) -> int:
    async with AsyncClient([address]) as client:
        for schema in workload.metric_schemas(with_region=with_region, workload=workload_name):
            await client.metrics.create(schema)
        status = await client.cluster_status()
    return status.catalog_version


async def applied_indices(address: str, timeout_s: float = 10.0) -> list[tuple[int, int]]:
    """(commit index, applied index) of every partition, from ``cluster_status``."""
    async with AsyncClient([address], request_timeout=timeout_s) as client:
        status = await client.cluster_status()
    return [(p.commit_index, p.applied_index) for p in status.partitions]


def settle(address: str, timeout_s: float = SETTLE_S_MAX) -> list[tuple[int, int]]:
    """Wait until every partition has applied all it made durable, twice in a row."""
    deadline = time.monotonic() + timeout_s
    previous: list[tuple[int, int]] | None = None
    while time.monotonic() < deadline:
        now = asyncio.run(applied_indices(address))
        if now == previous and all(c == a for c, a in now):
            return now
        previous = now
        time.sleep(0.05)
    raise TimeoutError(f"the node did not settle within {timeout_s}s: {previous}")


@contextmanager
def fresh_node(
    work: Path,
    name: str,
    *,
    with_region: bool = False,
    prefix: tuple[str, ...] = (),
    workload_name: str = workload.PLAIN,
) -> Iterator[RunningNode]:
    data_dir = work / name
    shutil.rmtree(data_dir, ignore_errors=True)
    child = procs.node(data_dir, partitions=settings.PARTITIONS, prefix=prefix)
    start_s = child.start()
    try:
        version = asyncio.run(create_metrics(child.address, with_region, workload_name))
        yield RunningNode(child, data_dir, version, start_s)
    finally:
        child.kill()  # its data is thrown away: a clean stop (snapshot) would only cost time
        shutil.rmtree(data_dir, ignore_errors=True)


def ingest_specs(
    node: RunningNode,
    *,
    batch: int,
    sync: bool,
    processes: int,
    window: int,
    conns: int,
    duration_s: float,
    frames: int,
    with_region: bool = False,
    seed: int = 1,
    workload_name: str = workload.PLAIN,
) -> list[loadgen.LoadSpec]:
    job = loadgen.IngestJob(
        batch=batch,
        sync=sync,
        frames=frames,
        accounts=settings.ACCOUNTS,
        catalog_version=node.catalog_version,
        with_region=with_region,
        workload=workload_name,
    )
    return [
        loadgen.LoadSpec(
            address=node.child.address,
            partitions=settings.PARTITIONS,
            job=job,
            duration_s=duration_s,
            conns=conns,
            window=window,
            seed=seed + i,
        )
        for i in range(processes)
    ]


def _checked(outcome: driver.LoadOutcome) -> driver.LoadOutcome:
    if outcome.failures:
        raise RuntimeError("load generator failed:\n" + "\n".join(outcome.failures))
    return outcome


def _note(outcome: driver.LoadOutcome) -> str:
    d = outcome.details()
    errors = f", errors {d['error_statuses']}" if d["error_statuses"] else ""
    exhausted = ", pool used up" if d["pool_exhausted"] else ""
    return (
        f"node CPU {d['server_cpu_share']}, loadgen CPU {d['loadgen_cpu_share']} "
        f"(cores busy){errors}{exhausted}"
    )


# --------------------------------------------------------------------------- ingest


def ingest(res: Results, work: Path, s: Settings) -> None:
    """The plain workload's runs, then the realistic workload's (ASYNC and SYNC at batch 500,
    one load-generator process), each shown against the plain figure of this run."""
    runs = [
        ("async", 500, 1, settings.WINDOW_ASYNC_B500, TARGET_ASYNC_B500),
        ("async", 500, 2, settings.WINDOW_ASYNC_B500, TARGET_ASYNC_B500),
        ("sync", 500, 1, settings.WINDOW_SYNC_B500, TARGET_SYNC_B500),
        ("sync", 500, 2, settings.WINDOW_SYNC_B500, TARGET_SYNC_B500),
        ("async", 1, 1, settings.WINDOW_ASYNC_B1, None),
        ("sync", 1, 1, settings.WINDOW_SYNC_B1, None),
    ]
    for mode, batch, processes, window, target in runs:
        if processes > 1 and not s.two_process_runs:
            continue
        key = f"ingest.{mode}.b{batch}.p{processes}"
        outcome = _ingest_run(work, s, key, mode, batch, processes, window, workload.PLAIN)
        gens = f"{processes} loadgen process" + ("es" if processes > 1 else "")
        res.add(
            Figure(
                key=key,
                label=f"node {mode.upper()} ingest, batch {batch}, {gens}",
                value=outcome.events_per_s,
                unit="ev/s",
                limit_key=f"limit.raw.{mode}.b{batch}",
                target=target if processes == 1 else None,
                target_ratio=TARGET_B1_RATIO if (mode, batch) == ("async", 1) else None,
                note=_note(outcome),
            )
        )
        res.detail(key, outcome.details())
    for mode, window in (
        ("async", settings.WINDOW_ASYNC_B500),
        ("sync", settings.WINDOW_SYNC_B500),
    ):
        key = f"ingest.realistic.{mode}.b500.p1"
        outcome = _ingest_run(work, s, key, mode, 500, 1, window, workload.REALISTIC)
        res.detail(key, outcome.details())
        res.add(
            Figure(
                key=key,
                label=f"node {mode.upper()} ingest, realistic workload, batch 500, 1 loadgen "
                "process",
                value=outcome.events_per_s,
                unit="ev/s",
                limit_key=f"ingest.{mode}.b500.p1",
                target_ratio=TARGET_REALISTIC_RATIO,
                note=_note(outcome),
            )
        )


def _pool_frames(s: Settings, batch: int, workload_name: str) -> int:
    if batch == 1:
        return s.pool_frames_b1
    return (
        s.pool_frames_realistic_b500 if workload_name == workload.REALISTIC else s.pool_frames_b500
    )


def _ingest_run(
    work: Path,
    s: Settings,
    key: str,
    mode: str,
    batch: int,
    processes: int,
    window: int,
    workload_name: str,
) -> driver.LoadOutcome:
    with fresh_node(work, key, workload_name=workload_name) as node:
        specs = ingest_specs(
            node,
            batch=batch,
            sync=mode == "sync",
            processes=processes,
            window=window,
            conns=1,
            duration_s=s.ingest_duration_s,
            frames=_pool_frames(s, batch, workload_name),
            workload_name=workload_name,
        )
        outcome = _checked(driver.run_load(specs, server=node.child))
    if outcome.details()["rejected"] or outcome.details()["duplicates"]:
        raise RuntimeError(f"{key}: events were rejected or taken for duplicates")
    return outcome


def sync_latency(res: Results, work: Path, s: Settings) -> None:
    with fresh_node(work, "latency") as node:
        job = loadgen.IngestJob(
            batch=1,
            sync=True,
            frames=s.latency_samples + 200,
            accounts=settings.ACCOUNTS,
            catalog_version=node.catalog_version,
        )
        spec = loadgen.LoadSpec(
            address=node.child.address,
            partitions=settings.PARTITIONS,
            job=job,
            duration_s=s.latency_time_s_max,
            pingpong=True,
            samples_max=s.latency_samples,
        )
        outcome = _checked(driver.run_load([spec], server=node.child))
    res.detail("latency.sync.b1", outcome.details())
    lat = outcome.latency()
    for p in ("p50", "p90", "p99", "p999"):
        raw = res.value(f"limit.raw.sync.latency.{p}")
        res.add(
            Figure(
                key=f"latency.sync.b1.{p}",
                label=f"node SYNC single event, one worker, {p}",
                value=lat[p],
                unit="us",
                limit_key=f"limit.floor.sync_idle.{p}" if p in TARGET_SYNC_RATIO else None,
                target_ratio=TARGET_SYNC_RATIO.get(p),
                lower_is_better=True,
                note=f"{int(lat['n'])} samples"
                + (f"; the raw Python server {raw:,.1f} us" if raw is not None else ""),
            )
        )


def scaling(res: Results, work: Path, s: Settings) -> None:
    for mode in ("async", "sync"):
        with fresh_node(work, f"scaling-{mode}") as node:
            for conns in settings.SCALING_CONNECTIONS:
                specs = ingest_specs(
                    node,
                    batch=500,
                    sync=mode == "sync",
                    processes=1,
                    window=settings.WINDOW_SCALING,
                    conns=conns,
                    duration_s=s.scaling_duration_s,
                    frames=s.pool_frames_b500,
                    seed=100 + conns,
                )
                outcome = _checked(driver.run_load(specs, server=node.child))
                key = f"scaling.{mode}.c{conns}"
                res.detail(key, outcome.details())
                res.add(
                    Figure(
                        key=key,
                        label=f"node {mode.upper()} batch 500, {conns} connection(s) x window "
                        f"{settings.WINDOW_SCALING}",
                        value=outcome.events_per_s,
                        unit="ev/s",
                        limit_key=f"limit.raw.{mode}.b500",
                        note=_note(outcome),
                    )
                )


# --------------------------------------------------------------------------- queries


def queries(res: Results, work: Path, s: Settings) -> None:
    from bench import clientbench

    with fresh_node(work, "queries", with_region=True) as node:
        preload = ingest_specs(
            node,
            batch=500,
            sync=False,
            processes=1,
            window=settings.WINDOW_ASYNC_B500,
            conns=1,
            duration_s=600.0,
            frames=s.query_preload_events // 500,
            with_region=True,
            seed=7,
        )
        loaded = _checked(driver.run_load(preload, server=node.child))
        settle(node.child.address)
        now_us = time.time_ns() // 1000
        cells = settings.ACCOUNTS * len(settings.METRIC_CODES)
        res.detail(
            "query.preload",
            {"events": loaded.stored, "cells": cells, "events_per_cell": loaded.stored / cells},
        )
        for kind in workload.QUERY_KINDS:
            job = loadgen.QueryJob(
                kind=kind, accounts=settings.ACCOUNTS, frames=1000, now_us=now_us
            )
            spec = loadgen.LoadSpec(
                address=node.child.address,
                partitions=settings.PARTITIONS,
                job=job,
                duration_s=s.latency_time_s_max,
                pingpong=True,
                samples_max=s.query_samples,
            )
            outcome = _checked(driver.run_load([spec], server=node.child))
            if outcome.details()["error_statuses"]:
                raise RuntimeError(f"{kind} queries failed: {outcome.details()['error_sample']}")
            res.detail(f"query.rt.{kind}", outcome.details())
            lat = outcome.latency()
            res.add_latency(
                f"query.rt.{kind}",
                f"node query round trip ({kind}), raw socket",
                lat,
                limit_key="limit.rtt",
            )
        clientbench.client_queries(res, node.child.address, s)
