"""Alert webhooks end to end: real node processes, a real HTTP receiver that is down, then
failing on purpose, then up. Every alert of a threshold with a webhook is delivered, none is
lost, repeats carry the same idempotency key (and the same bytes), nothing is delivered for
thresholds without one; progress survives a restart and a leader change."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.support.http import Http
from tests.support.nodeproc import ClusterProcesses, NodeProcess
from tests.support.security import write_secret
from tests.support.webhook_receiver import Receiver
from unimeter import AsyncClient
from unimeter.model import AggType, AlertThreshold, DeliveryMode, Event, MetricSchema
from unimeter.routing import partition_of
from unimeter.webhooks.signing import idempotency_key

ACCOUNTS = 12


def schema(url: str) -> MetricSchema:
    return MetricSchema(
        code="calls",
        agg_type=AggType.SUM,
        thresholds=(
            AlertThreshold("every_10", 10, recurring=True, webhook=url),
            AlertThreshold("quiet_5", 5),  # alerts, but names no webhook: never POSTed
        ),
    )


def events(round_: int) -> list[Event]:
    """Each account's total grows by 10: one more every_10 alert per account and round."""
    return [
        Event(account_id=a, metric_code="calls", value=10, event_id=f"r{round_}-{a}")
        for a in range(ACCOUNTS)
    ]


async def expected_keys(client: AsyncClient, partitions: int) -> tuple[set[str], int]:
    """The keys of every every_10 alert, and how many quiet_5 alerts there are."""
    cluster_id = (await client.cluster_status()).cluster_id
    keys, quiet = set(), 0
    for account in range(ACCOUNTS):
        for alert in await client.list_alerts(account):
            if alert.threshold_code == "every_10":
                keys.add(
                    idempotency_key(cluster_id, partition_of(account, partitions), alert.cursor)
                )
            else:
                quiet += 1
    return keys, quiet


async def wait_logged(node: NodeProcess, text: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in node.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{node.log()}"
        await asyncio.sleep(0.05)


async def marks_caught_up(node: NodeProcess, timeout_s: float = 20.0) -> None:
    """Until every partition's logged mark has reached its alert cursor (/metrics)."""
    deadline = time.monotonic() + timeout_s
    async with Http(node.http_url) as http:
        while True:
            text = (await http.get("/metrics")).raw.decode()
            marks = _gauge(text, "unimeter_webhook_mark")
            cursors = _gauge(text, "unimeter_alert_next_cursor")
            if marks and marks == cursors:
                return
            assert time.monotonic() < deadline, (marks, cursors)
            await asyncio.sleep(0.1)


def _gauge(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name) :]] = float(value)
    return out


async def test_receiver_down_then_failing_then_up_across_a_restart(tmp_path: Path) -> None:
    secret = b"w" * 40
    receiver = Receiver(secret)
    secret_file = write_secret(tmp_path / "webhook-secret", secret)
    node = NodeProcess(
        tmp_path / "data", http=True, extra_args=("--webhook-secret-file", str(secret_file))
    ).start()
    try:
        async with AsyncClient([node.address]) as client:
            await client.metrics.create(schema(receiver.url))
            # Down: nothing listens on the receiver's port.
            await client.ingest(events(0), delivery=DeliveryMode.SYNC)
            await wait_logged(node, "event=webhook_failed")
            # Failing on purpose: 503 to every delivery.
            receiver.failing = True
            await receiver.up()
            await client.ingest(events(1), delivery=DeliveryMode.SYNC)
            deadline = time.monotonic() + 20
            while len(receiver.requests) < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert not receiver.accepted_keys()
            # Up: everything arrives.
            receiver.failing = False
            first, quiet = await expected_keys(client, node.partitions)
            assert len(first) == 2 * ACCOUNTS and quiet == ACCOUNTS
            await receiver.wait_for(first, timeout_s=90)
            receiver.check(first)
            await marks_caught_up(node)

            # Failing again, new alerts, and the node restarts before they are delivered.
            receiver.failing = True
            await client.ingest(events(2), delivery=DeliveryMode.SYNC)
            before_restart = len(receiver.requests)
        assert node.terminate() == 0
        node.start()
        restarted_at = time.monotonic()
        receiver.failing = False
        async with AsyncClient([node.address]) as client:
            every, _ = await expected_keys(client, node.partitions)
        assert len(every) == 3 * ACCOUNTS
        await receiver.wait_for(every, timeout_s=90)
        receiver.check(every)
        # What was delivered, and logged as such, before the restart is not sent again.
        again = [
            r.key
            for r in receiver.requests[before_restart:]
            if r.at >= restarted_at and r.key in first
        ]
        assert again == []
        assert {r.key for r in receiver.requests[before_restart:]} <= every - first
    finally:
        node.kill()
        await receiver.down()


async def test_a_new_leader_delivers_what_the_old_one_could_not(tmp_path: Path) -> None:
    secret = b"v" * 40
    receiver = Receiver(secret)
    secret_file = write_secret(tmp_path / "webhook-secret", secret)
    cluster = ClusterProcesses(
        tmp_path, partitions=2, extra_args=("--webhook-secret-file", str(secret_file))
    ).start()
    try:
        async with AsyncClient(cluster.seeds, request_timeout=30) as client:
            await client.metrics.create(schema(receiver.url))
            receiver.failing = True
            await receiver.up()
            await client.ingest(events(0), delivery=DeliveryMode.SYNC)
            status = await client.cluster_status()
            leaders = {p.leader for p in status.partitions}
            deadline = time.monotonic() + 20
            while len(receiver.requests) < 2:  # the old leaders tried, and were refused
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            victim = min(leaders)
            cluster.nodes[victim].kill()
            receiver.failing = False
            await client.ingest(events(1), delivery=DeliveryMode.SYNC)
            keys, _ = await expected_keys(client, 2)
            assert len(keys) == 2 * ACCOUNTS
            await receiver.wait_for(keys, timeout_s=90)
            receiver.check(keys)
            new_leaders = {p.leader for p in (await client.cluster_status()).partitions}
            assert victim not in new_leaders
    finally:
        cluster.kill_all()
        await receiver.down()


async def test_without_a_secret_nothing_is_sent_and_the_log_says_why(tmp_path: Path) -> None:
    receiver = Receiver(b"x" * 32)
    await receiver.up()
    node = NodeProcess(tmp_path / "data").start()
    try:
        async with AsyncClient([node.address]) as client:
            await client.metrics.create(schema(receiver.url))
            await client.ingest(events(0), delivery=DeliveryMode.SYNC)
            await wait_logged(node, "event=webhook_not_sent")
        await asyncio.sleep(0.5)
        assert receiver.requests == []
    finally:
        node.kill()
        await receiver.down()
