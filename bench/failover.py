"""The failover section: how long SYNC ingest stalls when the leader node of 3 is killed.

A fresh 3-node cluster (as in ``cluster.py``: free ports, replication factor 3, the node's
default election timeout) and one ``AsyncClient`` in this process writing SYNC batches of 100
events that span every partition, one batch at a time. Each of ``FAILOVER_KILLS`` rounds
SIGKILLs (by PID) the node leading the most partitions and records the *resume gap*: from the
kill to the first acknowledgement after it, or the longest pause between acknowledgements after
it, whichever is longer. The node is then restarted and the round waits until its replicas have
applied what the others had committed, so the next kill leaves a quorum that has the log. At the
end the writer re-sends every batch it was unsure of (event ids make that safe) and the totals
must equal what was sent; a mismatch fails the section.

Figures: the worst and the median gap, against the product's bar (worst <= 1.5 s, median <= 1 s).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import statistics
import time
from collections import Counter
from pathlib import Path

from bench import procs
from bench.cluster import _exchange, fresh_cluster
from bench.report import Figure, Results
from bench.settings import Settings
from unimeter import AsyncClient, DeliveryMode, Event, UnimeterError, current_month
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec

FAILOVER_KILLS = 10
GAP_S_BAR = 1.5
GAP_S_MEDIAN_BAR = 1.0
ACCOUNTS = 40
BATCH = 100
ROUND_S_MAX = 60.0
RESUMED_ACKS = 4


def batch_events(n: int) -> list[Event]:
    # "bench.m0" is one of the SUM metrics fresh_cluster creates (bench.workload).
    return [
        Event(account_id=(n * 7 + i) % ACCOUNTS, metric_code="bench.m0", value=1,
              event_id=f"fo{n}-{i}")
        for i in range(BATCH)
    ]  # fmt: skip


def node_status(address: str) -> m.ClusterStatusReply:
    """CLUSTER_STATUS answered by that very node."""
    host, _, port = address.rpartition(":")
    codec = ClientCodec()
    hello = m.Hello(version=m.PROTOCOL_VERSION, client_name="unimeter-bench")
    with socket.create_connection((host, int(port)), timeout=5.0) as sock:
        _exchange(sock, codec, codec.encode_request(1, hello))
        frame = _exchange(sock, codec, codec.encode_request(2, m.ClusterStatus()))
    if not isinstance(frame.message, m.ClusterStatusReply):
        raise RuntimeError(f"CLUSTER_STATUS to {address}: {frame!r:.200}")
    return frame.message


def wait_caught_up(nodes: list[procs.Child], restarted: int) -> None:
    committed: dict[int, int] = {}
    for i, node in enumerate(nodes):
        if i != restarted:
            for p in node_status(node.address).partitions:
                committed[p.partition] = max(committed.get(p.partition, 0), p.commit_index)
    deadline = time.monotonic() + ROUND_S_MAX
    while time.monotonic() < deadline:
        try:
            applied = {p.partition: p.applied_index for p in node_status(
                nodes[restarted].address).partitions}  # fmt: skip
        except (OSError, RuntimeError):
            applied = {}
        if all(applied.get(p, 0) >= c for p, c in committed.items()):
            return
        time.sleep(0.02)
    raise TimeoutError(f"node {restarted + 1} did not catch up within {ROUND_S_MAX}s")


async def _kill_rounds(nodes: list[procs.Child], kills: int) -> tuple[list[float], int, int]:
    seeds = [node.address for node in nodes]
    acks: list[float] = []
    unsure: list[int] = []
    sent = 0
    stop = asyncio.Event()
    async with AsyncClient(seeds, request_timeout=20.0) as client:

        async def writer() -> None:
            nonlocal sent
            while not stop.is_set():
                n, sent = sent, sent + 1
                try:
                    await client.ingest(batch_events(n), delivery=DeliveryMode.SYNC)
                    acks.append(time.monotonic())
                except UnimeterError:
                    unsure.append(n)

        task = asyncio.create_task(writer())
        gaps = []
        for _ in range(kills):
            status = await client.cluster_status()
            victim = Counter(p.leader for p in status.partitions).most_common(1)[0][0] - 1
            before = len(acks)
            while len(acks) < before + 5:
                await asyncio.sleep(0.01)
            killed_at = time.monotonic()
            nodes[victim].kill()
            deadline = killed_at + ROUND_S_MAX
            while sum(t > killed_at for t in acks[-RESUMED_ACKS:]) < RESUMED_ACKS:
                if time.monotonic() > deadline:
                    raise TimeoutError("ingest did not resume after a leader was killed")
                await asyncio.sleep(0.02)
            after = [killed_at] + [t for t in acks if t > killed_at]
            gaps.append(max(b - a for a, b in itertools.pairwise(after)))
            await asyncio.to_thread(nodes[victim].start)
            await asyncio.to_thread(wait_caught_up, nodes, victim)
        stop.set()
        await asyncio.wait_for(task, ROUND_S_MAX)
        for n in unsure:  # re-sent: event ids make it count once
            await client.ingest(batch_events(n), delivery=DeliveryMode.SYNC)
        period = current_month()
        got = [(await client.query(a, "bench.m0", period)).value.sum for a in range(ACCOUNTS)]
    expected = [0] * ACCOUNTS
    for n in range(sent):
        for e in batch_events(n):
            expected[e.account_id] += 1
    if got != expected:
        raise AssertionError(f"totals after {kills} failovers differ: {got} != {expected}")
    return gaps, sent, len(unsure)


def failover(res: Results, work: Path, s: Settings, kills: int = FAILOVER_KILLS) -> None:
    with fresh_cluster(work, "failover") as running:
        gaps, sent, unsure = asyncio.run(_kill_rounds(running.nodes, kills))
    summary = ", ".join(f"{g:.2f}" for g in gaps)
    res.detail("failover", {"gaps_s": gaps, "batches": sent, "resent": unsure})
    note = f"{kills} kills of the busiest leader under SYNC load; gaps (s): {summary}; totals exact"
    res.add(Figure(
        key="failover.gap.worst", label="3-node cluster: ingest resumes after a leader kill, worst",
        value=max(gaps), unit="s", limit=GAP_S_BAR, target=GAP_S_BAR, lower_is_better=True,
        note=note,
    ))  # fmt: skip
    res.add(Figure(
        key="failover.gap.p50", label="3-node cluster: ingest resumes after a leader kill, median",
        value=statistics.median(gaps), unit="s", limit=GAP_S_MEDIAN_BAR,
        target=GAP_S_MEDIAN_BAR, lower_is_better=True, note=note,
    ))  # fmt: skip
