"""The whole client surface against a real node: every call of docs/client.md one node serves."""

from __future__ import annotations

import asyncio
from array import array
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.nodeproc import NodeProcess
from tests.test_bad_input import RawConnection
from unimeter import (
    AggType,
    AlertThreshold,
    AlreadyExistsError,
    AsyncClient,
    DeliveryMode,
    DimensionFilter,
    Event,
    InvalidRequestError,
    MetricSchema,
    NotFoundError,
    OperationType,
    Period,
    UnknownMetricError,
    current_month,
    errors,
)
from unimeter.routing import partition_of
from unimeter.wire import messages as m

COMPUTE = MetricSchema(
    code="compute",
    agg_type=AggType.SUM,
    filters=[
        DimensionFilter(key="provider", values=["aws", "gcp"]),
        DimensionFilter(key="region", values=["us", "eu"]),
    ],
    thresholds=[AlertThreshold(code="every_100", value=100, recurring=True)],
)


async def test_metrics_lifecycle(node: NodeProcess) -> None:
    async with AsyncClient([node.address]) as client:
        created = await client.metrics.create(COMPUTE)
        assert created == COMPUTE.normalized()
        assert await client.metrics.create(COMPUTE) == created  # a retried create is safe
        with pytest.raises(AlreadyExistsError):
            await client.metrics.create(MetricSchema(code="compute", agg_type=AggType.MAX))
        updated = MetricSchema(code="compute", agg_type=AggType.SUM, recurring=False)
        await client.metrics.update(updated)
        assert (await client.metrics.get("compute")).filters == ()
        with pytest.raises(InvalidRequestError, match="agg_type"):
            await client.metrics.update(MetricSchema(code="compute", agg_type=AggType.COUNT))
        await client.metrics.delete("compute")
        with pytest.raises(NotFoundError):
            await client.metrics.get("compute")
        with pytest.raises(UnknownMetricError):
            await client.query(1, "compute", current_month())


async def test_breakdown_filters_alerts_and_events(node: NodeProcess) -> None:
    now = datetime.now(UTC) - timedelta(seconds=10)
    combos = [("aws", "us"), ("aws", "eu"), ("gcp", "us"), ("gcp", "eu")]
    events = [
        Event(
            account_id=9,
            metric_code="compute",
            value=10 * (i % 4 + 1),
            timestamp=now + timedelta(microseconds=i),
            properties={"provider": combos[i % 4][0], "region": combos[i % 4][1]},
        )
        for i in range(2500)
    ]
    async with AsyncClient([node.address]) as client:
        await client.metrics.create(COMPUTE)
        for i in range(0, len(events), 500):
            await client.ingest(events[i : i + 500])
        period = current_month()
        total = await client.query(9, "compute", period)
        assert total.value.count == 2500 and total.value.sum == 625 * (10 + 20 + 30 + 40)
        aws = await client.query(9, "compute", period, filters={"provider": "aws"})
        assert aws.value.sum == 625 * (10 + 20)
        both = await client.query(9, "compute", period, filters={"provider": "gcp", "region": "eu"})
        assert both.value.sum == 625 * 40
        with pytest.raises(InvalidRequestError, match="plan"):
            await client.query(9, "compute", period, filters={"plan": "pro"})
        cells = await client.query_breakdown(9, "compute", period, group_by=["provider"])
        assert {k: v.sum for k, v in cells.items()} == {
            frozenset({("provider", "aws")}): 625 * 30,
            frozenset({("provider", "gcp")}): 625 * 70,
        }
        # Recurring threshold of 100: fires at every multiple the running total reaches.
        alerts = await client.list_alerts(9)
        assert len(alerts) == total.value.sum // 100
        later = await client.list_alerts(9, since=alerts[9].cursor)
        assert later == alerts[10:]
        # list_events pages underneath (1000 per page) and returns every event in log order.
        listed = [
            e async for e in client.list_events(9, now - timedelta(seconds=1), datetime.now(UTC))
        ]
        assert len(listed) == 2500
        assert [e.value for e in listed] == [e.value for e in events]
        assert [e.properties for e in listed] == [dict(e.properties) for e in events]
        offsets = [e.offset for e in listed]
        assert offsets == sorted(offsets) and len(set(offsets)) == 2500


