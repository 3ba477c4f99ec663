"""Restart recovery and node memory: ingest N events into N active cells, then restart.

1. Start a node, create the metrics, SIGTERM it and start it again: the fixed cost of a restart
   with (almost) nothing to recover (interpreter, imports, opening files, electing itself).
2. Ingest N events, one per (account, metric) cell (N/5 accounts), ASYNC batch 500, and wait
   until every partition has applied what it made durable; the node's RSS grows by the memory
   those cells take (RSS delta, so allocator slack and buffers count too).
3. SIGKILL the node and start it again: it replays its whole log (no snapshot since step 1).
4. SIGTERM it (a clean stop writes a snapshot) and start it again: it loads the snapshot.

A node listens before its Raft groups have elected a leader and re-applied the log, so
"recovered" means: every partition has applied at least as far as before the stop (a new
leader adds one entry of its own), polled every 20 ms from the spawn. Then sampled cells must
still hold exactly their one event. Recovery per million events is (time to recover - the
fixed cost) / N * 1e6; time to listen and the node's own ``recovery_s`` log field are kept too.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from pathlib import Path
from typing import Any

from bench import driver, loadgen, procs, settings
from bench.report import Figure, Results
from bench.scenarios import applied_indices, create_metrics, settle
from bench.settings import METRIC_CODES, SETTLE_S_MAX, Settings
from unimeter import AsyncClient

TARGET_BYTES_PER_CELL = 300.0
VERIFY_SAMPLES = 300
POLL_S = 0.02


def _restart(child: procs.Child, before: list[tuple[int, int]]) -> dict[str, Any]:
    """Spawn ``child`` and time it until it listens and until it has re-applied ``before``."""
    started = time.monotonic()
    listen_s = child.start()
    deadline = started + SETTLE_S_MAX
    while time.monotonic() < deadline:
        try:
            now = asyncio.run(applied_indices(child.address, timeout_s=2.0))
        except Exception:  # no leader yet: the request is refused or times out
            now = []
        if now and all(a >= b for (_, a), (_, b) in zip(now, before, strict=True)):
            return {
                "listen_s": listen_s,
                "recovered_s": time.monotonic() - started,
                "node_recovery_s": procs.recovery_seconds(child),
            }
        time.sleep(POLL_S)
    raise TimeoutError(f"{child.name} did not re-apply its log within {SETTLE_S_MAX}s")


async def _sample_counts(address: str, accounts: int, samples: int) -> list[int]:
    rng = random.Random(77)
    async with AsyncClient([address]) as client:
        return [
            (await client.query_realtime(rng.randint(1, accounts), rng.choice(METRIC_CODES))).count
            for _ in range(samples)
        ]


def _check(address: str, accounts: int, what: str) -> None:
    counts = asyncio.run(_sample_counts(address, accounts, VERIFY_SAMPLES))
    if set(counts) != {1}:
        raise RuntimeError(f"after {what}, sampled cells hold {sorted(set(counts))} events, not 1")


def _ingest_cover(child: procs.Child, version: int, events: int) -> driver.LoadOutcome:
    job = loadgen.IngestJob(
        batch=500,
        sync=False,
        frames=0,
        accounts=events // len(METRIC_CODES),
        catalog_version=version,
        cover=True,
    )
    spec = loadgen.LoadSpec(
        address=child.address,
        partitions=settings.PARTITIONS,
        job=job,
        duration_s=900.0,
        window=settings.WINDOW_ASYNC_B500,
    )
    outcome = driver.run_load([spec], server=child)
    if outcome.failures or outcome.stored != events:
        raise RuntimeError(f"preload stored {outcome.stored} of {events}: {outcome.failures}")
    return outcome


def recovery(res: Results, work: Path, s: Settings) -> None:
    data_dir = work / "recovery"
    shutil.rmtree(data_dir, ignore_errors=True)
    child = procs.node(data_dir, partitions=settings.PARTITIONS)
    events = s.recovery_events
    accounts = events // len(METRIC_CODES)
    try:
        child.start()
        version = asyncio.run(create_metrics(child.address, False))
        empty = settle(child.address)
        child.terminate()
        base = _restart(child, empty)
        rss0 = child.rss_bytes()
        outcome = _ingest_cover(child, version, events)
        applied = settle(child.address)
        rss1 = child.rss_bytes()
        child.kill()
        killed = _restart(child, applied)
        _check(child.address, accounts, "SIGKILL")
        applied = settle(child.address)
        _, stop_s = child.terminate()
        stopped = _restart(child, applied)
        _check(child.address, accounts, "SIGTERM")
        child.terminate()
        data_bytes = sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file())
    finally:
        child.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    res.detail(
        "recovery",
        {
            "events": events,
            "ingest": outcome.details(),
            "fixed": base,
            "after_sigkill": killed,
            "sigterm_stop_s": stop_s,
            "after_sigterm": stopped,
            "rss_before_bytes": rss0,
            "rss_after_bytes": rss1,
            "data_dir_bytes_after_snapshot": data_bytes,
        },
    )
    _figures(res, events, base, killed, stopped, stop_s, rss1 - rss0)


def _figures(
    res: Results,
    events: int,
    base: dict[str, Any],
    killed: dict[str, Any],
    stopped: dict[str, Any],
    stop_s: float,
    rss_delta: int,
) -> None:
    per_m = 1e6 / events
    decode_rate = res.value("limit.codec.wal_decode.b500")
    res.add(
        Figure(
            key="limit.recovery.decode",
            label="limit: WAL record decode time per million events",
            value=1e6 / decode_rate if decode_rate else None,
            unit="s/M ev",
            lower_is_better=True,
        )
    )
    for key, label, run in (
        ("recovery.kill", "restart after SIGKILL (log replay)", killed),
        ("recovery.term", "restart after SIGTERM (snapshot)", stopped),
    ):
        res.add(
            Figure(
                key=key,
                label=f"{label}, per million events",
                value=(run["recovered_s"] - base["recovered_s"]) * per_m,
                unit="s/M ev",
                limit_key="limit.recovery.decode",
                lower_is_better=True,
                note=f"recovered in {run['recovered_s']:.3f}s (fixed {base['recovered_s']:.3f}s), "
                f"listening after {run['listen_s']:.3f}s",
            )
        )
    res.add(
        Figure(
            key="recovery.stop",
            label="SIGTERM stop (drain, sync, snapshot), per million events",
            value=stop_s * per_m,
            unit="s/M ev",
            lower_is_better=True,
        )
    )
    res.add(
        Figure(
            key="memory.node_rss_cell",
            label=f"node RSS per active cell ({events:,} cells, 1 event each)",
            value=rss_delta / events,
            unit="B/cell",
            limit_key="limit.memory.dict_floor",
            target=TARGET_BYTES_PER_CELL,
            lower_is_better=True,
        )
    )
