"""A 3-node cluster of real processes on 127.0.0.1: replication, failover, cluster-wide schemas.

Every scenario ends by comparing totals with what the client sent, exactly: acknowledged
batches must all be there, and batches the client was unsure of are re-sent with their event
ids, which makes the re-send safe.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.nodeproc import ClusterProcesses, NodeProcess
from tests.test_bad_input import RawConnection
from unimeter import (
    AggType,
    AsyncClient,
    DeliveryMode,
    Event,
    MetricSchema,
    UnimeterError,
    current_month,
    errors,
)
from unimeter.wire import messages as m

ACCOUNTS = 40
BATCH = 100


def batch_events(n: int) -> list[Event]:
    return [
        Event(account_id=(n * 7 + i) % ACCOUNTS, metric_code="calls", value=1, event_id=f"b{n}-{i}")
        for i in range(BATCH)
    ]


def expected_totals(batches: int) -> list[int]:
    out = [0] * ACCOUNTS
    for n in range(batches):
        for e in batch_events(n):
            out[e.account_id] += 1
    return out


async def totals(client: AsyncClient) -> list[int]:
    period = current_month()
    return [(await client.query(a, "calls", period)).value.sum for a in range(ACCOUNTS)]


async def wait_for_leaders(client: AsyncClient, timeout_s: float = 15.0) -> dict[int, int]:
    """Partition -> leader node, once every partition has one."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await client.cluster_status()
        leaders = {p.partition: p.leader for p in status.partitions}
        if all(leader > 0 for leader in leaders.values()):
            return leaders
        assert time.monotonic() < deadline, f"no leader for some partitions: {leaders}"
        await asyncio.sleep(0.1)


