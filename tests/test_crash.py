"""kill -9 during SYNC ingest loses nothing acknowledged and counts nothing twice.

A writer task ingests SYNC batches (every event with an ``event_id``) while the test kills the
node with SIGKILL and restarts it. Crash points are drawn from a seed, counted in batches the
writer has sent (not in wall-clock time), and the seed is printed, so a failure names the run
to replay (``UNIMETER_CRASH_SEED=N``). The client retries what failed with the
same producer sequence numbers, and after the last restart the writer re-sends every batch it
was not sure of. The totals must equal exactly the events sent: no loss, no double count.

Iterations and duration are bounded; ``UNIMETER_CRASH_ITERATIONS`` raises the count for a soak.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from tests.support.nodeproc import NodeProcess
from unimeter import (
    AggType,
    AsyncClient,
    DeliveryMode,
    Event,
    MetricSchema,
    UnimeterError,
    current_month,
)

ITERATIONS = int(os.environ.get("UNIMETER_CRASH_ITERATIONS", "6"))
SEED = int(os.environ.get("UNIMETER_CRASH_SEED", "0")) or random.randrange(1, 2**32)
POINT_WAIT_S = 30.0
ACCOUNTS = 50
BATCH = 200


def batch_events(n: int) -> list[Event]:
    return [
        Event(
            account_id=(n * BATCH + i) % ACCOUNTS,
            metric_code="calls",
            value=1,
            event_id=f"b{n}-{i}",
        )
        for i in range(BATCH)
    ]


async def test_sigkill_during_sync_ingest_keeps_exact_totals(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"crash points from seed {SEED} (replay: UNIMETER_CRASH_SEED={SEED})")
    node = NodeProcess(tmp_path / "data", partitions=4).start()
    acked: set[int] = set()
    unsure: set[int] = set()
    sent = 0
    try:
        async with AsyncClient([node.address], request_timeout=20.0) as client:
            await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
            stop = asyncio.Event()

            async def writer() -> None:
                nonlocal sent
                while not stop.is_set():
                    n = sent
                    sent += 1
                    try:
                        await client.ingest(batch_events(n), delivery=DeliveryMode.SYNC)
                        acked.add(n)
                    except UnimeterError:
                        unsure.add(n)  # maybe stored, maybe not: re-sent below

            task = asyncio.create_task(writer())
            for _ in range(ITERATIONS):
                point = sent + rng.randint(1, 8)  # killed while this batch is in flight
                deadline = asyncio.get_running_loop().time() + POINT_WAIT_S
                while sent < point:
                    assert asyncio.get_running_loop().time() < deadline, (
                        f"seed {SEED}: the writer stalled at batch {sent} (crash point {point})"
                    )
                    await asyncio.sleep(0.002)
                node.kill()
                await asyncio.to_thread(node.start)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.wait_for(task, 60)
            assert len(acked) > ITERATIONS, "the writer made no progress between crashes"
            print(f"sent={sent} acked={len(acked)} unsure={len(unsure)}")

            # Check that every acknowledged batch survived every crash, before any re-send.
            node.kill()
            await asyncio.to_thread(node.start)
            totals = {
                a: (await client.query(a, "calls", current_month())).value.sum
                for a in range(ACCOUNTS)
            }
            assert sum(totals.values()) >= len(acked) * BATCH
            # Re-send what was not acknowledged; event ids make that safe.
            for n in sorted(unsure):
                result = await client.ingest(batch_events(n), delivery=DeliveryMode.SYNC)
                assert result.n_stored + result.n_duplicates == BATCH
            totals = {
                a: (await client.query(a, "calls", current_month())).value.sum
                for a in range(ACCOUNTS)
            }
            assert sum(totals.values()) == sent * BATCH
            expected = [0] * ACCOUNTS
            for n in range(sent):
                for e in batch_events(n):
                    expected[e.account_id] += 1
            assert [totals[a] for a in range(ACCOUNTS)] == expected
    finally:
        node.kill()
