"""Scenario traces: classic Raft situations as text, with the exact messages they produce.

Each file in tests/raft_scenarios/ is a sequence of blocks (etcd-io/raft testdata style):

    command arg...
    ----
    expected output
    <blank line>

Lines starting with ``#`` between blocks are comments. Nothing happens unless a command says
so: no timer fires and no message moves by itself, so a trace is a precise, readable record of
one interleaving. Each node has its own clock, as real nodes do (only durations matter).
To accept new output after an intended change, rewrite the expectations and review the diff:

    UNIMETER_REWRITE_SCENARIOS=1 python -m pytest tests/test_raft_scenarios.py

Commands:
    add-nodes N [pre-vote=false] [check-quorum=false]
    campaign ID                 tick ID at its election deadline (ID's clock jumps there)
    tick-heartbeat ID           tick leader ID at its next deadline (heartbeat, check-quorum)
    advance-clock SECONDS       every node's clock
    propose ID DATA
    transfer-leadership FROM TO
    compact ID INDEX            the application of ID took a snapshot at INDEX
    process-ready ID...         run ID's Readies (store, send, apply, advance; sync at once
                                unless persistence is held)
    deliver-msgs ID...          step every queued message to ID, in order
    stabilize                   process-ready and deliver-msgs everywhere until nothing moves
    hold-persist ID / release-persist ID
    isolate ID / heal           messages across a cut are dropped when sent
    crash ID / restart ID       a crash loses what was stored but not synced
    status [ID...]              role, term, leader, commit, applied, last index
    log ID                      the entries ID holds in memory
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.raft_harness import FAST, App, DiskState, SaveEntries, SaveHardState, SaveSnapshot
from unimeter.consensus.config import ProposalRejected
from unimeter.consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    LogEntry,
    Message,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)
from unimeter.consensus.raft import RaftCore

SCENARIOS = Path(__file__).parent / "raft_scenarios"
REWRITE = os.environ.get("UNIMETER_REWRITE_SCENARIOS") == "1"


def fmt_entry(e: LogEntry) -> str:
    return f"{e.index}/{e.term} " + ("noop" if e.is_noop else repr(e.data.decode()))


def fmt_msg(m: Message) -> str:
    head = f"{m.src}->{m.dst} {type(m).__name__} term={m.term}"
    if isinstance(m, RequestVote):
        flags = " pre-vote" * m.pre_vote + " transfer" * m.transfer
        return f"{head} last={m.last_index}/{m.last_term}{flags}"
    if isinstance(m, RequestVoteResponse):
        return f"{head} {'granted' if m.granted else 'rejected'}" + " pre-vote" * m.pre_vote
    if isinstance(m, AppendEntries):
        entries = ", ".join(fmt_entry(e) for e in m.entries)
        return f"{head} prev={m.prev_index}/{m.prev_term} commit={m.leader_commit} [{entries}]"
    if isinstance(m, AppendEntriesResponse):
        if m.success:
            return f"{head} match={m.match_index}"
        return f"{head} rejected={m.rejected_index} hint={m.hint_index}/{m.hint_term}"
    if isinstance(m, Heartbeat):
        return f"{head} commit={m.commit}"
    if isinstance(m, InstallSnapshot):
        meta = m.snapshot.meta
        return f"{head} snapshot={meta.index}/{meta.term}"
    if isinstance(m, InstallSnapshotResponse):
        return f"{head} match={m.match_index}"
    assert isinstance(m, HeartbeatResponse | TimeoutNow)
    return head


@dataclass
class Node:
    id: int
    core: RaftCore | None
    now: float = 0.0
    disk: DiskState = field(default_factory=DiskState)
    app: App = field(default_factory=App)
    held: list[int] = field(default_factory=list)  # Ready numbers waiting for a sync
    unsynced: list[SaveSnapshot | SaveEntries | SaveHardState] = field(default_factory=list)
    hold: bool = False


class Interaction:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.queues: dict[int, list[Message]] = {}
        self.cut: set[int] = set()
        self.config = FAST

    # ------------------------------------------------------------------ plumbing

    def core(self, node: int) -> RaftCore:
        core = self.nodes[node].core
        assert core is not None, f"node {node} is down"
        return core

    def boot(self, node: Node) -> None:
        disk = node.disk
        node.app = App.decode(disk.snapshot.data) if disk.snapshot else App()
        node.core = RaftCore(
            node_id=node.id,
            members=tuple(self.nodes),
            rng=random.Random(node.id),
            config=self.config,
            hard_state=disk.hard_state,
            log=disk.entries,
            snapshot=disk.snapshot.meta if disk.snapshot else None,
            now=node.now,
            applied=node.app.last_index,
        )

    def sync(self, node: Node, out: list[str]) -> None:
        for op in node.unsynced:
            node.disk.apply(op)
        node.unsynced.clear()
        if node.held:
            self.core(node.id).on_persisted(node.held[-1])
            out.append(f"  synced through Ready {node.held[-1]}")
            node.held.clear()

    def process_ready(self, node_id: int, out: list[str]) -> bool:
        node = self.nodes[node_id]
        core = self.core(node_id)
        did = False
        while core.has_ready():
            did = True
            rd = core.ready()
            out.append(f"> {node_id} handling Ready {rd.number}")
            if rd.soft_state is not None:
                ss = rd.soft_state
                out.append(f"  role={ss.role.value} term={ss.term} leader={ss.leader_id}")
            if rd.snapshot is not None:
                out.append(f"  install snapshot {rd.snapshot.meta.index}/{rd.snapshot.meta.term}")
                node.unsynced.append(SaveSnapshot(rd.snapshot))
                node.app = App.decode(rd.snapshot.data)
            if rd.entries:
                out.append("  store " + ", ".join(fmt_entry(e) for e in rd.entries))
                node.unsynced.append(SaveEntries(rd.entries))
            if rd.hard_state is not None:
                hs = rd.hard_state
                out.append(f"  store hard state term={hs.term} vote={hs.vote} commit={hs.commit}")
                node.unsynced.append(SaveHardState(hs))
            for m in rd.messages:
                if m.src in self.cut or m.dst in self.cut:
                    out.append(f"  send {fmt_msg(m)} (dropped: cut)")
                else:
                    out.append(f"  send {fmt_msg(m)}")
                    self.queues.setdefault(m.dst, []).append(m)
            for e in rd.committed:
                out.append(f"  apply {fmt_entry(e)}")
                node.app.apply(e)
            core.advance(rd)
            for peer in rd.snapshot_requests:
                index = node.app.last_index
                term = core.term_at(index)
                assert term is not None
                meta = SnapshotMeta(index=index, term=term, members=core.members)
                out.append(f"  snapshot {index}/{term} wanted by {peer}: provided")
                core.send_snapshot(peer, Snapshot(meta=meta, data=node.app.encode()), node.now)
            if rd.must_sync:
                node.held.append(rd.number)
            if not node.hold:
                self.sync(node, out)
        return did

    def deliver(self, node_id: int, out: list[str]) -> bool:
        queue = self.queues.pop(node_id, [])
        if not queue or self.nodes[node_id].core is None:
            return False
        out.append(f"> {node_id} receiving messages")
        for m in queue:
            out.append(f"  {fmt_msg(m)}")
            self.core(node_id).step(m, self.nodes[node_id].now)
        return True

    # ------------------------------------------------------------------ commands

    def run(self, cmd: str, args: list[str]) -> list[str]:
        out: list[str] = []
        ids = [int(a) for a in args if a.isdigit()]
        if cmd == "add-nodes":
            flags = dict(a.split("=") for a in args[1:])
            self.config = dataclasses.replace(
                FAST,
                pre_vote=flags.get("pre-vote", "true") == "true",
                check_quorum=flags.get("check-quorum", "true") == "true",
            )
            self.nodes = {i: Node(i, None) for i in range(1, int(args[0]) + 1)}
            for node in self.nodes.values():
                self.boot(node)
        elif cmd in ("campaign", "tick-heartbeat"):
            node = self.nodes[ids[0]]
            core = self.core(ids[0])
            node.now = max(node.now, core.next_deadline())
            core.tick(node.now)
            self.status(ids, out)
        elif cmd == "advance-clock":
            for node in self.nodes.values():
                node.now += float(args[0])
        elif cmd == "propose":
            try:
                index = self.core(ids[0]).propose(args[1].encode(), self.nodes[ids[0]].now)
                out.append(f"index {index}")
            except ProposalRejected as exc:
                out.append(f"rejected: {exc}")
        elif cmd == "transfer-leadership":
            self.core(ids[0]).transfer_leadership(ids[1], self.nodes[ids[0]].now)
        elif cmd == "compact":
            node = self.nodes[ids[0]]
            core = self.core(ids[0])
            index = ids[1]
            assert index == node.app.last_index, "the scenario app snapshots at its applied index"
            term = core.term_at(index)
            assert term is not None
            meta = SnapshotMeta(index=index, term=term, members=core.members)
            node.disk.compact(Snapshot(meta=meta, data=node.app.encode()))
            core.compact(index)
            out.append(f"{ids[0]} log starts after {index}/{term}")
        elif cmd == "process-ready":
            for i in ids:
                self.process_ready(i, out)
        elif cmd == "deliver-msgs":
            for i in ids:
                self.deliver(i, out)
        elif cmd == "stabilize":
            moved = True
            while moved:
                moved = False
                for i in self.nodes:
                    if self.nodes[i].core is not None:
                        moved |= self.process_ready(i, out)
                for i in self.nodes:
                    moved |= self.deliver(i, out)
        elif cmd in ("hold-persist", "release-persist"):
            node = self.nodes[ids[0]]
            node.hold = cmd == "hold-persist"
            if not node.hold:
                self.sync(node, out)
        elif cmd == "isolate":
            self.cut.add(ids[0])
        elif cmd == "heal":
            self.cut.clear()
        elif cmd == "crash":
            node = self.nodes[ids[0]]
            node.core, node.unsynced, node.held = None, [], []
            self.queues.pop(ids[0], None)
        elif cmd == "restart":
            self.boot(self.nodes[ids[0]])
            self.status(ids, out)
        elif cmd == "status":
            self.status(ids or list(self.nodes), out)
        elif cmd == "log":
            core = self.core(ids[0])
            entries = core.entries(1, core.last_index)
            out.append(", ".join(fmt_entry(e) for e in entries) or "(empty)")
        else:
            raise ValueError(f"unknown command {cmd!r}")
        return out or ["ok"]

    def status(self, ids: list[int], out: list[str]) -> None:
        for i in ids:
            c = self.nodes[i].core
            if c is None:
                out.append(f"{i}: down")
                continue
            out.append(
                f"{i}: {c.role.value} term={c.term} leader={c.leader_id} commit={c.commit_index}"
                f" applied={c.applied_index} last={c.last_index}"
            )


def run_file(path: Path) -> tuple[str, str]:
    """Returns (expected, actual) texts of a whole scenario file."""
    env = Interaction()
    expected_text = path.read_text()
    actual: list[str] = []
    lines = expected_text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            actual.append(line)
            i += 1
            continue
        cmd, *args = line.split()
        assert lines[i + 1] == "----", f"{path.name}:{i + 2}: expected ---- after a command"
        i += 2
        while i < len(lines) and lines[i].strip():
            i += 1
        actual.extend([line, "----", *env.run(cmd, args)])
    return expected_text, "\n".join(actual) + "\n"


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.txt")), ids=lambda p: p.stem)
def test_scenario(path: Path) -> None:
    expected, actual = run_file(path)
    if REWRITE:
        path.write_text(actual)
        return
    assert actual == expected, f"{path.name} differs; rerun with UNIMETER_REWRITE_SCENARIOS=1"


def test_there_are_scenarios() -> None:
    assert len(list(SCENARIOS.glob("*.txt"))) >= 5
