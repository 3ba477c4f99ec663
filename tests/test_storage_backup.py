"""Online backup (``python -m unimeter.backup``) of a node that keeps ingesting.

A writer sends SYNC batches, one at a time, each batch to the accounts of a single partition, to
a node that snapshots and compacts its WAL every few entries (small thresholds), so deletions
would race every copy. The test takes backups one after another; every copy must start as a
node, and each of its partitions must hold *exactly* the first k batches sent to that partition
-- at least all acknowledged before that backup began, nothing twice, nothing invented. Before
the backup tool, the documented file-by-file procedure sometimes produced a copy that refused
to start ("gap in the log": compaction ran during the copy).

``UNIMETER_BACKUPS`` sets the number of backups (10; 30 with ``UNIMETER_SLOW=1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
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
from unimeter.routing import partition_of
from unimeter.storage import backup as backup_module
from unimeter.storage.backup import RemovalGuard, backup

SLOW = os.environ.get("UNIMETER_SLOW") == "1"
BACKUPS = int(os.environ.get("UNIMETER_BACKUPS", "30" if SLOW else "10"))
PARTITIONS = 3
ACCOUNTS = list(range(30))
BY_PARTITION = [[a for a in ACCOUNTS if partition_of(a, PARTITIONS) == p] for p in range(3)]
BATCH = 20
WAIT_S = 30.0


def batch_events(n: int) -> list[Event]:
    accounts = BY_PARTITION[n % PARTITIONS]
    return [
        Event(account_id=accounts[(n + i) % len(accounts)], metric_code="calls", value=i + n,
              event_id=f"bk-{n}-{i}")
        for i in range(BATCH)
    ]  # fmt: skip


def prefix_totals(partition: int, most: int) -> list[dict[int, int]]:
    """The partition's account totals after each of its first 0..most batches."""
    running = dict.fromkeys(BY_PARTITION[partition], 0)
    out = [dict(running)]
    for n in range(partition, most * PARTITIONS, PARTITIONS):
        for e in batch_events(n):
            running[e.account_id] += e.value
        out.append(dict(running))
    return out


async def totals(address: str) -> dict[int, int]:
    async with AsyncClient([address], request_timeout=20.0) as client:
        period = current_month()
        return {a: (await client.query(a, "calls", period)).value.sum for a in ACCOUNTS}


def backup_lock(data_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The lock a backup holds while it copies (what ``backup`` takes itself)."""
    return backup_module._exclusive(data_dir / backup_module.LOCK_FILE)


def check_copy(got: dict[int, int], acked_before: int, sent: int, label: str) -> None:
    """Each partition holds exactly its first k batches, all acked ones at least."""
    for p in range(PARTITIONS):
        mine = {a: got[a] for a in BY_PARTITION[p]}
        least = len(range(p, acked_before, PARTITIONS))
        most = len(range(p, sent, PARTITIONS))
        prefixes = prefix_totals(p, most)
        matches = [k for k in range(least, most + 1) if prefixes[k] == mine]
        assert matches, f"{label}: partition {p} holds no prefix of {least}..{most} batches"


async def test_backups_of_a_busy_node_each_start_with_exact_totals(tmp_path: Path) -> None:
    node = NodeProcess(
        tmp_path / "data",
        partitions=PARTITIONS,
        extra_args=("--snapshot-entries", "6", "--snapshot-bytes", "0",
                    "--wal-segment-bytes", "8192"),
    )  # fmt: skip
    sent = 0
    acked = 0  # batches 0..acked-1 are all acknowledged (one writer, one batch at a time)
    retried = 0
    node.start()
    try:
        async with AsyncClient([node.address], request_timeout=20.0) as client:
            await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
            stop = asyncio.Event()

            async def writer() -> None:
                nonlocal sent, acked
                while not stop.is_set():
                    sent += 1
                    while True:  # the same batch until acknowledged: the log stays in order
                        try:
                            await client.ingest(batch_events(sent - 1), delivery=DeliveryMode.SYNC)
                            break
                        except UnimeterError:
                            await asyncio.sleep(0.05)
                    acked = sent

            task = asyncio.create_task(writer())
            # While a backup holds the lock, the node's snapshots delete nothing (held here for
            # a few snapshots' time, so the deferral surely happens, not only by chance).
            with backup_lock(node.data_dir):
                deadline = time.monotonic() + WAIT_S
                while "event=deletion_deferred" not in node.log_path.read_text():
                    assert time.monotonic() < deadline, f"no deletion was held off:\n{node.log()}"
                    assert not task.done(), task
                    await asyncio.sleep(0.01)
            for i in range(BACKUPS):
                while acked < 12 * (i + 2):  # the node moved on: snapshots, compactions
                    assert not task.done(), task
                    await asyncio.sleep(0.005)
                before = acked
                copy = tmp_path / f"copy{i}"
                if i == 0:  # once through the command line, as an operator runs it
                    done = await asyncio.to_thread(
                        subprocess.run,
                        [sys.executable, "-m", "unimeter.backup", str(copy),
                         "--data-dir", str(node.data_dir)],
                        capture_output=True, text=True, timeout=WAIT_S,
                    )  # fmt: skip
                    assert done.returncode == 0, done.stderr
                    assert "backed up" in done.stdout
                else:
                    report = await asyncio.to_thread(backup, node.data_dir, copy)
                    retried += report.retries
                restored = NodeProcess(copy, partitions=PARTITIONS)
                await asyncio.to_thread(restored.start)
                try:
                    got = await totals(restored.address)
                finally:
                    restored.kill()
                check_copy(got, before, sent, f"backup {i}")
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
        deferred = node.log_path.read_text().count("event=deletion_deferred")
        print(f"backups={BACKUPS} batches={sent} retried={retried} deferred={deferred}")
    finally:
        node.kill()


def test_a_backup_holds_off_deletions_and_refuses_an_existing_target(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "cluster.cbor").write_bytes(b"\xa0")
    guard = RemovalGuard(data)
    with guard.removals() as allowed:
        assert allowed
    with backup_lock(data), guard.removals() as allowed:
        assert not allowed  # the node skips compaction and pruning while a copy runs
    assert guard.skipped == 1
    report = backup(data, tmp_path / "copy")
    assert report.files == 1 and (tmp_path / "copy" / "cluster.cbor").read_bytes() == b"\xa0"
    try:
        backup(data, tmp_path / "copy")
    except backup_module.BackupError as exc:
        assert "exists already" in str(exc)
    else:
        raise AssertionError("a backup into an existing directory was not refused")
