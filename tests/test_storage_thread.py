"""Every fsync of a serving replica runs off the event loop thread, in one storage thread.

A single-member partition replica runs in this event loop on a real directory, with every
fsync and fdatasync the storage code can call wrapped to record the thread that made it. While
it serves -- election (term and vote), SYNC ingests from many concurrent clients, segment
rotations (small segments), a compaction, a log truncation and a leader's snapshot install
(driven through the runtime's effects) -- no fsync may run on the loop thread, and all run on
one thread. Group commit stays: many clients' SYNC writes share fsyncs. Before the storage
thread, the hard state, rotation, truncation, install and compaction fsynced on the loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_storage_retention import CATALOG, Replica, wait_for
from unimeter.actors.effects import Effects
from unimeter.checkpoints import SnapshotPolicy
from unimeter.consensus.messages import Snapshot, SnapshotMeta
from unimeter.storage import fsutil, wal
from unimeter.storage.snapshot import snapshot_indexes
from unimeter.storage.syncthread import StorageThread

CLIENTS = 16


class SyncLog:
    """(thread name, call) of every fsync-like call made while recording."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.recording = False

    def wrap(self, name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def call(fd: int) -> None:
            if self.recording:
                self.calls.append((threading.current_thread().name, name))
            real(fd)

        return call


@pytest.fixture
def sync_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncLog]:
    """Wraps the defaults every storage module binds at import (``os.fsync`` in default
    arguments), and ``os.fdatasync`` itself."""
    log = SyncLog()
    fsync = log.wrap("fsync", os.fsync)
    monkeypatch.setattr(os, "fdatasync", log.wrap("fdatasync", os.fdatasync))
    monkeypatch.setitem(wal.Syscalls.__init__.__kwdefaults__, "fsync", fsync)
    monkeypatch.setitem(fsutil.atomic_write.__kwdefaults__, "fsync", fsync)
    monkeypatch.setattr(fsutil.fsync_dir, "__defaults__", (fsync,))
    yield log


async def test_no_fsync_runs_on_the_loop_thread(tmp_path: Path, sync_log: SyncLog) -> None:
    directory = tmp_path / "p0"
    replica = Replica(directory, SnapshotPolicy(entries=4, bytes=0), segment_bytes=4096)
    runtime = replica.runtime
    sync_log.recording = True  # recovery (before serving) may fsync where it likes
    try:
        await replica.start()  # campaigns: term and vote
        await replica.request(CATALOG)
        now = replica.now_us()
        before = runtime.fsyncs
        # Many clients at once: their SYNC writes share fsyncs (group commit).
        for _ in range(6):
            await asyncio.gather(*(replica.ingest([now] * 20, account=c) for c in range(CLIENTS)))
        rounds = 6 * CLIENTS
        assert runtime.fsyncs - before < rounds, (runtime.fsyncs - before, rounds)
        assert runtime.wal.first_index > 1 or len(list(directory.glob("*.wal"))) > 2  # rotated
        await wait_for("a snapshot and its compaction", lambda: replica.checkpoints.completed >= 2)
        await wait_for("compaction", lambda: runtime.wal.first_index > 1)
        await runtime.flush()

        # A leader's log conflict, then a leader's snapshot, as the core would ask for them.
        last = runtime.wal.last_index
        runtime._execute(Effects(truncate_after=last - 1))
        await runtime.flush()
        assert runtime.wal.last_index == last - 1
        meta = SnapshotMeta(index=last + 100, term=runtime.core.raft.term, members=(1,))
        runtime._execute(Effects(install=Snapshot(meta=meta, data=b"state")))
        await runtime.flush()
        assert runtime.wal.last_index == last + 100 and last + 100 in snapshot_indexes(directory)
    finally:
        sync_log.recording = False
        await replica.stop()
    threads = {name for name, _ in sync_log.calls}
    kinds = {call for _, call in sync_log.calls}
    assert threading.main_thread().name not in threads, sync_log.calls
    assert kinds == {"fsync", "fdatasync"}, kinds
    # One storage thread did them all (the snapshot's temp file is fsynced by a forked child,
    # and its publication by the checkpoint executor: neither is the loop).
    storage = [n for n in threads if n.startswith("storage-")]
    assert len(storage) == 1, threads


def test_jobs_run_in_order_and_wake_the_loop_once_per_batch() -> None:
    async def main() -> tuple[list[int], int, int]:
        storage = StorageThread("t")
        storage.start(asyncio.get_running_loop())
        gate = threading.Event()
        order: list[int] = []
        storage.submit(gate.wait, lambda *_: None)  # holds the thread while we queue
        done = asyncio.Event()

        def finished(i: int) -> Callable[[Any, BaseException | None], None]:
            def call(result: Any, error: BaseException | None) -> None:
                assert result == i and error is None
                order.append(i)
                if i == 99:
                    done.set()

            return call

        for i in range(100):
            storage.submit(lambda i=i: i, finished(i))  # type: ignore[misc]
        time.sleep(0.01)
        gate.set()
        await asyncio.wait_for(done.wait(), 10)
        failed = storage.run(lambda: 1 // 0)
        with pytest.raises(ZeroDivisionError):
            await failed
        storage.stop()
        return order, storage.batches, storage.jobs

    order, batches, jobs = asyncio.run(main())
    assert order == list(range(100))
    assert jobs == 102 and batches <= 3  # the gate's batch, the hundred queued behind it, one
