"""``python -m bench.storage [--quick]``: what the disk allows, and what the node gets from it.

Three parts, all on the filesystem of the work directory (where the nodes keep their data):

1. *Raw fsync*, in this process: 4 KiB appended then ``fdatasync`` on one file, back to back;
   the same over 64 files one after another, and from 6 threads at once (the node's default
   executor has min(32, cores + 4) workers); 4 KiB to each of 64 files then one ``syncfs``; and
   64 KiB appends to one file (what one shared log would do with a bigger group).
2. *SYNC ingest at batch 500* against a real node with 64 and 256 partitions, from 1, 16 and
   64 connections (``WINDOW_PER_CONN`` requests in flight on each), with the node's fsync count
   read from its ``/metrics`` before and after: events/s, fsyncs/s and events per fsync.
3. *Recovery* (``--recovery-events N``, default 200,000 quick and 10,000,000 full): a node with
   the default 8 partitions and snapshot policy takes N events ASYNC (10,000 accounts, 5 SUM
   metrics), then is SIGKILLed and restarted, then SIGTERMed and restarted. Each restart is
   timed until the node listens and until every partition has applied as far as before; sampled
   totals must be unchanged.

Load comes from ``bench.loadgen``/``bench.driver`` (pre-encoded frames in separate processes);
children are started and stopped by PID through ``bench.procs``. Results go to
``bench/results/storage-{quick,full}.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import driver, loadgen, procs, scenarios, settings, workload
from unimeter import AsyncClient

RESULTS_DIR = procs.REPO_ROOT / "bench" / "results"
WINDOW_PER_CONN = 4
PARTITION_COUNTS = (64, 256)
CONNECTIONS = (1, 16, 64)
FSYNC_FILES = 64
FSYNC_THREADS = 6
RECOVERY_PARTITIONS = settings.PARTITIONS
SETTLE_S_MAX = 600.0
SAMPLES = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    name: str
    fsync_s: float
    ingest_s: float
    frames: int  # pre-encoded 500-event frames per load run
    recovery_events: int


QUICK = Plan(name="quick", fsync_s=0.6, ingest_s=2.0, frames=2_000, recovery_events=200_000)
FULL = Plan(name="full", fsync_s=3.0, ingest_s=5.0, frames=6_000, recovery_events=10_000_000)


# --------------------------------------------------------------------------- raw fsync


def _timed_rounds(seconds: float, one_round: Callable[[], int]) -> float:
    """Files (or appends) made durable per second, over ``seconds``."""
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += one_round()
    return done / (time.perf_counter() - started)


def _syncfs_call() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    call: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
    return call


def raw_fsync(work: Path, plan: Plan) -> dict[str, float]:
    directory = work / "raw-fsync"
    directory.mkdir(parents=True, exist_ok=True)
    fds = [
        os.open(directory / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for i in range(FSYNC_FILES)
    ]
    small, big = os.urandom(4096), os.urandom(65536)
    out: dict[str, float] = {}
    try:

        def one_file() -> int:
            os.write(fds[0], small)
            os.fdatasync(fds[0])
            return 1

        def one_file_64k() -> int:
            os.write(fds[0], big)
            os.fdatasync(fds[0])
            return 1

        def files_serial() -> int:
            for fd in fds:
                os.write(fd, small)
                os.fdatasync(fd)
            return len(fds)

        def files_threads() -> int:
            shares = [fds[i::FSYNC_THREADS] for i in range(FSYNC_THREADS)]

            def work_share(share: list[int]) -> None:
                for fd in share:
                    os.write(fd, small)
                    os.fdatasync(fd)

            threads = [threading.Thread(target=work_share, args=(s,)) for s in shares]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return len(fds)

        out["one_file_4k_fdatasync_per_s"] = _timed_rounds(plan.fsync_s, one_file)
        out["one_file_64k_fdatasync_per_s"] = _timed_rounds(plan.fsync_s, one_file_64k)
        out["files64_serial_fdatasync_per_s"] = _timed_rounds(plan.fsync_s, files_serial)
        out["files64_6threads_fdatasync_per_s"] = _timed_rounds(plan.fsync_s, files_threads)
        syncfs = _syncfs_call()
        if syncfs is not None:

            def files_syncfs() -> int:
                for fd in fds:
                    os.write(fd, small)
                if syncfs(fds[0]) != 0:
                    raise OSError(ctypes.get_errno(), "syncfs failed")
                return len(fds)

            rate = _timed_rounds(plan.fsync_s, files_syncfs)
            out["files64_one_syncfs_files_per_s"] = rate
            out["syncfs_per_s"] = rate / FSYNC_FILES
    finally:
        for fd in fds:
            os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- a node


def start_node(data_dir: Path, partitions: int, *extra: str) -> tuple[procs.Child, int]:
    """A node with ``/metrics`` on a second free port; returns (child, http port)."""
    http_port = procs.free_port()
    port = procs.free_port()
    argv = [
        sys.executable, "-m", "unimeter.node", "--listen", f"{procs.HOST}:{port}",
        "--data-dir", str(data_dir), "--partitions", str(partitions),
        "--disk-reserve-bytes", "0", "--http", f"{procs.HOST}:{http_port}", *extra,
    ]  # fmt: skip
    child = procs.Child(
        f"node {data_dir.name}", argv, port, data_dir.parent / f"{data_dir.name}.log"
    )
    child.start()
    _wait_healthy(http_port)
    return child, http_port


def _wait_healthy(http_port: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://{procs.HOST}:{http_port}/health", timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def fsyncs_total(http_port: int) -> float:
    url = f"http://{procs.HOST}:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("unimeter_partition_fsyncs_total{")
    )


async def _prepare(address: str, partitions: int) -> int:
    """Create the metrics and wait until every partition has a leader; the catalog version."""
    async with AsyncClient([address], request_timeout=60.0) as client:
        for schema in workload.metric_schemas():
            await client.metrics.create(schema)
        deadline = time.monotonic() + SETTLE_S_MAX
        while True:
            status = await client.cluster_status()
            if len(status.partitions) == partitions and all(
                p.leader > 0 for p in status.partitions
            ):
                return status.catalog_version
            if time.monotonic() > deadline:
                raise TimeoutError("partitions without a leader")
            await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- SYNC ingest


def sync_runs() -> list[tuple[int, int, int]]:
    """(partitions, connections, batch): the batch-500 grid, then batch 1 at 64 connections,
    where every request needs a group commit of its own and fsyncs alone set the pace."""
    grid = [(p, c, 500) for p in PARTITION_COUNTS for c in CONNECTIONS]
    return grid + [(p, CONNECTIONS[-1], 1) for p in PARTITION_COUNTS]


def sync_ingest(work: Path, plan: Plan) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for partitions, conns, batch in sync_runs():
        data_dir = work / f"sync-p{partitions}-c{conns}-b{batch}"
        shutil.rmtree(data_dir, ignore_errors=True)
        child, http_port = start_node(data_dir, partitions)
        try:
            version = asyncio.run(_prepare(child.address, partitions))
            frames = plan.frames if batch > 1 else plan.frames * 20
            job = loadgen.IngestJob(
                batch=batch, sync=True, frames=frames, accounts=settings.ACCOUNTS,
                catalog_version=version,
            )  # fmt: skip
            spec = loadgen.LoadSpec(
                address=child.address, partitions=partitions, job=job,
                duration_s=plan.ingest_s, conns=conns, window=WINDOW_PER_CONN,
            )  # fmt: skip
            before = fsyncs_total(http_port)
            outcome = driver.run_load([spec], server=child)
            fsyncs = fsyncs_total(http_port) - before
        finally:
            child.kill()
            shutil.rmtree(data_dir, ignore_errors=True)
        if outcome.failures:
            raise RuntimeError("load generator failed:\n" + "\n".join(outcome.failures))
        details = outcome.details()
        rows.append(
            {
                "partitions": partitions,
                "connections": conns,
                "batch": batch,
                "in_flight": conns * WINDOW_PER_CONN,
                "events_per_s": round(outcome.events_per_s),
                "requests_per_s": round(outcome.replies_per_s),
                "fsyncs_per_s": round(fsyncs / outcome.wall_s) if outcome.wall_s else None,
                "events_per_fsync": round(outcome.stored / fsyncs, 1) if fsyncs else None,
                "latency_p50_us": details["latency_us"].get("p50"),
                "latency_p99_us": details["latency_us"].get("p99"),
                "node_cpu_share": details["server_cpu_share"],
                "loadgen_cpu_share": details["loadgen_cpu_share"],
                "errors": details["error_statuses"],
                "pool_exhausted": details["pool_exhausted"],
            }
        )
        print(f"  sync p{partitions} c{conns} b{batch}: {rows[-1]}", flush=True)
    return rows


# --------------------------------------------------------------------------- recovery


async def _sample(address: str, seed: int) -> list[int]:
    rng = random.Random(seed)
    async with AsyncClient([address], request_timeout=30.0) as client:
        return [
            (await client.query_realtime(rng.randint(1, settings.ACCOUNTS), code)).count
            for code in (rng.choice(settings.METRIC_CODES) for _ in range(SAMPLES))
        ]


def _restart(child: procs.Child, before: list[tuple[int, int]]) -> dict[str, Any]:
    """Start ``child``; time until it listens and until it re-applied ``before``."""
    started = time.monotonic()
    listen_s = child.start(timeout_s=SETTLE_S_MAX)
    deadline = started + SETTLE_S_MAX
    while True:
        try:
            now = asyncio.run(scenarios.applied_indices(child.address))
        except Exception:  # no leader yet: refused or timed out
            now = []
        if now and all(a >= b for (_, a), (_, b) in zip(now, before, strict=True)):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name} did not re-apply its log")
        time.sleep(0.02)
    recovered = re.findall(
        r"event=recovered actor=partition-\d+ snapshot_index=(\S+) log_entries=(\d+)",
        child.tail(400_000),
    )[-RECOVERY_PARTITIONS:]
    return {
        "listen_s": round(listen_s, 3),
        "recovered_s": round(time.monotonic() - started, 3),
        "node_recovery_s": procs.recovery_seconds(child),
        "snapshot_indexes": [s for s, _ in recovered],
        "log_entries_replayed": sum(int(n) for _, n in recovered),
    }


def recovery(work: Path, events: int) -> dict[str, Any]:
    data_dir = work / "recovery"
    shutil.rmtree(data_dir, ignore_errors=True)
    child, _ = start_node(data_dir, RECOVERY_PARTITIONS)
    try:
        version = asyncio.run(_prepare(child.address, RECOVERY_PARTITIONS))
        processes = 2
        job = loadgen.IngestJob(
            batch=500, sync=False, frames=events // 500 // processes,
            accounts=settings.ACCOUNTS, catalog_version=version,
        )  # fmt: skip
        specs = [
            loadgen.LoadSpec(
                address=child.address,
                partitions=RECOVERY_PARTITIONS,
                job=job,
                duration_s=3600.0,
                window=settings.WINDOW_ASYNC_B500,
                seed=11 + i,
            )
            for i in range(processes)
        ]
        outcome = driver.run_load(specs, server=child)
        if outcome.failures:
            raise RuntimeError("load generator failed:\n" + "\n".join(outcome.failures))
        applied = scenarios.settle(child.address, SETTLE_S_MAX)
        rss = child.rss_bytes()
        sample = asyncio.run(_sample(child.address, 5))
        disk = _disk_usage(data_dir)
        child.kill()
        after_kill = _restart(child, applied)
        if asyncio.run(_sample(child.address, 5)) != sample:
            raise RuntimeError("totals changed across SIGKILL + restart")
        applied = scenarios.settle(child.address, SETTLE_S_MAX)
        code, stop_s = child.terminate(timeout_s=SETTLE_S_MAX)
        after_term = _restart(child, applied)
        if code != 0 or asyncio.run(_sample(child.address, 5)) != sample:
            raise RuntimeError(f"SIGTERM exit {code}, or totals changed across the restart")
        child.terminate(timeout_s=SETTLE_S_MAX)
    finally:
        child.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "events": outcome.stored,
        "ingest_events_per_s": round(outcome.events_per_s),
        "node_rss_bytes": rss,
        "disk": disk,
        "after_sigkill": after_kill,
        "sigterm_stop_s": round(stop_s, 3),
        "after_sigterm": after_term,
    }


def _disk_usage(data_dir: Path) -> dict[str, int]:
    out = {"wal_bytes": 0, "snapshot_bytes": 0, "snapshots": 0, "wal_segments": 0}
    for path in (data_dir / "partitions").rglob("*"):
        if path.suffix == ".wal":
            out["wal_bytes"] += path.stat().st_size
            out["wal_segments"] += 1
        elif path.suffix == ".snap":
            out["snapshot_bytes"] += path.stat().st_size
            out["snapshots"] += 1
    return out


# --------------------------------------------------------------------------- report


def markdown(results: dict[str, Any]) -> str:
    raw = results["raw_fsync"]
    lines = [
        f"Storage benchmark ({results['plan']}, {results['when']}, {os.cpu_count()} cores, "
        f"load average {results['load_average_at_start'][0]:.1f} at start)",
        "",
        "| raw disk (same filesystem as the data) | per second |",
        "|---|---:|",
    ]
    lines += [f"| {key} | {value:,.0f} |" for key, value in raw.items()]
    lines += [
        "",
        "| partitions | connections | batch | in flight | SYNC events/s | fsyncs/s "
        "| events/fsync | p50 ms | p99 ms | node CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["sync_ingest"]:
        p50, p99 = (
            r[k] / 1000 if r[k] is not None else None for k in ("latency_p50_us", "latency_p99_us")
        )
        lines.append(
            f"| {r['partitions']} | {r['connections']} | {r['batch']} | {r['in_flight']} "
            f"| {r['events_per_s']:,} | {r['fsyncs_per_s']} | {r['events_per_fsync']} "
            f"| {p50:.1f} | {p99:.1f} | {r['node_cpu_share']} |"
        )
    rec = results.get("recovery")
    if rec:
        lines += [
            "",
            f"Recovery of {rec['events']:,} events ({RECOVERY_PARTITIONS} partitions; ingest "
            f"{rec['ingest_events_per_s']:,} ev/s ASYNC; node RSS {rec['node_rss_bytes'] >> 20} "
            f"MiB; on disk {rec['disk']})",
            "",
            "| restart | listens after s | re-applied after s | WAL entries replayed |",
            "|---|---:|---:|---:|",
        ]
        for name in ("after_sigkill", "after_sigterm"):
            r = rec[name]
            lines.append(
                f"| {name} | {r['listen_s']} | {r['recovered_s']} | {r['log_entries_replayed']} |"
            )
        lines.append(f"\nSIGTERM stop (drain, sync, snapshot) took {rec['sigterm_stop_s']} s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__)
    p.add_argument("--quick", action="store_true", help="short runs, 200,000-event recovery")
    p.add_argument("--recovery-events", type=int, default=None)
    p.add_argument("--only", default="fsync,sync,recovery", help="comma-separated parts")
    p.add_argument("--work", type=Path, default=None, help="work directory (default: a temp)")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    parts = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="unimeter-storage-", dir=args.work))
    results: dict[str, Any] = {
        "plan": plan.name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "work_dir": str(work),
        "raw_fsync": {},
        "sync_ingest": [],
        "load_average_at_start": os.getloadavg(),
    }
    try:
        if "fsync" in parts:
            results["raw_fsync"] = raw_fsync(work, plan)
            print(f"  raw fsync: {results['raw_fsync']}", flush=True)
        if "sync" in parts:
            results["sync_ingest"] = sync_ingest(work, plan)
        if "recovery" in parts:
            events = args.recovery_events or plan.recovery_events
            results["recovery"] = recovery(work, events)
            print(f"  recovery: {results['recovery']}", flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"storage-{plan.name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
