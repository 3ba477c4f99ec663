"""Periodic snapshots: the forked writer on its own, then a real node that snapshots while it
ingests, compacts its WAL, and restarts (SIGKILL and SIGTERM) with exact totals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.nodeproc import NodeProcess
from unimeter import AggType, AsyncClient, DeliveryMode, Event, MetricSchema, current_month
from unimeter.checkpoints import SnapshotPolicy, payload_prefix
from unimeter.storage.forksnap import (
    EXIT_FAILED,
    SnapshotJob,
    fork_snapshots,
    remove_stale_temps,
)
from unimeter.storage.snapshot import (
    load_latest_snapshot,
    publish_snapshot,
    snapshot_indexes,
    snapshot_temp_path,
)
from unimeter.storage.wal import WriteAheadLog

WAIT_S = 20.0


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def job(directory: Path, index: int, render: Callable[[], Sequence[bytes]]) -> SnapshotJob:
    directory.mkdir(parents=True, exist_ok=True)
    return SnapshotJob(directory=directory, index=index, render=render)


def sleep_forever() -> Sequence[bytes]:
    time.sleep(3600)  # in the child only; the test kills it
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------- the payload wrapper


@settings(max_examples=200, deadline=None)
@given(
    term=st.integers(0, 2**64 - 1),
    members=st.lists(st.integers(0, 2**16), max_size=5),
    size=st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536, 70000]),
)
def test_payload_prefix_is_the_cbor_encoding_without_the_data(
    term: int, members: list[int], size: int
) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    whole = cbor2.dumps([term, members, data])
    assert payload_prefix(term, members, len(data)) + data == whole


def test_payload_prefix_for_huge_lengths() -> None:
    assert payload_prefix(1, [1], 2**32)[-9:] == b"\x5b" + (2**32).to_bytes(8, "big")
    assert payload_prefix(1, [1], 2**32 - 1)[-5:] == b"\x5a\xff\xff\xff\xff"


def test_policy_triggers_on_either_threshold() -> None:
    policy = SnapshotPolicy(entries=10, bytes=1000)
    assert not policy.due(9, 999)
    assert policy.due(10, 0) and policy.due(0, 1000)
    assert not SnapshotPolicy(entries=0, bytes=0).due(10**9, 10**12)
    with pytest.raises(ValueError):
        SnapshotPolicy(entries=-1)


# ---------------------------------------------------------------------- the forked writer


def test_child_writes_snapshots_the_loader_reads(tmp_path: Path) -> None:
    parts = (b"head-", b"x" * 100_000, b"-tail")
    jobs = [job(tmp_path / "a", 7, lambda: parts), job(tmp_path / "b", 9, lambda: (b"",))]
    child = fork_snapshots(jobs)
    assert child.wait() == 0
    assert publish_snapshot(tmp_path / "a", 7) is None
    assert publish_snapshot(tmp_path / "b", 9) is None
    assert load_latest_snapshot(tmp_path / "a") == (7, b"".join(parts))
    assert load_latest_snapshot(tmp_path / "b") == (9, b"")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["snapshot-0000000000000007.snap"]


def test_publish_keeps_two_and_names_the_older(tmp_path: Path) -> None:
    for index in (3, 5, 8):
        assert fork_snapshots([job(tmp_path, index, lambda: (b"s",))]).wait() == 0
    assert publish_snapshot(tmp_path, 3) is None
    assert publish_snapshot(tmp_path, 5) == 3
    assert publish_snapshot(tmp_path, 8) == 5
    assert sorted(snapshot_indexes(tmp_path)) == [5, 8]


def test_a_failing_child_leaves_no_snapshot(tmp_path: Path) -> None:
    def broken() -> Sequence[bytes]:
        raise RuntimeError("encoder bug")

    child = fork_snapshots([job(tmp_path, 4, broken)])
    assert child.wait() == EXIT_FAILED
    child.discard()
    assert list(tmp_path.iterdir()) == []


def test_abort_kills_the_child_and_removes_its_file(tmp_path: Path) -> None:
    child = fork_snapshots([job(tmp_path, 4, sleep_forever)])
    assert child.poll() is None
    assert snapshot_temp_path(tmp_path, 4).exists()
    child.abort()
    assert child.status == -signal.SIGKILL
    assert list(tmp_path.iterdir()) == []


def open_fds(pid: int) -> set[int]:
    return {int(name) for name in os.listdir(f"/proc/{pid}/fd")}


def test_child_holds_no_inherited_descriptor(tmp_path: Path) -> None:
    """The child must not keep the WAL's directory lock (or a socket) alive: a node restarted
    after a SIGKILL would otherwise find its own log locked."""
    wal, _ = WriteAheadLog.open(tmp_path / "wal")
    child = fork_snapshots([job(tmp_path / "snaps", 1, sleep_forever)])
    try:
        wait_until("the child to close what it inherited", lambda: len(open_fds(child.pid)) <= 4)
        assert open_fds(child.pid) - {0, 1, 2} != set()  # its temp file stays open
        wal.close()
        again, _ = WriteAheadLog.open(tmp_path / "wal")  # the directory lock is free
        again.close()
    finally:
        child.abort()


CHILD_OF_A_DOOMED_PARENT = """
import sys, time
from pathlib import Path
from unimeter.storage.forksnap import SnapshotJob, fork_snapshots
def forever():
    time.sleep(3600)