class Writer:
    """Ingests numbered SYNC batches until stopped, recording acks and the longest stall."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.sent = 0
        self.acked: set[int] = set()
        self.unsure: set[int] = set()
        self.ack_times: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            n = self.sent
            self.sent += 1
            try:
                await self.client.ingest(batch_events(n), delivery=DeliveryMode.SYNC)
                self.acked.add(n)
                self.ack_times.append(time.monotonic())
            except UnimeterError:
                self.unsure.add(n)

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 60)

    def longest_gap_after(self, t: float) -> float:
        times = [t] + [x for x in self.ack_times if x >= t]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    async def settle(self) -> None:
        """Re-send every batch the writer was unsure of (event ids make it safe)."""
        for n in sorted(self.unsure):
            result = await self.client.ingest(batch_events(n), delivery=DeliveryMode.SYNC)
            assert result.n_stored + result.n_duplicates == BATCH


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    procs = ClusterProcesses(tmp_path).start()
    try:
        yield procs
    finally:
        procs.kill_all()


async def node_status(node: NodeProcess) -> m.ClusterStatusReply:
    """CLUSTER_STATUS answered by this very node (a client might ask another one)."""
    conn = await RawConnection.open(node)
    try:
        frame = await conn.call(m.ClusterStatus())
    finally:
        conn.writer.close()
    assert isinstance(frame.message, m.ClusterStatusReply), frame
    return frame.message


async def commit_indexes(nodes: list[NodeProcess]) -> dict[int, int]:
    """Per partition, the highest commit index any of these nodes reports for it."""
    out: dict[int, int] = {}
    for node in nodes:
        for p in (await node_status(node)).partitions:
            out[p.partition] = max(out.get(p.partition, 0), p.commit_index)
    return out


async def applied_indexes(node: NodeProcess) -> dict[int, int]:
    """Per partition, the index this node itself has applied (empty while it cannot answer)."""
    try:
        status = await node_status(node)
    except (OSError, AssertionError):
        return {}
    assert status.node_id == int(node.extra_args[1])
    return {p.partition: p.applied_index for p in status.partitions}


async def test_schemas_are_cluster_wide_and_survive_a_node_loss(
    cluster: ClusterProcesses,
) -> None:
    async with AsyncClient([cluster.seeds[0]]) as client:
        await wait_for_leaders(client)
        await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
    # Every node serves it, asked directly.
    for node in cluster.nodes.values():
        for _ in range(50):
            conn = await RawConnection.open(node)
            frame = await conn.call(m.MetricGet(code="calls"))
            conn.close()
            if frame.status == errors.Status.OK:
                break
            await asyncio.sleep(0.1)
        assert frame.status == errors.Status.OK, f"node {node.address}: {frame}"
    cluster.nodes[1].kill()
    async with AsyncClient(cluster.seeds[1:]) as client:
        assert [s.code for s in await client.metrics.list()] == ["calls"]
        await client.metrics.create(MetricSchema(code="seats", agg_type=AggType.COUNT_UNIQUE))
        await client.ingest(
            [Event(account_id=1, metric_code="seats", value=5)], delivery=DeliveryMode.SYNC
        )
        assert (await client.query(1, "seats", current_month())).value.count == 1


async def test_killing_the_busiest_leader_under_load_keeps_totals_exact(
    cluster: ClusterProcesses,
) -> None:
    async with AsyncClient(cluster.seeds, request_timeout=20.0) as client:
        leaders = await wait_for_leaders(client)
        await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
        writer = Writer(client)
        writer.start()
        await asyncio.sleep(1.0)
        busiest = Counter(leaders.values()).most_common(1)[0][0]
        killed_at = time.monotonic()
        cluster.nodes[busiest].kill()
        await asyncio.sleep(4.0)
        await writer.stop()
        assert len(writer.acked) > 5
        gap = writer.longest_gap_after(killed_at)
        assert gap < 3.0, f"ingest stalled {gap:.2f}s after the leader was killed"
        await writer.settle()
        assert await totals(client) == expected_totals(writer.sent)
        # The killed node comes back and catches up: its own replicas apply everything the
        # survivors committed (read from the restarted node itself, not through the leaders).
        committed = await commit_indexes([n for i, n in cluster.nodes.items() if i != busiest])
        restarted = cluster.nodes[busiest]
        await asyncio.to_thread(restarted.start)
        deadline = time.monotonic() + 20.0
        while True:
            applied = await applied_indexes(restarted)
            behind = {
                p: (applied.get(p, 0), c) for p, c in committed.items() if applied.get(p, 0) < c
            }
            if not behind:
                break
            assert time.monotonic() < deadline, f"node {busiest} never caught up: {behind}"
            await asyncio.sleep(0.05)
        assert await totals(client) == expected_totals(writer.sent)


async def test_follower_loss_quorum_loss_and_full_restart(cluster: ClusterProcesses) -> None:
    async with AsyncClient(cluster.seeds, request_timeout=20.0) as client:
        leaders = await wait_for_leaders(client)
        await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
        sent = 0
        for _ in range(5):
            await client.ingest(batch_events(sent), delivery=DeliveryMode.SYNC)
            sent += 1
        # A follower of everything it does not lead: nothing stops.
        led = Counter(leaders.values())
        follower = min(cluster.nodes, key=lambda i: led.get(i, 0))
        cluster.nodes[follower].kill()
        for _ in range(5):
            await client.ingest(batch_events(sent), delivery=DeliveryMode.SYNC)
            sent += 1
        await asyncio.to_thread(cluster.nodes[follower].start)
        assert await totals(client) == expected_totals(sent)

    # Two of three gone: writes fail with a retriable error, nothing acknowledged is lost.
    survivor, *dead = list(cluster.nodes)
    for i in dead:
        cluster.nodes[i].kill()
    async with AsyncClient([cluster.nodes[survivor].address], request_timeout=2.0) as client:
        with pytest.raises(UnimeterError) as info:
            await client.ingest(batch_events(sent), delivery=DeliveryMode.SYNC)
        assert info.value.retriable
    unsure = sent
    sent += 1
    await asyncio.to_thread(cluster.nodes[dead[0]].start)
    async with AsyncClient(cluster.seeds, request_timeout=20.0) as client:
        result = await client.ingest(batch_events(unsure), delivery=DeliveryMode.SYNC)
        assert result.n_stored + result.n_duplicates == BATCH
        assert await totals(client) == expected_totals(sent)

    # Everything down at once, everything back: the same totals.
    cluster.kill_all()
    await asyncio.gather(*(asyncio.to_thread(n.start) for n in cluster.nodes.values()))
    async with AsyncClient(cluster.seeds, request_timeout=20.0) as client:
        await wait_for_leaders(client)
        assert await totals(client) == expected_totals(sent)


async def test_four_nodes_with_three_replicas_spread_leaders_and_route_everywhere(
    tmp_path: Path,
) -> None:
    """With replication factor 3 on 4 nodes each node hosts only some partitions: the map
    still names every leader (leaders announce themselves to every node), leadership settles
    on each partition's preferred node (two partitions per node), and every total is exact
    whichever node a client starts from."""
    procs = ClusterProcesses(tmp_path, nodes=4, partitions=8).start()
    try:
        async with AsyncClient([procs.seeds[0]], request_timeout=20.0) as client:
            await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
            sent = 0
            for _ in range(4):
                await client.ingest(batch_events(sent), delivery=DeliveryMode.SYNC)
                sent += 1
            deadline = time.monotonic() + 20
            while True:
                leaders = await wait_for_leaders(client)
                if sorted(Counter(leaders.values()).values()) == [2, 2, 2, 2]:
                    break
                assert time.monotonic() < deadline, f"leaders never spread: {leaders}"
                await asyncio.sleep(0.2)
        for seed in procs.seeds:
            async with AsyncClient([seed], request_timeout=20.0) as client:
                status = await client.cluster_status()
                assert {p.partition: p.leader for p in status.partitions} == leaders
                assert await totals(client) == expected_totals(sent)
    finally:
        procs.kill_all()
