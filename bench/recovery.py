"""Restart recovery and node memory: N active cells, 2N stored events, then restart.

1. Start a node, create the metrics, SIGTERM it and start it again: the fixed cost of a restart
   with (almost) nothing to recover (opening files, electing itself).
2. Ingest N events, one per (account, metric) cell (N/5 accounts), ASYNC batch 500, and wait
   until every partition has applied what it made durable; the node's RSS grows by the memory
   those cells take (RSS delta, so allocator slack and buffers count too): bytes per cell.
3. Ingest N more plain events at random over the same cells (no new cell): the RSS delta is
   what the node keeps per stored event.
4. Read a sample of cells (``query_realtime``), SIGKILL the node and start it again: it replays
   its whole log (no snapshot since step 1). The sampled cells must read the same.
5. SIGTERM it (a clean stop writes a snapshot) and start it again: it loads the snapshot. The
   sampled cells must read the same again.

"Recovered" means every partition has applied at least as far as before the stop (a new
leader adds one entry of its own), polled every 20 ms from the spawn. The recovery work of a
restart is the time from the start of ``Node.start`` until "recovered": the node's own
``listening_s`` (from the start of ``Node.start`` until its port accepts, which covers loading
snapshots and reading logs) plus the time from the port accepting (seen from here) until
"recovered". The interpreter's start and the imports before it are left out, being the same
whatever the data (and the figure that varies most with the machine's load). Recovery per
million events is (that work - the fixed restart's) / 2N * 1e6; the wall time from the spawn is
kept too.

The log is replayed whenever the partitions' first fsync completes, which is often while the
node waits for its catalog between listening and serving. Earlier versions added the node's
``recovery_s`` (until serving) to the time from listening, so that wait, and a replay inside it,
counted twice; ``work_s_until_serving`` keeps that sum for comparison with older results.
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

TARGET_BYTES_PER_CELL = 150.0  # issue 10
TARGET_BYTES_PER_EVENT = 40.0
TARGET_S_PER_M_EVENTS = 0.5
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
            recovered_s = time.monotonic() - started
            node_s = procs.recovery_seconds(child)
            node_listening_s = procs.listening_seconds(child)
            return {
                "listen_s": listen_s,
                "recovered_s": recovered_s,
                "node_recovery_s": node_s,
                "node_listening_s": node_listening_s,
                "work_s": (node_listening_s or 0.0) + (recovered_s - listen_s),
                "work_s_until_serving": (node_s or 0.0) + (recovered_s - listen_s),
            }
        time.sleep(POLL_S)
    raise TimeoutError(f"{child.name} did not re-apply its log within {SETTLE_S_MAX}s")


async def _sample(address: str, accounts: int, samples: int) -> list[tuple[int, int]]:
    """(count, sum) of a fixed sample of cells."""
    rng = random.Random(77)
    out = []
    async with AsyncClient([address]) as client:
        for _ in range(samples):
            value = await client.query_realtime(rng.randint(1, accounts), rng.choice(METRIC_CODES))
            out.append((value.count, value.sum))
    return out


def _check(address: str, accounts: int, what: str, expected: list[tuple[int, int]]) -> None:
    got = asyncio.run(_sample(address, accounts, VERIFY_SAMPLES))
    if got != expected:
        wrong = sum(a != b for a, b in zip(got, expected, strict=True))
        raise RuntimeError(f"after {what}, {wrong} of {len(got)} sampled cells read otherwise")


def _ingest(child: procs.Child, version: int, events: int, *, cover: bool) -> driver.LoadOutcome:
    """``events`` plain events over ``events / 5`` accounts: every cell once (``cover``), or
    at random (batch 500, ASYNC, one load-generator process)."""
    job = loadgen.IngestJob(
        batch=500,
        sync=False,
        frames=0 if cover else events // 500,
        accounts=events // len(METRIC_CODES),
        catalog_version=version,
        cover=cover,
    )
    spec = loadgen.LoadSpec(
        address=child.address,
        partitions=settings.PARTITIONS,
        job=job,
        duration_s=900.0,
        window=settings.WINDOW_ASYNC_B500,
        seed=1 if cover else 2,  # another producer id: its sequence numbers start again at 1
    )
    outcome = driver.run_load([spec], server=child)
    if outcome.failures or outcome.stored != events:
        raise RuntimeError(f"ingest stored {outcome.stored} of {events}: {outcome.failures}")
    return outcome


def recovery(res: Results, work: Path, s: Settings) -> None:
    data_dir = work / "recovery"
    shutil.rmtree(data_dir, ignore_errors=True)
    child = procs.node(data_dir, partitions=settings.PARTITIONS)
    cells = s.recovery_events // 2
    accounts = cells // len(METRIC_CODES)
    try:
        child.start()
        version = asyncio.run(create_metrics(child.address, False))
        empty = settle(child.address)
        child.terminate()
        base = _restart(child, empty)
        rss0 = child.rss_bytes()
        covered = _ingest(child, version, cells, cover=True)
        settle(child.address)
        rss1 = child.rss_bytes()
        spread = _ingest(child, version, cells, cover=False)
        applied = settle(child.address)
        rss2 = child.rss_bytes()
        expected = asyncio.run(_sample(child.address, accounts, VERIFY_SAMPLES))
        child.kill()
        killed = _restart(child, applied)
        _check(child.address, accounts, "SIGKILL", expected)
        applied = settle(child.address)
        _, stop_s = child.terminate()
        stopped = _restart(child, applied)
        _check(child.address, accounts, "SIGTERM", expected)
        child.terminate()
        data_bytes = sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file())
    finally:
        child.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    events = 2 * cells
    res.detail(
        "recovery",
        {
            "cells": cells,
            "events": events,
            "ingest_cover": covered.details(),
            "ingest_spread": spread.details(),
            "fixed": base,
            "after_sigkill": killed,
            "sigterm_stop_s": stop_s,
            "after_sigterm": stopped,
            "rss_before_bytes": rss0,
            "rss_after_cells_bytes": rss1,
            "rss_after_events_bytes": rss2,
            "data_dir_bytes_after_snapshot": data_bytes,
        },
    )
    _figures(res, events, base, killed, stopped, stop_s)
    res.add(
        Figure(
            key="memory.node_rss_cell",
            label=f"node RSS per active cell ({cells:,} cells, 1 event each)",
            value=(rss1 - rss0) / cells,
            unit="B/cell",
            limit_key="limit.memory.dict_floor",
            target=TARGET_BYTES_PER_CELL,
            lower_is_better=True,
        )
    )
    res.add(
        Figure(
            key="memory.node_rss_event",
            label=f"node RSS per stored event ({cells:,} more plain events in those cells)",
            value=(rss2 - rss1) / cells,
            unit="B/event",
            target=TARGET_BYTES_PER_EVENT,
            lower_is_better=True,
        )
    )


def _figures(
    res: Results,
    events: int,
    base: dict[str, Any],
    killed: dict[str, Any],
    stopped: dict[str, Any],
    stop_s: float,
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
        wall = (run["recovered_s"] - base["recovered_s"]) * per_m
        old_sum = (run["work_s_until_serving"] - base["work_s_until_serving"]) * per_m
        res.add(
            Figure(
                key=key,
                label=f"{label}, per million events ({events:,})",
                value=(run["work_s"] - base["work_s"]) * per_m,
                unit="s/M ev",
                limit_key="limit.recovery.decode",
                target=TARGET_S_PER_M_EVENTS,
                lower_is_better=True,
                note=f"recovery work {run['work_s']:.3f}s (fixed {base['work_s']:.3f}s); from the "
                f"spawn: recovered after {run['recovered_s']:.3f}s (fixed "
                f"{base['recovered_s']:.3f}s, {wall:.3f} s/M ev), listening after "
                f"{run['listen_s']:.3f}s; counted as before (until serving + from listening): "
                f"{old_sum:.3f} s/M ev",
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