async def test_unique_and_latest_and_arbitrary_ranges(node: NodeProcess) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    async with AsyncClient([node.address]) as client:
        await client.metrics.create(MetricSchema(code="seats", agg_type=AggType.COUNT_UNIQUE))
        await client.metrics.create(MetricSchema(code="balance", agg_type=AggType.LATEST))
        seats = [
            Event(
                account_id=5,
                metric_code="seats",
                value=u,
                operation_type=op,
                timestamp=start + timedelta(minutes=i),
            )
            for i, (u, op) in enumerate(
                [
                    (1, OperationType.ADD),
                    (2, OperationType.ADD),
                    (1, OperationType.ADD),
                    (3, OperationType.ADD),
                    (2, OperationType.REMOVE),
                ]
            )
        ]
        balance = [
            Event(
                account_id=5,
                metric_code="balance",
                value=v,
                timestamp=start + timedelta(minutes=m_),
            )
            for v, m_ in [(100, 0), (300, 30), (200, 10)]
        ]
        await client.ingest(seats + balance, delivery=DeliveryMode.SYNC)
        period = current_month()
        assert (await client.query(5, "seats", period)).value.count == 2  # {1, 3}
        latest = (await client.query(5, "balance", period)).value
        assert latest.last_value == 300 and latest.last_timestamp == start + timedelta(minutes=30)
        # An arbitrary window covering only the first 15 minutes: edges from stored events.
        window = Period(start, start + timedelta(minutes=15))
        assert (await client.query(5, "balance", window)).value.last_value == 200
        # The seat set over [3 min, 15 min): ADD 3 then REMOVE 2 in that window -> {3}.
        late = Period(start + timedelta(minutes=3), start + timedelta(minutes=15))
        assert (await client.query(5, "seats", late)).value.count == 1
        assert (await client.query(5, "seats", window)).value.count == 2


async def test_a_retried_batch_is_answered_with_the_original_result(node: NodeProcess) -> None:
    async with AsyncClient([node.address]) as client:
        await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.COUNT))
    account = 77
    part = partition_of(account, node.partitions)
    batch = m.EventBatch(
        metric_codes=("calls",),
        metric_index=array("B", [0, 0]),
        account_ids=array("Q", [account, account]),
        values=array("q", [1, 1]),
    )
    conn = await RawConnection.open(node)
    replies = []
    for sync in (False, True, True):
        frame = await conn.call(
            m.Ingest(
                partition=part, producer_id=99, seq=1, sync=sync, catalog_version=1, batch=batch
            )
        )
        assert frame.status == errors.Status.OK
        replies.append(frame.message)
    # Pipelined duplicates of a new seq in flight at once: applied once, all answered alike.
    rids = []
    for _ in range(3):
        rid = conn.next_id
        conn.next_id += 1
        conn.writer.write(
            conn.codec.encode_request(
                rid,
                m.Ingest(
                    partition=part, producer_id=99, seq=2, sync=True, catalog_version=1, batch=batch
                ),
            )
        )
        rids.append(rid)
    frames = [await conn.read() for _ in rids]
    conn.close()
    assert replies[0] == replies[1] == replies[2]
    assert len({f.message for f in frames}) == 1
    async with AsyncClient([node.address]) as client:
        usage = await client.query(account, "calls", current_month())
        assert usage.value.count == 4


async def test_read_your_writes_with_async_delivery(node: NodeProcess) -> None:
    async with AsyncClient([node.address]) as client:
        await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.COUNT))
        for i in range(20):
            await client.ingest([Event(account_id=i, metric_code="calls")] * 3)
            usage = await client.query(i, "calls", current_month())
            assert usage.value.count == 3


async def test_event_ids_deduplicate_across_clients(node: NodeProcess) -> None:
    events = [Event(account_id=1, metric_code="calls", event_id=f"e{i}") for i in range(10)]
    async with AsyncClient([node.address]) as a, AsyncClient([node.address]) as b:
        await a.metrics.create(MetricSchema(code="calls", agg_type=AggType.COUNT))
        first, second = await asyncio.gather(a.ingest(events), b.ingest(events))
        assert first.n_stored + second.n_stored == 10
        assert first.n_duplicates + second.n_duplicates == 10
        assert (await a.query(1, "calls", current_month())).value.count == 10
