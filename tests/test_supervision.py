"""Fail-stop: an unexpected exception anywhere in a real node process ends it, loudly.

Each test plants one fault (``UNIMETER_PLANTED_FAULT``, read by ``unimeter.testing_switches``)
in a ``python -m unimeter.node`` child: in a partition core's step, in the loop callback of a
finished fsync, in a runtime task. The node must log the traceback and exit with the crash
status on its own (so a supervisor restarts it), and a restart without the fault must recover
every acknowledged event. Before supervision, the first fault left the node running with a
dead partition that answered BACKPRESSURE for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

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
from unimeter.supervisor import EXIT_CRASHED

EXIT_WAIT_S = 15.0
SCHEMA = MetricSchema(code="calls", agg_type=AggType.SUM)


def assert_crashed_loudly(node: NodeProcess, status: int | None, where: str) -> None:
    log = node.log()
    assert status == EXIT_CRASHED, f"exit status {status}, log:\n{log}"
    assert "event=crashed" in log and where in log, log
    assert "Traceback" in log and "PlantedFault" in log, log


async def total(address: str, account: int) -> int:
    async with AsyncClient([address], request_timeout=10.0) as client:
        return (await client.query(account, "calls", current_month())).value.sum


async def test_a_core_step_that_raises_stops_the_node_and_a_restart_recovers(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    faulty = NodeProcess(data, partitions=2, env={"UNIMETER_PLANTED_FAULT": "partition-step"})
    faulty.start()
    try:
        async with AsyncClient([faulty.address], request_timeout=3.0) as client:
            await client.metrics.create(SCHEMA)  # the catalog is not planted
            with pytest.raises((UnimeterError, OSError)):
                await client.ingest(
                    [Event(account_id=1, metric_code="calls", value=5)],
                    delivery=DeliveryMode.SYNC,
                )
        status = await asyncio.to_thread(faulty.wait_exit, EXIT_WAIT_S)
        assert_crashed_loudly(faulty, status, "where=actor:partition-")
    finally:
        faulty.kill()
    healthy = NodeProcess(data, partitions=2, port=faulty.port).start()
    try:
        async with AsyncClient([healthy.address], request_timeout=10.0) as client:
            await client.ingest(
                [Event(account_id=1, metric_code="calls", value=5)], delivery=DeliveryMode.SYNC
            )
        assert await total(healthy.address, 1) == 5  # the schema survived; nothing doubled
    finally:
        healthy.kill()


@pytest.mark.parametrize(
    ("fault", "where"),
    [("fsync-callback", "where=loop:"), ("disk-watch-task", "where=task:disk-watch")],
)
async def test_a_failing_loop_callback_or_task_stops_the_node(
    tmp_path: Path, fault: str, where: str
) -> None:
    data = tmp_path / "data"
    node = NodeProcess(data, partitions=2, env={"UNIMETER_PLANTED_FAULT": fault})
    try:
        try:
            node.start(timeout_s=EXIT_WAIT_S)
        except RuntimeError:
            pass  # the fault struck before the node listened (recovery fsyncs too)
        else:
            with contextlib.suppress(UnimeterError, OSError):
                async with AsyncClient([node.address], request_timeout=3.0) as client:
                    await client.metrics.create(SCHEMA)  # makes fsyncs happen if none did yet
        status = await asyncio.to_thread(node.wait_exit, EXIT_WAIT_S)
        assert_crashed_loudly(node, status, where)
    finally:
        node.kill()
    NodeProcess(data, partitions=2, port=node.port).start().kill()  # recovers and listens
