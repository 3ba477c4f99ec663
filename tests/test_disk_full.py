"""A real node on a real, small filesystem that fills up (docs/operations.md §6).

The node's ``--data-dir`` lives on a filesystem of a few MiB mounted for this test: an ext4
image on a loop device (journal, delayed allocation, blocks freed only when the journal
commits) and a tmpfs. A filler file the test controls takes the free space away:

* *ENOSPC*: no reserve, the filler eats every block, so the WAL's own writes fail with ENOSPC.
  The runtime keeps the refused write in memory and retries it; the partition answers
  BACKPRESSURE to new writes.
* *reserve*: ``--disk-reserve-bytes`` is larger than what the filler leaves, so the disk watch
  turns writes into BACKPRESSURE before any write fails.

Either way reads keep working and show exactly what was acknowledged; deleting the filler makes
writes resume without a restart; then a SIGKILL and restart must show the same totals and no
torn or corrupt file. Every batch carries event ids, so batches the client was unsure of (a
SYNC write that was waiting for the disk when the client gave up) are re-sent safely.

Needs root (``mount``); the mount is removed in ``finally`` by its path, even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nodeproc import NodeProcess, free_port
from tests.test_storage_retention import CATALOG, Replica, recover_offline, wait_for
from unimeter import (
    AggType,
    AsyncClient,
    BackpressureError,
    DeliveryMode,
    Event,
    MetricSchema,
    UnimeterError,
    checkpoints,
    current_month,
)
from unimeter.checkpoints import SnapshotPolicy
from unimeter.errors import Status
from unimeter.storage.fsutil import DiskFullError
from unimeter.storage.snapshot import snapshot_indexes
from unimeter.supervisor import EXIT_STORAGE_FAILED

FS_MIB = 40
ACCOUNTS = 20
BATCH = 200
WAIT_S = 30.0


# ---------------------------------------------------------------------- the small filesystem


def run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


@contextlib.contextmanager
def small_filesystem(root: Path, kind: str) -> Iterator[Path]:
    mount_point = root / f"mnt-{kind}"
    mount_point.mkdir()
    if kind == "tmpfs":
        run("mount", "-t", "tmpfs", "-o", f"size={FS_MIB}m", "tmpfs", str(mount_point))
    else:
        image = root / "fs.img"
        with image.open("wb") as file:
            file.truncate(FS_MIB << 20)
        # -m 0: no blocks reserved for root, so a full disk is full for the node (root) too.
        run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        run("mount", "-o", "loop", str(image), str(mount_point))
    try:
        yield mount_point
    finally:
        unmount(mount_point)


def unmount(mount_point: Path) -> None:
    done = subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=60)
    if done.returncode != 0:  # still busy (a process we failed to stop): detach it lazily
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=60)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(filler: Path, leave_bytes: int = 0) -> None:
    """Grow ``filler`` until the filesystem has at most ``leave_bytes`` free (0: ENOSPC)."""
    with filler.open("ab", buffering=0) as file:
        for chunk in (1 << 20, 64 << 10, 4 << 10):
            while free_bytes(filler.parent) > leave_bytes:
                room = free_bytes(filler.parent) - leave_bytes
                try:
                    file.write(b"\xa5" * min(chunk, max(room, 4096)))
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            with contextlib.suppress(OSError):
                os.fsync(file.fileno())


# ---------------------------------------------------------------------- the workload


def batch_events(n: int) -> list[Event]:
    return [
        Event(account_id=(n * 3 + i) % ACCOUNTS, metric_code="calls", value=i % 7 + 1,
              event_id=f"disk-{n}-{i}", properties={"pad": "p" * 60})
        for i in range(BATCH)
    ]  # fmt: skip


def expected_totals(batches: set[int]) -> list[int]:
    out = [0] * ACCOUNTS
    for n in batches:
        for e in batch_events(n):
            out[e.account_id] += e.value
    return out


async def totals(client: AsyncClient) -> list[int]:
    period = current_month()
    return [(await client.query(a, "calls", period)).value.sum for a in range(ACCOUNTS)]


class Ledger:
    """Which batches were acknowledged, refused with BACKPRESSURE, or left unsure."""

    def __init__(self) -> None:
        self.sent = 0
        self.acked: set[int] = set()
        self.unsure: set[int] = set()

    async def send(self, client: AsyncClient) -> str:
        n = self.sent
        self.sent += 1
        try:
            result = await client.ingest(batch_events(n), delivery=DeliveryMode.SYNC)
        except BackpressureError:
            self.unsure.add(n)  # refused before it was logged, but that is the node's word
            return "backpressure"
        except UnimeterError:
            self.unsure.add(n)
            return "unsure"
        assert result.n_stored + result.n_duplicates == BATCH, result
        self.acked.add(n)
        return "acked"


def torn_or_temp_files(data_dir: Path) -> list[str]:
    return sorted(
        str(p.relative_to(data_dir))
        for p in data_dir.rglob("*")
        if ".torn-" in p.name or p.name.endswith(".tmp")
    )


def wait_healthy(http_port: int) -> None:
    """The client port opens a moment before the node serves; /health says when it does."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=5):
                return
        except OSError:
            assert time.monotonic() < deadline, "the node never became healthy"
            time.sleep(0.01)


