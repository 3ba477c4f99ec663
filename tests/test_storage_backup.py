"""The online backup procedure of docs/operations.md, run against a node that keeps ingesting.

The copy is taken file by file with plain copies while SYNC writes go on, snapshots are taken
and the WAL is compacted under it (small thresholds make all of that happen during the copy).
A node started on the copy must hold every batch acknowledged before the copy began, nothing
twice, and accept the re-sent batches as duplicates (event ids), ending with exact totals.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
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
from unimeter.storage.snapshot import snapshot_indexes

ACCOUNTS = 24
BATCH = 40


class RetryBackup(Exception):
    """Compaction ran past the copied snapshots while copying: take the copy again."""


def copy_if_present(path: Path, target_dir: Path) -> bool:
    try:
        shutil.copy2(path, target_dir / path.name)
    except FileNotFoundError:  # pruned or compacted since it was listed
        return False
    return True


def backup_running_node(
    data_dir: Path, target: Path, after_snapshots: Callable[[Path], None] = lambda _: None
) -> None:
    """docs/operations.md, "Backup while the node runs", step by step. ``after_snapshots``
    (tests only) runs between copying a replica's snapshots and the rest."""
    target.mkdir(parents=True)
    shutil.copy2(data_dir / "cluster.cbor", target)
    replicas = [data_dir / "catalog", *sorted((data_dir / "partitions").iterdir())]
    for replica in replicas:
        out = target / replica.relative_to(data_dir)
        out.mkdir(parents=True)
        # 1. Snapshots first, newest first.
        for snap in sorted(replica.glob("snapshot-*.snap"), reverse=True):
            copy_if_present(snap, out)
        after_snapshots(replica)
        # 2. Then the hard state.
        copy_if_present(replica / "raft-state.cbor", out)
        # 3. Then the WAL segments, oldest first. If one vanished (compacted), the ones copied
        #    before it are older still: drop them, the log must stay contiguous.
        copied: list[Path] = []
        for segment in sorted(replica.glob("*.wal")):
            if copy_if_present(segment, out):
                copied.append(out / segment.name)
            else:
                for stale in copied:
                    stale.unlink()
                copied.clear()
        # 4. The log must reach back to the newest snapshot copied.
        snaps = snapshot_indexes(out)
        firsts = [int(p.name[: -len(".wal")]) for p in copied]
        if snaps and (not firsts or firsts[0] > max(snaps) + 1):
            raise RetryBackup(f"{replica.name}: WAL starts at {firsts[:1]}, snapshot {max(snaps)}")


def batch_events(n: int) -> list[Event]:
    return [
        Event(account_id=(n * 5 + i) % ACCOUNTS, metric_code="calls", value=i + 1,
              event_id=f"bk-{n}-{i}")
        for i in range(BATCH)
    ]  # fmt: skip


def totals_of(batches: set[int]) -> list[int]:
    out = [0] * ACCOUNTS
    for n in batches:
        for e in batch_events(n):
            out[e.account_id] += e.value
    return out


async def totals(client: AsyncClient) -> list[int]:
    period = current_month()
    return [(await client.query(a, "calls", period)).value.sum for a in range(ACCOUNTS)]


async def test_copy_of_a_running_node_restores_every_acknowledged_batch(tmp_path: Path) -> None:
    node = NodeProcess(
        tmp_path / "data",
        partitions=3,
        extra_args=("--snapshot-entries", "6", "--snapshot-bytes", "0",
                    "--wal-segment-bytes", "8192"),
    )  # fmt: skip
    restored = NodeProcess(tmp_path / "restored", partitions=3)
    sent = 0
    acked: set[int] = set()
    try:
        node.start()
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
                        pass  # re-sent below like every batch

            task = asyncio.create_task(writer())
            while len(acked) < 60:
                await asyncio.sleep(0.01)
            before_copy = set(acked)

            def new_snapshot_meanwhile(replica: Path) -> None:
                """Make the race happen: a snapshot (and its WAL compaction) lands between
                the copy of the snapshots and the copy of the log."""
                if replica.parent.name != "partitions":
                    return
                seen = max(snapshot_indexes(replica), default=0)
                deadline = time.monotonic() + 20
                while max(snapshot_indexes(replica), default=0) == seen:
                    assert time.monotonic() < deadline, f"no new snapshot in {replica}"
                    time.sleep(0.005)
                compacted.append(replica.name)

            compacted: list[str] = []
            for attempt in range(5):
                shutil.rmtree(restored.data_dir, ignore_errors=True)
                try:
                    await asyncio.to_thread(
                        backup_running_node,
                        node.data_dir,
                        restored.data_dir,
                        new_snapshot_meanwhile,
                    )
                    break
                except RetryBackup:
                    assert attempt < 4, "the backup never got a consistent copy"
            assert len(compacted) >= 3
            deadline = time.monotonic() + 20
            while len(acked) < len(before_copy) + 60:  # the node went on meanwhile
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.wait_for(task, 30)

        node.kill()
        restored.start()
        async with AsyncClient([restored.address], request_timeout=20.0) as client:
            got = await totals(client)
            low, high = totals_of(before_copy), totals_of(set(range(sent)))
            assert all(lo <= g <= hi for lo, g, hi in zip(low, got, high, strict=True)), got
            for n in range(sent):  # a restore is followed by re-sending what may be missing
                result = await client.ingest(batch_events(n), delivery=DeliveryMode.SYNC)
                assert result.n_stored + result.n_duplicates == BATCH
            assert await totals(client) == totals_of(set(range(sent)))
            again = await client.ingest(batch_events(0), delivery=DeliveryMode.SYNC)
            assert again.n_duplicates == BATCH
    finally:
        node.kill()
        restored.kill()