child = fork_snapshots([SnapshotJob(directory=Path(sys.argv[1]), index=1, render=forever)])
print(child.pid, flush=True)
time.sleep(3600)
"""


def process_gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return bool(re.search(r"^State:\s+Z", status, re.MULTILINE))  # dead, not yet reaped


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """A SIGKILLed node leaves no snapshot writer running (PR_SET_PDEATHSIG)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD_OF_A_DOOMED_PARENT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert not process_gone(child_pid)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        if parent.stdout is not None:
            parent.stdout.close()
    wait_until("the orphaned child to die", lambda: process_gone(child_pid))
    assert remove_stale_temps(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- a real node

ACCOUNTS = 30
BATCH = 60
SNAPSHOT_ENTRIES = 15


def batch_events(n: int) -> list[Event]:
    return [
        Event(account_id=(n + i) % ACCOUNTS, metric_code="calls", value=i + 1, event_id=f"{n}/{i}")
        for i in range(BATCH)
    ]


def expected_totals(batches: int) -> list[int]:
    out = [0] * ACCOUNTS
    for n in range(batches):
        for e in batch_events(n):
            out[e.account_id] += e.value
    return out


async def totals(client: AsyncClient) -> list[int]:
    period = current_month()
    return [(await client.query(a, "calls", period)).value.sum for a in range(ACCOUNTS)]


def partition_dirs(node: NodeProcess) -> list[Path]:
    return sorted((node.data_dir / "partitions").iterdir())


def segments(directory: Path) -> list[int]:
    return sorted(int(p.name[:-4]) for p in directory.glob("*.wal"))


def compacted(directory: Path) -> bool:
    """Two snapshots, and no WAL segment lies wholly before the older one (the recovery
    fallback). The WAL is compacted just after a snapshot is renamed into place."""
    snaps = sorted(snapshot_indexes(directory))
    firsts = segments(directory)
    if len(snaps) != 2:
        return False
    assert firsts[0] <= snaps[0] + 1, f"the WAL no longer reaches the older snapshot: {firsts}"
    return len(firsts) == 1 or firsts[1] > snaps[0] + 1


def recovered_entries(node: NodeProcess) -> list[tuple[int, int]]:
    """(snapshot index, WAL entries replayed) per partition from the node's last start."""
    found = re.findall(
        r"event=recovered actor=partition-\d+ snapshot_index=(\d+) log_entries=(\d+)", node.log()
    )
    return [(int(s), int(n)) for s, n in found[-len(partition_dirs(node)) :]]


@pytest.mark.parametrize("restart", ["sigkill", "sigterm"])
async def test_node_snapshots_while_ingesting_and_restarts_exactly(
    tmp_path: Path, restart: str
) -> None:
    node = NodeProcess(
        tmp_path / "data",
        partitions=2,
        extra_args=(
            "--snapshot-entries", str(SNAPSHOT_ENTRIES), "--snapshot-bytes", "0",
            "--wal-segment-bytes", "16384",
        ),
    )  # fmt: skip
    node.start()
    batches = 120
    try:
        async with AsyncClient([node.address], request_timeout=20.0) as client:
            await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
            for n in range(batches):
                result = await client.ingest(batch_events(n), delivery=DeliveryMode.SYNC)
                assert result.n_stored == BATCH
            await asyncio.to_thread(
                wait_until,
                "two snapshots per partition and the WAL compacted to the older",
                lambda: all(compacted(d) for d in partition_dirs(node)),
            )
            assert await totals(client) == expected_totals(batches)
        assert len(re.findall(r"event=snapshot actor=", node.log())) >= 2 * len(
            partition_dirs(node)
        )
        if restart == "sigkill":
            newest = [max(snapshot_indexes(d)) for d in partition_dirs(node)]
            node.kill()
        else:
            assert node.terminate() == 0  # a clean stop snapshots: newer still
            newest = [max(snapshot_indexes(d)) for d in partition_dirs(node)]
        node.start()
        # Recovery starts from the newest snapshot on disk (a forked snapshot still running at
        # the kill may land a newer one) and replays only the log after it, not the whole
        # history. How many entries that is depends on when the last periodic snapshot ran, so
        # it is not bounded here: on a loaded machine snapshots lag behind the writes.
        for (snapshot_index, replayed), on_disk in zip(
            recovered_entries(node), newest, strict=True
        ):
            assert snapshot_index >= on_disk > 0, (snapshot_index, on_disk, replayed)
        async with AsyncClient([node.address], request_timeout=20.0) as client:
            assert await totals(client) == expected_totals(batches)
            # Retried event ids stay duplicates across snapshots and restarts.
            again = await client.ingest(batch_events(0), delivery=DeliveryMode.SYNC)
            assert again.n_duplicates == BATCH
            await client.ingest(batch_events(batches), delivery=DeliveryMode.SYNC)
            assert await totals(client) == expected_totals(batches + 1)
        if restart == "sigterm":
            assert node.terminate() == 0  # the shutdown snapshot compacts the log as well
            assert all(compacted(d) for d in partition_dirs(node))
    finally:
        node.kill()


async def test_leftover_snapshot_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", partitions=1).start()
    try:
        async with AsyncClient([node.address]) as client:
            await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
            await client.ingest(batch_events(0), delivery=DeliveryMode.SYNC)
        node.kill()
        directory = partition_dirs(node)[0]
        stale = snapshot_temp_path(directory, 99)
        stale.write_bytes(b"half a snapshot a crashed child was writing")
        node.start()
        assert not stale.exists()
        assert 99 not in snapshot_indexes(directory)
        async with AsyncClient([node.address]) as client:
            assert await totals(client) == expected_totals(1)
    finally:
        node.kill()


def flip_byte(path: Path, offset_from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x20
    path.write_bytes(bytes(data))


async def test_a_damaged_newest_snapshot_falls_back_to_the_older_one(tmp_path: Path) -> None:
    """Why the WAL is kept back to the *older* snapshot: with the newest one unreadable, the
    older one plus the log after it rebuild exactly the same totals. With both unreadable and
    the log compacted, the node refuses to start (exit 2) and names the hole."""
    node = NodeProcess(
        tmp_path / "data",
        partitions=1,
        extra_args=(
            "--snapshot-entries", str(SNAPSHOT_ENTRIES), "--snapshot-bytes", "0",
            "--wal-segment-bytes", "16384",
        ),
    )  # fmt: skip
    batches = 0
    try:
        node.start()
        async with AsyncClient([node.address], request_timeout=20.0) as client:
            await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
            directory = partition_dirs(node)[0]
            deadline = time.monotonic() + WAIT_S
            while not (compacted(directory) and segments(directory)[0] > 1):
                assert time.monotonic() < deadline, "no compaction happened"
                await client.ingest(batch_events(batches), delivery=DeliveryMode.SYNC)
                batches += 1
        node.kill()
        older, newest = sorted(snapshot_indexes(directory).items())
        flip_byte(newest[1])
        node.start()
        assert "snapshot unusable, trying an older one" in node.log()
        assert recovered_entries(node)[-1][0] == older[0]
        async with AsyncClient([node.address], request_timeout=20.0) as client:
            assert await totals(client) == expected_totals(batches)
        node.kill()

        for path in snapshot_indexes(directory).values():
            flip_byte(path, offset_from_end=20)
        with pytest.raises(RuntimeError, match="no readable snapshot reaches index"):
            node.start()
        assert node.proc is not None and node.proc.returncode == 2
    finally:
        node.kill()