def metric_value(http_port: int, name: str) -> float:
    url = f"http://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


# ---------------------------------------------------------------------- the scenarios


async def full_disk_round_trip(tmp_path: Path, kind: str, scenario: str) -> None:
    with small_filesystem(tmp_path, kind) as mount_point:
        reserve = 6 << 20 if scenario == "reserve" else 0
        http_port = free_port()
        node = NodeProcess(
            mount_point / "data",
            partitions=2,
            extra_args=(
                "--disk-reserve-bytes", str(reserve), "--http", f"127.0.0.1:{http_port}",
                "--snapshot-entries", "8", "--wal-segment-bytes", str(256 << 10),
            ),
        )  # fmt: skip
        node.log_path = tmp_path / "node.log"  # not on the filesystem being filled
        ledger = Ledger()
        try:
            node.start()
            wait_healthy(http_port)
            await fill_and_recover(node, ledger, mount_point, reserve, http_port)
        finally:
            node.kill()


async def fill_and_recover(
    node: NodeProcess, ledger: Ledger, mount_point: Path, reserve: int, http_port: int
) -> None:
    filler = mount_point / "filler"
    async with AsyncClient([node.address], request_timeout=2.0) as client:
        await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
        for _ in range(10):
            assert await ledger.send(client) == "acked"

        await asyncio.to_thread(fill, filler, reserve // 2)
        # Writes turn into BACKPRESSURE (after the last bytes of free space are used up).
        deadline = time.monotonic() + WAIT_S
        while await ledger.send(client) != "backpressure":
            assert time.monotonic() < deadline, "the full disk never turned writes away"
        assert metric_value(http_port, "unimeter_disk_ok") == (0.0 if reserve else 1.0)

        # Reads keep working and show exactly what was acknowledged.
        assert await totals(client) == expected_totals(ledger.acked)
        period = current_month()
        events = [e async for e in client.list_events(0, period.start, period.end)]
        assert sum(e.value for e in events) == expected_totals(ledger.acked)[0]
        assert await ledger.send(client) == "backpressure"  # still full: still refused

        filler.unlink()  # space returns; writes resume by themselves, no restart
        deadline = time.monotonic() + WAIT_S
        while await ledger.send(client) != "acked":
            assert time.monotonic() < deadline, "writes did not resume after space returned"
        for _ in range(5):
            assert await ledger.send(client) == "acked"
        assert metric_value(http_port, "unimeter_disk_ok") == 1.0

        # Totals hold every acknowledged batch, and at most the unsure ones besides.
        seen = await totals(client)
        assert all(
            low <= got <= high
            for low, got, high in zip(
                expected_totals(ledger.acked),
                seen,
                expected_totals(ledger.acked | ledger.unsure),
                strict=True,
            )
        ), seen
        # Re-sending every unsure batch (event ids make it safe) gives exact totals.
        for n in sorted(ledger.unsure):
            result = await client.ingest(batch_events(n), delivery=DeliveryMode.SYNC)
            assert result.n_stored + result.n_duplicates == BATCH
        everything = set(range(ledger.sent))
        assert await totals(client) == expected_totals(everything)

    node.kill()
    # No torn record anywhere (every write was whole or undone); a snapshot child killed
    # mid-write may leave a temp file, which the restart removes.
    assert [f for f in torn_or_temp_files(node.data_dir) if not f.endswith(".tmp")] == []
    node.start()
    wait_healthy(http_port)
    assert "event=corrupt_log" not in node.log()
    async with AsyncClient([node.address], request_timeout=10.0) as client:
        assert await totals(client) == expected_totals(everything)
    # Checked once the partitions lead again: the new term's hard state is written by the
    # storage thread, and its temp file exists for a moment while the node already listens.
    assert torn_or_temp_files(node.data_dir) == []


@pytest.mark.parametrize("kind", ["ext4", "tmpfs"])
async def test_enospc_turns_writes_into_backpressure_and_back(tmp_path: Path, kind: str) -> None:
    await full_disk_round_trip(tmp_path, kind, "enospc")


async def test_reserve_turns_writes_into_backpressure_and_back(tmp_path: Path) -> None:
    await full_disk_round_trip(tmp_path, "ext4", "reserve")


async def test_a_snapshot_that_hits_enospc_is_dropped_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forked writer runs out of space: no snapshot, no temp file, nothing compacted, the
    log keeps taking writes, and the snapshot is written once space returns."""
    monkeypatch.setattr(checkpoints, "retry_s", 0.05)
    with small_filesystem(tmp_path, "tmpfs") as mount_point:
        directory = mount_point / "p0"
        policy = SnapshotPolicy(entries=40, bytes=0)
        replica = await Replica(directory, policy, segment_bytes=1 << 20).start()
        try:
            assert (await replica.request(CATALOG))[0] == Status.OK
            for n in range(30):  # a state whose snapshot is far larger than a log entry
                now = replica.now_us()
                await replica.ingest([now - i for i in range(200)], account=n)
            assert snapshot_indexes(directory) == {}
            await asyncio.to_thread(fill, mount_point / "filler", 64 << 10)
            while replica.checkpoints.failed == 0:  # small entries until a snapshot is due
                await replica.ingest([replica.now_us()], account=99)
                assert replica.state.applied_index < 200, "no snapshot was attempted"
            assert snapshot_indexes(directory) == {}
            # Later attempts wait for space instead of filling the disk again and again.
            deferred_from = time.monotonic()
            while time.monotonic() < deferred_from + 0.3:  # several retry periods
                await replica.ingest([replica.now_us()], account=99)  # writes still land
                await asyncio.sleep(0.02)
            assert replica.checkpoints.failed == 1
            assert not replica.runtime.disk_full
            assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]

            (mount_point / "filler").unlink()
            await wait_for("the retried snapshot", lambda: replica.checkpoints.completed > 0)
            assert len(snapshot_indexes(directory)) == 1
            live = replica.state.snapshot()
        finally:
            await replica.stop()
        assert recover_offline(directory).snapshot() == live


async def test_a_term_or_vote_that_cannot_be_made_durable_stops_the_node(tmp_path: Path) -> None:
    """A vote must be on disk before it is acted on; on a full disk the node stops (a restart
    recovers) rather than vote undurably or leave the partition silently dead."""
    with small_filesystem(tmp_path, "tmpfs") as mount_point:
        directory = mount_point / "p0"
        replica = Replica(directory, SnapshotPolicy(entries=0, bytes=0), segment_bytes=1 << 20)
        runtime = replica.runtime
        try:
            hard_state = directory / "raft-state.cbor"
            before = hard_state.read_bytes() if hard_state.exists() else None
            fill(mount_point / "filler")
            crashes: list[tuple[BaseException, int]] = []
            runtime.on_crash = lambda where, exc, status: crashes.append((exc, status))
            replica.offset_us = 10_000_000  # the election timeout has long passed
            runtime.prime()  # campaigns: the term and vote go to the storage thread
            await wait_for("the node to stop", lambda: bool(crashes))
            [(error, status)] = crashes
            assert isinstance(error, DiskFullError) and status == EXIT_STORAGE_FAILED
            assert runtime.mailbox.closed
            assert not runtime.core.leader_ready  # it never counted its own vote
            after = hard_state.read_bytes() if hard_state.exists() else None
            assert after == before  # the old term and vote, whole: the write left nothing
        finally:
            runtime.storage.stop()
            runtime.wal.close()
