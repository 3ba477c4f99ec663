"""A real node keeps every total, unique set, schema and alert across restarts.

Restarts are done both ways: SIGTERM (drain, sync, snapshot, exit 0) and SIGKILL right after
SYNC acknowledgements (recovery from the write-ahead log alone).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.nodeproc import NodeProcess
from unimeter import (
    AggType,
    AlertThreshold,
    AsyncClient,
    DeliveryMode,
    DimensionFilter,
    Event,
    MetricSchema,
    OperationType,
    Period,
    current_month,
)

SCHEMAS = [
    MetricSchema(
        code="api_calls",
        agg_type=AggType.COUNT,
        thresholds=[AlertThreshold(code="hundred", value=100)],
    ),
    MetricSchema(
        code="compute",
        agg_type=AggType.SUM,
        filters=[DimensionFilter(key="provider", values=["aws", "gcp"])],
    ),
    MetricSchema(code="seats", agg_type=AggType.COUNT_UNIQUE, recurring=True),
    MetricSchema(code="balance", agg_type=AggType.LATEST),
    MetricSchema(code="peak", agg_type=AggType.MAX),
]
ACCOUNTS = range(1, 21)


def workload(round_no: int) -> list[Event]:
    base = datetime.now(UTC) - timedelta(seconds=30)
    events: list[Event] = []
    for a in ACCOUNTS:
        for j in range(6):
            ts = base + timedelta(milliseconds=round_no * 100 + j)
            events.append(
                Event(
                    account_id=a,
                    metric_code="api_calls",
                    timestamp=ts,
                    event_id=f"r{round_no}-{a}-{j}",
                )
            )
            events.append(
                Event(
                    account_id=a,
                    metric_code="compute",
                    value=1000 * (j + 1),
                    timestamp=ts,
                    properties={"provider": ("aws", "gcp")[j % 2]},
                )
            )
            events.append(
                Event(
                    account_id=a,
                    metric_code="seats",
                    value=a * 100 + j,
                    operation_type=OperationType.ADD,
                    timestamp=ts,
                )
            )
            events.append(
                Event(account_id=a, metric_code="balance", value=round_no * 10 + j, timestamp=ts)
            )
            events.append(
                Event(account_id=a, metric_code="peak", value=(round_no * 7 + j) % 50, timestamp=ts)
            )
    return events


async def snapshot_of(client: AsyncClient) -> dict[str, object]:
    """Everything observable about the workload's accounts."""
    period: Period = current_month()
    seen: dict[str, object] = {"schemas": sorted(s.code for s in await client.metrics.list())}
    for a in ACCOUNTS:
        for schema in SCHEMAS:
            usage = await client.query(a, schema.code, period)
            seen[f"{a}/{schema.code}"] = usage.value
        aws = await client.query(a, "compute", period, filters={"provider": "aws"})
        seen[f"{a}/compute/aws"] = aws.value
        seen[f"{a}/alerts"] = [
            (r.metric_code, r.threshold_code, r.value_at_cross) for r in await client.list_alerts(a)
        ]
    return seen


async def fill(node: NodeProcess, rounds: int) -> dict[str, object]:
    async with AsyncClient([node.address]) as client:
        for schema in SCHEMAS:
            await client.metrics.create(schema)
        for r in range(rounds):
            result = await client.ingest(workload(r), delivery=DeliveryMode.SYNC)
            assert result.n_rejected == 0, result.rejected
        # Retried event ids are never counted again, across the restart too.
        again = await client.ingest(workload(0), delivery=DeliveryMode.SYNC)
        assert again.n_duplicates == len(ACCOUNTS) * 6
        return await snapshot_of(client)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_restart_keeps_everything(tmp_path: Path, how: str) -> None:
    node = NodeProcess(tmp_path / "data").start()
    try:
        before = await fill(node, rounds=20)
        assert before["1/api_calls"].count == 120  # type: ignore[attr-defined]
        assert before["1/api_calls"].alert_flags == 1  # type: ignore[attr-defined]
        assert before["1/alerts"] == [("api_calls", "hundred", 100)]
        if how == "sigterm":
            assert node.terminate() == 0
        else:
            node.kill()
        node.start()
        async with AsyncClient([node.address]) as client:
            after = await snapshot_of(client)
            assert after == before
            # And the node keeps going from where it was.
            await client.ingest(workload(99)[:5], delivery=DeliveryMode.SYNC)
            usage = await client.query(1, "api_calls", current_month())
            assert usage.value.count == 121
        assert node.terminate() == 0
        assert "event=stopped" in node.log()
    finally:
        node.kill()
