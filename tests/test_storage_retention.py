"""Retention and compaction on a partition replica run in-process with a clock the test moves.

A real node stamps entries with the wall clock, so days cannot pass inside a test; here the
same runtime, core, WAL, snapshot scheduler and files run in the test's event loop with a
clock of ``real time + offset``, and the test moves the offset by days. It checks that:

* events fall out of the state exactly when the entry stamps move past their period plus the
  retention (``--retention-days``), not when a replica happens to look;
* the state is a deterministic function of the log: the live state, the state recovered from
  the newest snapshot plus the WAL after it, and the whole log replayed from scratch encode to
  the same bytes;
* WAL segments older than the oldest kept snapshot are deleted from disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from array import array
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.nodeproc import NodeProcess
from unimeter import periods
from unimeter.actors.admission import REJECT_TOO_OLD
from unimeter.actors.effects import Effects
from unimeter.actors.mailbox import Mailbox
from unimeter.actors.partition import CatalogUpdate, ClientRequest, PartitionCore
from unimeter.actors.runtime import FutureReply, recover_replica
from unimeter.checkpoints import Checkpoints, SnapshotPolicy
from unimeter.consensus.config import RaftConfig
from unimeter.errors import Status
from unimeter.model import AggType, MetricSchema, PeriodType
from unimeter.node_runtimes import PartitionRuntime
from unimeter.state.entries import LiveMetric
from unimeter.state.partition_state import PartitionState
from unimeter.state.records import decode_entry
from unimeter.storage.snapshot import snapshot_indexes
from unimeter.wire import messages as m

DAY_US = periods.US_PER_DAY
RETENTION_DAYS = 3
SCHEMA = MetricSchema(code="calls", agg_type=AggType.SUM, period_type=PeriodType.DAY)
WAIT_S = 20.0


class RecordingRuntime(PartitionRuntime):
    """Keeps every log append, so the test can replay the whole log after compaction."""

    log_copy: dict[int, bytes]

    def _after(self, fx: Effects) -> None:
        for index, _, data in fx.appends:
            self.log_copy[index] = data
        super()._after(fx)


class Replica:
    """One single-member partition replica in this event loop, on ``directory``."""

    def __init__(self, directory: Path, policy: SnapshotPolicy, segment_bytes: int) -> None:
        self.offset_us = 0
        wal, recovered, app = recover_replica(directory, segment_bytes_max=segment_bytes)
        if app is None:
            state = PartitionState(0, retention_days=RETENTION_DAYS)
        else:
            state = PartitionState.from_snapshot(app)
        core = PartitionCore(
            0, state, node_id=1, members=(1,), addresses={1: "127.0.0.1:1"},
            recovered=recovered, raft_config=RaftConfig(election_timeout_s=0.05,
            heartbeat_interval_s=0.01), rng=random.Random(7), now_us=self.now_us(),
            retention_days=RETENTION_DAYS, preferred=1,
        )  # fmt: skip
        self.runtime = RecordingRuntime(
            "partition-0", core, wal, directory, Mailbox(1024), self._no_peers, self.now_us
        )
        self.runtime.log_copy = {}
        self.checkpoints = Checkpoints(policy)
        self.checkpoints.track(self.runtime)
        self.task: asyncio.Task[None] | None = None

    def now_us(self) -> int:
        return time.time_ns() // 1000 + self.offset_us

    @staticmethod
    def _no_peers(send: object) -> None:
        raise AssertionError(f"a single-member group sent {send!r}")

    @property
    def state(self) -> PartitionState:
        return self.runtime.core.state

    async def start(self) -> Replica:
        self.runtime.prime()
        self.task = asyncio.create_task(self.runtime.run())
        await wait_for("leadership", lambda: self.runtime.core.leader_ready)
        return self

    async def request(self, message: object) -> tuple[int, m.Reply]:
        token = FutureReply()
        if isinstance(message, CatalogUpdate):
            message = CatalogUpdate(message.version, message.metrics, token)
        else:
            message = ClientRequest(token, message)  # type: ignore[arg-type]
        await self.runtime.mailbox.send(message)
        return await asyncio.wait_for(token.future, WAIT_S)

    async def ingest(self, stamps_us: list[int], account: int = 1, value: int = 1) -> m.Reply:
        stamps = array("q", stamps_us)
        batch = m.EventBatch(
            metric_codes=("calls",), metric_index=array("B", [0] * len(stamps)),
            account_ids=array("Q", [account] * len(stamps)),
            values=array("q", [value] * len(stamps)), timestamps=stamps,
        )  # fmt: skip
        request = m.Ingest(
            partition=0, producer_id=0, seq=0, sync=True, catalog_version=1, batch=batch
        )
        status, reply = await self.request(request)
        assert status == Status.OK, reply
        return reply

    async def stop(self) -> None:
        """Like a crash after the last fsync: no shutdown snapshot."""
        self.checkpoints.stop()
        await self.runtime.flush()
        assert self.task is not None
        # Cancel before closing, as Node.stop does: a closed, empty mailbox's wait() returns
        # at once, so run() would spin on it without yielding.
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.runtime.close()


async def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def day_total(state: PartitionState, day_start_us: int, account: int = 1) -> int:
    return state.query("calls", account, day_start_us, day_start_us + DAY_US).sum


def events_between(state: PartitionState, since_us: int, until_us: int, account: int = 1) -> int:
    events, _ = state.list_events(account, since_us, until_us, -1, 1000)
    return len(events)


def replay_from_scratch(log_copy: dict[int, bytes]) -> PartitionState:
    state = PartitionState(0, retention_days=RETENTION_DAYS)
    for index in sorted(log_copy):
        data = log_copy[index]
        if data:
            state.apply(index, decode_entry(data))
        else:  # a new leader's no-op
            state.applied_index = index
    return state


CATALOG = CatalogUpdate(1, (LiveMetric(generation=1, schema=SCHEMA),))


async def test_retention_drops_old_days_deterministically_and_the_wal_shrinks(
    tmp_path: Path,
) -> None:
    policy = SnapshotPolicy(entries=6, bytes=0)
    replica = await Replica(tmp_path / "p0", policy, segment_bytes=4096).start()
    assert (await replica.request(CATALOG))[0] == Status.OK
    # One event on each of the last three days is inside the 3-day retention; 5 days ago is not.
    now = replica.now_us()
    oldest_day = (now // DAY_US - 2) * DAY_US
    hour = DAY_US // 24
    stamps = [oldest_day + hour, oldest_day + DAY_US + hour, now, now - 5 * DAY_US]
    reply = await replica.ingest(stamps)
    assert isinstance(reply, m.IngestReply)
    assert reply.n_stored == 3 and [r for _, r in reply.rejected] == [REJECT_TOO_OLD]
    assert day_total(replica.state, oldest_day) == 1

    # Days pass (entry stamps move on): the oldest day goes once it is RETENTION_DAYS old.
    for step in range(1, 8):
        replica.offset_us = step * DAY_US // 2
        for _ in range(3):
            now = replica.now_us()
            await replica.ingest([now, now - DAY_US // 2], account=2)
        cutoff = (replica.now_us() // DAY_US - RETENTION_DAYS) * DAY_US
        expected = 1 if oldest_day + DAY_US > cutoff else 0
        assert day_total(replica.state, oldest_day) == expected, step
        assert events_between(replica.state, oldest_day, oldest_day + DAY_US) == expected
    assert day_total(replica.state, oldest_day) == 0, "never expired"
    kept = events_between(replica.state, 0, 2**62, account=2)
    assert kept > 0

    await wait_for("two snapshots", lambda: len(snapshot_indexes(tmp_path / "p0")) == 2)
    await wait_for("compaction", lambda: wal_reaches_only_the_older_snapshot(tmp_path / "p0"))
    live = replica.state.snapshot()
    log_copy = replica.runtime.log_copy
    await replica.stop()

    # Snapshot + WAL tail, and the whole log from scratch, give the same state, byte for byte.
    assert recover_offline(tmp_path / "p0").snapshot() == live
    assert replay_from_scratch(log_copy).snapshot() == live
    # And the replica starts from its files and goes on.
    again = await Replica(tmp_path / "p0", policy, segment_bytes=4096).start()
    assert events_between(again.state, 0, 2**62, account=2) == kept
    assert day_total(again.state, oldest_day) == 0
    await again.ingest([again.now_us()], account=3)
    await again.stop()


def recover_offline(directory: Path) -> PartitionState:
    """What a restart rebuilds: the newest snapshot, then the committed WAL after it."""
    wal, recovered, app = recover_replica(directory, segment_bytes_max=4096)
    try:
        assert app is not None and recovered.snapshot is not None
        state = PartitionState.from_snapshot(app)
        for entry in recovered.entries:
            if state.applied_index < entry.index <= recovered.hard_state.commit:
                if entry.is_noop:
                    state.applied_index = entry.index
                else:
                    state.apply(entry.index, decode_entry(entry.data))
        return state
    finally:
        wal.close()


def wal_reaches_only_the_older_snapshot(directory: Path) -> bool:
    snaps = sorted(snapshot_indexes(directory))
    firsts = sorted(int(p.name[:-4]) for p in directory.glob("*.wal"))
    if len(snaps) != 2:
        return False
    assert firsts[0] <= snaps[0] + 1, (firsts, snaps)
    return len(firsts) == 1 or firsts[1] > snaps[0] + 1


def test_retention_is_fixed_when_the_data_directory_is_created(tmp_path: Path) -> None:
    """Snapshots keep the retention a partition was created with; a node restarted with another
    value would expire differently on a replica that replays its log from scratch."""
    node = NodeProcess(tmp_path / "data", partitions=1, extra_args=("--retention-days", "30"))
    try:
        node.start()
        assert node.terminate() == 0
        node.extra_args = ("--retention-days", "31")
        with pytest.raises(RuntimeError, match="created with --retention-days 30"):
            node.start()
        node.extra_args = ("--retention-days", "30")
        node.start()
    finally:
        node.kill()
