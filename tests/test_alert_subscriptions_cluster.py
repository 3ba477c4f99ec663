"""A live alert subscription on a 3-node cluster whose partition leader is killed.

The subscriber follows every partition; one partition's leader node is SIGKILLed while alerts
keep firing there, then restarted and handed its leadership back. Each time the client must
subscribe again at the new leader from its cursor, so that in the end it has handed out
exactly the alerts the cluster stored, each once, in cursor order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.nodeproc import ClusterProcesses
from tests.test_cluster import wait_for_leaders
from unimeter import AggType, AlertThreshold, AsyncClient, DeliveryMode, Event, MetricSchema
from unimeter.model import AlertRecord
from unimeter.routing import partition_of

PARTITIONS = 6  # ClusterProcesses default
WAIT_S = 30.0


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    procs = ClusterProcesses(tmp_path).start()
    try:
        yield procs
    finally:
        procs.kill_all()


async def test_the_subscription_survives_killing_the_partition_leader(
    cluster: ClusterProcesses,
) -> None:
    async with AsyncClient(cluster.seeds, request_timeout=30) as client:
        await client.metrics.create(
            MetricSchema(
                code="calls", agg_type=AggType.COUNT, thresholds=[AlertThreshold("e3", 3, True)]
            )
        )
        leaders = await wait_for_leaders(client)
        accounts = list(range(24))
        target = partition_of(accounts[0], PARTITIONS)
        in_target = [a for a in accounts if partition_of(a, PARTITIONS) == target]
        victim = leaders[target]

        async def fire(group: list[int]) -> None:
            events = [Event(account_id=a, metric_code="calls") for a in group for _ in range(3)]
            await client.ingest(events, delivery=DeliveryMode.SYNC)

        got: list[AlertRecord] = []
        async with client.alerts.subscribe() as sub:

            async def take(n: int) -> None:
                async with asyncio.timeout(WAIT_S):
                    for _ in range(n):
                        got.append(await anext(sub))

            await fire(accounts)  # one alert per account
            await take(len(accounts))

            cluster.nodes[victim].kill()
            # Keep firing in the orphaned partition (the client's retries find the new
            # leader) and elsewhere; the subscription must follow to the new leader.
            for _ in range(3):
                await fire(in_target)
            await fire(accounts)
            await take(3 * len(in_target) + len(accounts))

            # The victim comes back and is handed its leadership back (it is the partition's
            # preferred node): the interim leader ends the subscription with NOT_LEADER while
            # the connection stays up, and the client follows to the victim. Fire until the
            # hand-back happened, then once more: that alert can only come from the victim.
            cluster.nodes[victim].start()
            async with asyncio.timeout(WAIT_S):
                while (await client.cluster_status()).partitions[target].leader != victim:
                    await fire(in_target)
                    await take(len(in_target))
            await fire(in_target)
            await take(len(in_target))
            cursors = sub.cursors

        seen: set[tuple[int, int]] = set()
        last: dict[int, int] = {}
        for record in got:
            p = partition_of(record.account_id, PARTITIONS)
            assert (p, record.cursor) not in seen, f"alert {(p, record.cursor)} twice"
            assert record.cursor > last.get(p, -1), f"partition {p} went back"
            seen.add((p, record.cursor))
            last[p] = record.cursor
        stored = {
            (partition_of(a, PARTITIONS), alert.cursor): alert
            for a in accounts
            for alert in await client.list_alerts(a)
        }
        assert {(partition_of(r.account_id, PARTITIONS), r.cursor): r for r in got} == stored
        assert cursors[target] == max(c for p, c in stored if p == target)
