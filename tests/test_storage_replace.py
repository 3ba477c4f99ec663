"""Replacing a dead node of a 3-node cluster with an empty data directory (docs/operations.md).

While node 3 is down, the other two keep ingesting, snapshot and compact their logs past
everything node 3 had, so the new node 3 -- same ``--node-id``, empty ``--data-dir`` -- can
only catch up from a leader's snapshot (InstallSnapshot). Afterwards its own files, read
offline, must hold exactly the acknowledged totals, and it must carry a quorum with node 2 once
node 1 is gone.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from tests.support.nodeproc import ClusterProcesses
from tests.test_cluster import Writer, batch_events, expected_totals, totals, wait_for_leaders
from tests.test_storage_retention import recover_offline
from unimeter import AggType, AsyncClient, DeliveryMode, MetricSchema, current_month
from unimeter.storage.snapshot import snapshot_indexes

PARTITIONS = 3
WAIT_S = 30.0


def compacted(directory: Path) -> bool:
    """The replica's log no longer starts at index 1: an empty peer needs a snapshot."""
    firsts = sorted(int(p.name[:-4]) for p in directory.glob("*.wal"))
    return bool(firsts) and firsts[0] > 1 and len(snapshot_indexes(directory)) == 2


def partition_dirs(cluster: ClusterProcesses, node: int) -> list[Path]:
    return sorted((cluster.nodes[node].data_dir / "partitions").iterdir())


async def wait_until(what: str, check: object) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_an_empty_replacement_node_catches_up_from_a_snapshot(tmp_path: Path) -> None:
    cluster = ClusterProcesses(tmp_path, nodes=3, partitions=PARTITIONS)
    for node in cluster.nodes.values():
        node.extra_args = (
            *node.extra_args,
            "--snapshot-entries", "5", "--snapshot-bytes", "0", "--wal-segment-bytes", "4096",
        )  # fmt: skip
    cluster.start()
    try:
        async with AsyncClient(cluster.seeds, request_timeout=20.0) as client:
            await wait_for_leaders(client)
            await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
            writer = Writer(client)
            writer.start()
            await wait_until("some acknowledged batches", lambda: len(writer.acked) >= 10)

            dead = cluster.nodes[3]
            dead.kill()
            await wait_until(
                "nodes 1 and 2 to compact their logs",
                lambda: all(compacted(d) for n in (1, 2) for d in partition_dirs(cluster, n)),
            )
            shutil.rmtree(dead.data_dir)  # the disk is lost; a new one, empty
            await asyncio.to_thread(dead.start)
            await wait_until(
                "node 3 to install snapshots",
                lambda: (
                    len(partition_dirs(cluster, 3)) == PARTITIONS
                    and all(snapshot_indexes(d) for d in partition_dirs(cluster, 3))
                ),
            )
            await writer.stop()
            await writer.settle()
            want = expected_totals(writer.sent)
            assert await totals(client) == want

            # Node 1 goes: nodes 2 and 3 must form the quorum, so node 3 must hold the data.
            cluster.nodes[1].kill()
        async with AsyncClient(cluster.seeds[1:], request_timeout=20.0) as client:
            await wait_for_leaders(client)
            assert await totals(client) == want
            period = current_month()
            await client.ingest(batch_events(writer.sent), delivery=DeliveryMode.SYNC)
            assert (await client.query(0, "calls", period)).value.sum >= want[0]

        # Read node 3's files offline: each partition is a snapshot plus the log after it.
        assert dead.terminate() == 0
        cluster.nodes[2].kill()
        offline = [0] * len(want)
        for directory in partition_dirs(cluster, 3):
            firsts = sorted(int(p.name[:-4]) for p in directory.glob("*.wal"))
            assert firsts[0] > 1, "node 3 replayed the whole log instead of a snapshot"
            state = recover_offline(directory)
            for account in range(len(want)):
                offline[account] += state.query(
                    "calls", account, int(period.start.timestamp() * 1e6),
                    int(period.end.timestamp() * 1e6),
                ).sum  # fmt: skip
        assert offline == expected_totals(writer.sent + 1)
    finally:
        cluster.kill_all()
