"""Failover: killing the leader node of a 3-node cluster under SYNC load, again and again.

Three real node processes on free ports (the node's default election timeout), one client
writing SYNC batches that span every partition. Each round kills (SIGKILL, by PID) the node
that leads the most partitions, measures the *resume gap* -- from the kill to the first batch
acknowledged after it, or the longest pause between acknowledgements after it, whichever is
longer -- then restarts the node and waits until its own replicas have caught up (so the next
kill, of whichever node leads most partitions then, leaves a quorum that has the log). The
worst gap must be at most 1.5 s and the median at most 1 s, and once the writer re-sends what
it was unsure of, the totals are exact.

Bounded: ``UNIMETER_FAILOVER_KILLS`` rounds (5; 10 with ``UNIMETER_SLOW=1``), each with deadlines.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from pathlib import Path

from tests.support.examples import SLOW
from tests.support.nodeproc import ClusterProcesses
from tests.test_cluster import (
    Writer,
    applied_indexes,
    commit_indexes,
    expected_totals,
    totals,
    wait_for_leaders,
)
from unimeter import AggType, AsyncClient, MetricSchema
from unimeter.placement import preferred_leader

KILLS = int(os.environ.get("UNIMETER_FAILOVER_KILLS", "10" if SLOW else "5"))
PARTITIONS = 6
GAP_S_MAX = 1.5
GAP_S_MEDIAN_MAX = 1.0
SETTLE_S = 30.0
RESUMED_ACKS = 4


async def wait_for_preferred_leaders(client: AsyncClient, members: tuple[int, ...]) -> None:
    """Until every partition is led by its preferred node (spread evenly)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        leaders = await wait_for_leaders(client, timeout_s=SETTLE_S)
        if all(leaders[p] == preferred_leader(p, members, 3) for p in leaders):
            return
        assert time.monotonic() < deadline, f"leaders never went back: {leaders}"
        await asyncio.sleep(0.1)


async def caught_up(cluster: ClusterProcesses, restarted: int) -> None:
    """Until the restarted node has applied what the others had committed when it came back."""
    others = [n for i, n in cluster.nodes.items() if i != restarted]
    committed = await commit_indexes(others)
    deadline = time.monotonic() + SETTLE_S
    while True:
        applied = await applied_indexes(cluster.nodes[restarted])
        if all(applied.get(p, 0) >= c for p, c in committed.items()):
            return
        assert time.monotonic() < deadline, f"node {restarted} never caught up"
        await asyncio.sleep(0.02)


def resume_gap(writer: Writer, killed_at: float) -> float:
    after = [t for t in writer.ack_times if t >= killed_at]
    assert after, "no batch was acknowledged after the kill"
    return writer.longest_gap_after(killed_at)


async def test_repeated_leader_kills_resume_within_the_bar_and_keep_totals_exact(
    tmp_path: Path,
) -> None:
    cluster = ClusterProcesses(tmp_path, partitions=PARTITIONS, election_timeout_ms=None).start()
    gaps: list[float] = []
    try:
        async with AsyncClient(cluster.seeds, request_timeout=20.0) as client:
            await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
            members = tuple(sorted(cluster.nodes))
            await wait_for_preferred_leaders(client, members)
            writer = Writer(client)
            writer.start()
            for _ in range(KILLS):
                leaders = await wait_for_leaders(client)
                victim = Counter(leaders.values()).most_common(1)[0][0]
                acked = len(writer.ack_times)
                while len(writer.ack_times) < acked + 5:  # the load is on
                    await asyncio.sleep(0.01)
                killed_at = time.monotonic()
                cluster.nodes[victim].kill()
                deadline = killed_at + 10.0
                # Resumed: a few acks in a row after the kill (later gaps are round trips).
                while sum(t > killed_at for t in writer.ack_times[-RESUMED_ACKS:]) < RESUMED_ACKS:
                    assert time.monotonic() < deadline, "ingest did not resume within 10 s"
                    await asyncio.sleep(0.02)
                gaps.append(resume_gap(writer, killed_at))
                await asyncio.to_thread(cluster.nodes[victim].start)
                await caught_up(cluster, victim)
            await writer.stop()
            await writer.settle()
            assert await totals(client) == expected_totals(writer.sent)
    finally:
        cluster.kill_all()
    summary = ", ".join(f"{g:.2f}" for g in gaps)
    print(f"resume gaps (s): {summary}")
    assert max(gaps) <= GAP_S_MAX, f"worst resume gap {max(gaps):.2f}s: {summary}"
    assert statistics.median(gaps) <= GAP_S_MEDIAN_MAX, f"median too long: {summary}"
