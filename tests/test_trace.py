"""Trace recording (``python -m unimeter.node --trace``) and offline replay (unimeter.trace).

The trace of a real node under load must replay, step for step, to the state the node served:
every step's post state (role, term, commit, applied) matches the recording, and the replayed
aggregates equal what the node answered the client. Also after a restart, when the trace starts
from what recovery read from disk.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

from tests.support.nodeproc import NodeProcess, free_port
from unimeter import (
    AggType,
    AsyncClient,
    DeliveryMode,
    DimensionFilter,
    Event,
    MetricSchema,
    OperationType,
    current_month,
)
from unimeter.actors.catalog import CatalogRequest
from unimeter.actors.partition import CatalogUpdate, ClientRequest, PartitionCore
from unimeter.actors.replicated import DiskState, PeerMessage, Persisted, RaftTick
from unimeter.consensus import messages as r
from unimeter.periods import to_us
from unimeter.routing import partition_of
from unimeter.state.entries import LiveMetric
from unimeter.trace import decode_message, encode_message, replay
from unimeter.wire import messages as m
from unimeter.wire.frames import decode_item, encode_item

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------- message encodings

BATCH = m.EventBatch(
    metric_codes=("a", "b"),
    metric_index=array("B", [0, 1, 0]),
    account_ids=array("Q", [1, 2, 2**64 - 1]),
    values=array("q", [5, -7, 2**62]),
    timestamps=array("q", [m.NO_TIMESTAMP, 1_700_000_000_000_000, 1]),
    operation_types=array("B", [0, 1, 2]),
    properties=({"k": "v"}, None, {}),
    event_ids=("x", None, "y"),
)
SCHEMA = MetricSchema(
    code="c", agg_type=AggType.SUM, filters=(DimensionFilter("region", ("eu", "us")),)
).normalized()
ENTRY = r.LogEntry(term=2, index=5, data=b"\x01\x02")
SNAPSHOT = r.Snapshot(meta=r.SnapshotMeta(index=4, term=1, members=(1, 2, 3)), data=b"state")
MESSAGES: list[object] = [
    RaftTick(),
    Persisted(17),
    DiskState(False),
    PeerMessage(r.AppendEntries(src=1, dst=2, term=3, prev_index=4, prev_term=2,
                                entries=(ENTRY,), leader_commit=4)),
    PeerMessage(r.AppendEntriesResponse(src=2, dst=1, term=3, success=False, rejected_index=4,
                                        hint_index=3, hint_term=1)),
    PeerMessage(r.Heartbeat(src=1, dst=2, term=3, commit=4)),
    PeerMessage(r.HeartbeatResponse(src=2, dst=1, term=3)),
    PeerMessage(r.RequestVote(src=1, dst=2, term=4, last_index=5, last_term=2, pre_vote=True)),
    PeerMessage(r.RequestVoteResponse(src=2, dst=1, term=4, granted=True)),
    PeerMessage(r.InstallSnapshot(src=1, dst=2, term=3, snapshot=SNAPSHOT)),
    PeerMessage(r.InstallSnapshotResponse(src=2, dst=1, term=3, match_index=4)),
    PeerMessage(r.TimeoutNow(src=1, dst=2, term=3)),
    ClientRequest(0, m.Ingest(partition=1, producer_id=9, seq=3, sync=True, catalog_version=2,
                              batch=BATCH)),
    ClientRequest(0, m.Query(partition=1, account_id=2, metric_code="a", start_us=0,
                             end_us=10, filters=(("region", "eu"),), min_index=7)),
    ClientRequest(0, m.QueryRealtime(partition=1, account_id=2, metric_code="a")),
    ClientRequest(0, m.QueryBreakdown(partition=1, account_id=2, metric_code="a", start_us=0,
                                      end_us=10, group_by=("region",), min_index=1)),
    ClientRequest(0, m.ListEvents(partition=1, account_id=2, since_us=0, until_us=5,
                                  after_offset=3, limit=10)),
    ClientRequest(0, m.ListAlerts(partition=1, account_id=2, after_cursor=1, limit=5)),
    CatalogRequest(0, m.MetricCreate(schema=SCHEMA)),
    CatalogRequest(0, m.MetricUpdate(schema=SCHEMA)),
    CatalogRequest(0, m.MetricGet(code="c")),
    CatalogRequest(0, m.MetricList()),
    CatalogRequest(0, m.MetricDelete(code="c")),
    CatalogUpdate(3, (LiveMetric(generation=1, schema=SCHEMA),), None),
    CatalogUpdate(3, (), object()),
]  # fmt: skip


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda msg: type(msg).__name__)
def test_every_core_input_survives_the_trace_encoding(msg: object) -> None:
    item = decode_item(encode_item(encode_message(msg, lambda token: 0)))
    back = decode_message(item)
    if isinstance(msg, CatalogUpdate) and msg.token is not None:
        msg = CatalogUpdate(msg.version, msg.metrics, 0)  # a token becomes a number
    assert back == msg


# ---------------------------------------------------------------------- a real node

METRICS = [
    MetricSchema(code="calls", agg_type=AggType.COUNT),
    MetricSchema(
        code="gb", agg_type=AggType.SUM, filters=(DimensionFilter("region", ("eu", "us")),)
    ),
    MetricSchema(code="seats", agg_type=AggType.COUNT_UNIQUE),
    MetricSchema(code="balance", agg_type=AggType.LATEST),
    MetricSchema(code="peak", agg_type=AggType.MAX),
]
ACCOUNTS = range(1, 13)
PARTITIONS = 3


def _events(round_no: int, producer: int) -> list[Event]:
    out = []
    for a in ACCOUNTS:
        out.append(Event(account_id=a, metric_code="calls", event_id=f"{round_no}-{a}"))
        out.append(Event(account_id=a, metric_code="gb", value=round_no * 3 + a,
                         properties={"region": ("eu", "us")[a % 2]}))  # fmt: skip
        out.append(Event(account_id=a, metric_code="seats", value=(round_no + a) % 5,
                         operation_type=OperationType.ADD))  # fmt: skip
        out.append(Event(account_id=a, metric_code="balance", value=producer * 1000 + round_no))
        out.append(Event(account_id=a, metric_code="peak", value=(round_no * 7919) % 101))
    return out


async def _load(address: str) -> dict[tuple[str, int], object]:
    """Several clients ingest at once (ASYNC and SYNC, repeated event ids); then read back."""
    async with AsyncClient([address]) as admin:
        for schema in METRICS:
            await admin.metrics.create(schema)

    async def producer(n: int) -> None:
        async with AsyncClient([address]) as client:
            for round_no in range(12):
                mode = DeliveryMode.SYNC if (round_no + n) % 2 else DeliveryMode.ASYNC
                await client.ingest(_events(round_no, n), delivery=mode)
            # An ASYNC write is acknowledged before it commits: read it back through this
            # client (its reads wait for its own writes) so the final read below sees it.
            for a in ACCOUNTS:
                await client.query(a, METRICS[0].code, current_month())

    await asyncio.gather(*(producer(n) for n in range(4)))
    seen: dict[tuple[str, int], object] = {}
    async with AsyncClient([address], delivery=DeliveryMode.SYNC) as client:
        for schema in METRICS:
            for a in ACCOUNTS:
                seen[(schema.code, a)] = (await client.query(a, schema.code, current_month())).value
    return seen


def _replayed(path: Path, node_id: int = 1) -> dict[tuple[str, int], object]:
    rp, diverged = replay(str(path), out=lambda line: None, quiet=True)
    assert not diverged, [f"#{s.number} {s.recorded} != {s.replayed}" for s in diverged[:3]]
    period = current_month()
    start, end = to_us(period.start), to_us(period.end)
    out: dict[tuple[str, int], object] = {}
    for schema in METRICS:
        for a in ACCOUNTS:
            core = rp.cores[(node_id, partition_of(a, PARTITIONS))]
            assert isinstance(core, PartitionCore)
            out[(schema.code, a)] = core.state.query(schema.code, a, start, end)
    return out


def _node(tmp_path: Path, trace: Path) -> NodeProcess:
    return NodeProcess(tmp_path / "data", partitions=PARTITIONS, extra_args=("--trace", str(trace)))


async def test_a_node_trace_replays_to_what_the_node_answered(tmp_path: Path) -> None:
    trace = tmp_path / "node.trace"
    node = _node(tmp_path, trace).start()
    try:
        answered = await _load(node.address)
        assert node.terminate() == 0
    finally:
        node.kill()
    assert answered[("calls", 1)].count == 12  # type: ignore[attr-defined]  # ids deduplicated
    assert _replayed(trace) == answered


async def test_a_restarted_nodes_trace_starts_from_what_recovery_read(tmp_path: Path) -> None:
    first = _node(tmp_path, tmp_path / "first.trace").start()
    try:
        await _load(first.address)
        first.kill()  # SIGKILL: the second run recovers from the WAL (and hard state) alone
        second_trace = tmp_path / "second.trace"
        second = _node(tmp_path, second_trace).start()
        try:
            async with AsyncClient([second.address], delivery=DeliveryMode.SYNC) as client:
                await client.ingest([Event(account_id=1, metric_code="calls", event_id="late")])
                answered = {
                    (s.code, a): (await client.query(a, s.code, current_month())).value
                    for s in METRICS
                    for a in ACCOUNTS
                }
            assert second.terminate() == 0
        finally:
            second.kill()
    finally:
        first.kill()
    assert _replayed(second_trace) == answered


async def test_every_node_of_a_cluster_traces_what_it_did(tmp_path: Path) -> None:
    """Three nodes, each tracing its own cores: elections draw on each core's recorded rng, and
    followers apply what leaders replicated, so every node's trace replays to the same totals."""
    ports = [free_port() for _ in range(3)]
    peers = ",".join(f"{i + 1}=127.0.0.1:{port}" for i, port in enumerate(ports))
    nodes = [
        NodeProcess(
            tmp_path / f"node{i + 1}", port=port, partitions=PARTITIONS,
            extra_args=("--node-id", str(i + 1), "--peers", peers, "--election-timeout-ms",
                        "300", "--trace", str(tmp_path / f"node{i + 1}.trace")),
        )
        for i, port in enumerate(ports)
    ]  # fmt: skip
    try:
        for node in nodes:
            node.start()
        answered = await _load(nodes[0].address)
        await asyncio.sleep(1.0)  # followers learn the last commit index from heartbeats
        for node in nodes:  # all at once: a node waiting for quiet peers stops sooner
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
        for node in nodes:
            assert node.proc is not None and node.proc.wait(timeout=120) == 0
    finally:
        for node in nodes:
            node.kill()
    for i in range(3):
        assert _replayed(tmp_path / f"node{i + 1}.trace", node_id=i + 1) == answered


def test_the_command_line_summarises_and_replays_a_trace(tmp_path: Path) -> None:
    trace = tmp_path / "sim.trace"
    subprocess.run(
        [sys.executable, "-m", "unimeter.sim", "--seed", "13", "--trace", str(trace)],
        cwd=ROOT, check=True, capture_output=True, timeout=100,
    )  # fmt: skip

    def run(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "unimeter.trace", *args, str(trace)],
            cwd=ROOT, check=True, capture_output=True, text=True, timeout=100,
        )  # fmt: skip
        return out.stdout

    summary = run("summary")
    assert "n1/catalog: starts=" in summary and "peer:AppendEntries" in summary
    partial = run("replay", "--partition", "0", "--until", "40")
    steps = [line for line in partial.splitlines() if line.startswith("#")]
    assert steps and all("/p0 " in line for line in steps)
    assert all(int(line.split()[0][1:]) <= 40 for line in steps)
    assert "--- end state after 40 step(s)" in partial
    full = run("replay", "--quiet")
    assert "diverged" not in full and "catalog version=" in full
