"""The deterministic simulator (unimeter/sim), and the core bugs it found.

- Swarm: ``UNIMETER_SIM_SEEDS`` seeds (default 200), in chunks, must hold every invariant.
- Determinism: a seed's whole history (every core input with its time, every post state, every
  fault) hashes the same twice in one process and in processes with other hash seeds.
- Traces: a seed's trace replays to the very states the simulator ended with.
- Broken variants: each deliberate bug of ``unimeter.testing_switches`` is caught by the
  checker that guards against it within a stated number of seeds.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from unimeter import testing_switches
from unimeter.actors.catalog import CatalogCore
from unimeter.actors.effects import Send
from unimeter.actors.partition import CatalogUpdate, PartitionCore
from unimeter.actors.replicated import PeerMessage, Persisted, RaftTick, Recovered
from unimeter.consensus.config import RaftConfig, Role
from unimeter.consensus.messages import HardState, InstallSnapshot
from unimeter.model import AggType, MetricSchema
from unimeter.sim.cluster import Cluster
from unimeter.sim.swarm import run_seed
from unimeter.state.entries import LiveMetric
from unimeter.state.partition_state import PartitionState
from unimeter.trace import Core, TraceWriter, replay

T0 = 1_750_000_000_000_000
SEEDS = int(os.environ.get("UNIMETER_SIM_SEEDS", "200"))
CHUNK = 25
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------- swarm


@pytest.mark.parametrize("start", range(0, SEEDS, CHUNK))
def test_every_seed_holds_every_invariant(start: int) -> None:
    failures = []
    for seed in range(start, min(start + CHUNK, SEEDS)):
        result = run_seed(seed)
        if not result.ok:
            failures.append(
                f"seed {seed} (replay: python -m unimeter.sim --seed {seed}):\n  "
                + "\n  ".join(str(v) for v in result.violations)
            )
    assert not failures, "\n".join(failures)


# Seeds that once failed, with the scale they failed at: each stays a regression test.
# 777912 @2: a retried create_metric was answered with a pending delete's reply.
REGRESSION_SEEDS = ((777912, 2),)


@pytest.mark.parametrize(("seed", "scale"), REGRESSION_SEEDS)
def test_a_seed_that_once_failed_holds_every_invariant(seed: int, scale: int) -> None:
    result = run_seed(seed, scale=scale)
    assert result.ok, "\n  ".join(str(v) for v in result.violations)


def test_the_swarm_exercises_faults_and_every_check() -> None:
    """A swarm that passes because nothing happened proves nothing: over a few seeds the runs
    crash nodes, elect many leaders, install snapshots, acknowledge SYNC writes, fire alerts and
    compare client reads with the model."""
    totals: dict[str, int] = {}
    for seed in range(20):
        result = run_seed(seed)
        assert result.ok, result.violations
        for key, value in result.stats.items():
            totals[key] = totals.get(key, 0) + value
    for key in ("faults", "terms", "snapshot_installs", "sync_acks", "alerts", "reads_judged",
                "retries", "msgs_lost"):  # fmt: skip
        assert totals[key] > 0, (key, totals)


# ---------------------------------------------------------------------- determinism


class _Hash:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.digest.update(data)


def history(seed: int) -> str:
    """The hash of a seed's whole history: its trace, notes included."""
    sink = _Hash()
    run_seed(seed, tracer=TraceWriter(sink, {"seed": seed}))
    return sink.digest.hexdigest()


def test_the_same_seed_always_makes_the_same_run() -> None:
    for seed in (3, 11):
        assert history(seed) == history(seed)
    assert history(3) != history(4)


def test_a_run_does_not_depend_on_the_process() -> None:
    # Other hash seeds reorder every set and dict of strings that iteration could expose.
    code = "from tests.test_sim import history; print(history(5))"
    digests = {history(5)}
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=100, check=True,
        )  # fmt: skip
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


# ---------------------------------------------------------------------- traces


def _position(core: Core) -> list[Any]:
    state = core.state.to_bytes() if isinstance(core, CatalogCore) else core.state.snapshot()
    raft = core.raft
    return [raft.term, raft.commit_index, core.state.applied_index, hashlib.sha256(state).digest()]


def _end_states(cluster: Cluster) -> dict[tuple[int, int], list[Any]]:
    out = {}
    for node_id, node in sorted(cluster.nodes.items()):
        if node.up:
            for replica in node.replicas():
                out[(node_id, replica.group)] = _position(replica.core)
    return out


def _replayed_states(path: Path) -> dict[tuple[int, int], list[Any]]:
    rp, diverged = replay(str(path), out=lambda line: None, quiet=True)
    assert not diverged, diverged[:3]
    return {actor: _position(core) for actor, core in sorted(rp.cores.items())}


@pytest.mark.parametrize("seed", [6, 13])  # 13 crashes nodes and installs a snapshot
def test_a_seeds_trace_replays_to_the_states_the_run_ended_with(seed: int, tmp_path: Path) -> None:
    ended: dict[tuple[int, int], list[Any]] = {}
    path = tmp_path / "run.trace"
    with open(path, "wb") as f:
        result = run_seed(
            seed,
            tracer=TraceWriter(f, {"seed": seed}),
            inspect=lambda c: ended.update(_end_states(c)),
        )
    assert result.ok, result.violations
    replayed = _replayed_states(path)
    assert ended and {a: replayed[a] for a in ended} == ended


# ---------------------------------------------------------------------- broken variants

# (switch, the checker that must catch it, within this many seeds). Each is caught much sooner
# today (seeds 0, 0, 0 and 6); the bound leaves room for workload changes.
BROKEN = [
    ("SYNC_ACK_BEFORE_COMMIT", "SyncAckedExactlyOnce", 10),
    ("COMMIT_WITHOUT_QUORUM", "CommittedPrefix", 10),
    ("SKIP_PRODUCER_CHECK", "NoDoubleCount", 25),
    ("SKIP_EVENT_ID_DEDUP", "NoDoubleCount", 25),
]


@pytest.mark.parametrize(("switch", "checker", "within"), BROKEN)
def test_a_deliberate_bug_is_caught(
    switch: str, checker: str, within: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(testing_switches, switch, True)
    for seed in range(within):
        result = run_seed(seed)
        if any(v.checker == checker for v in result.violations):
            return
    pytest.fail(f"{switch}: {checker} did not fail within {within} seeds")


def test_a_failing_seeds_trace_replays_to_the_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(testing_switches, "SKIP_EVENT_ID_DEDUP", True)
    seed = next(s for s in range(25) if not run_seed(s).ok)
    path = tmp_path / "failing.trace"
    with open(path, "wb") as f:
        result = run_seed(seed, tracer=TraceWriter(f, {"seed": seed}))
    assert any(v.checker == "CoreCrash" for v in result.violations)
    lines: list[str] = []
    _, diverged = replay(str(path), out=lines.append)
    assert not diverged
    assert any("raised AssertionError" in line for line in lines)
    assert any("VIOLATION [NoDoubleCount]" in line for line in lines)


# ---------------------------------------------------------------------- bugs found


class _Group:
    """Three partition cores wired by hand: every message and fsync is instant."""

    def __init__(self) -> None:
        cfg = RaftConfig(election_timeout_s=0.1, heartbeat_interval_s=0.01)
        empty = Recovered(hard_state=HardState(), entries=(), snapshot=None)
        self.now = T0
        self.cores = {
            i: PartitionCore(
                0, PartitionState(0), node_id=i, members=(1, 2, 3), recovered=empty,
                raft_config=cfg, rng=random.Random(i), now_us=T0,
            )
            for i in (1, 2, 3)
        }  # fmt: skip
        self.down: set[int] = set()
        self.sent: list[Send] = []
        self._mail: deque[tuple[int, object]] = deque()

    def step(self, node: int, msg: object) -> None:
        fx = self.cores[node].step(msg, self.now)
        self.sent.extend(fx.sends)
        for send in fx.sends:
            self._mail.append((send.dst, PeerMessage(send.message)))
        if fx.sync_number is not None:
            self._mail.append((node, Persisted(fx.sync_number)))

    def run(self, ms: int) -> None:
        for _ in range(ms):
            self.now += 1000
            for node, core in self.cores.items():
                if node not in self.down and core.next_deadline_us() <= self.now:
                    self.step(node, RaftTick())
            while self._mail:
                node, msg = self._mail.popleft()
                if node not in self.down:
                    self.step(node, msg)

    def leader(self) -> int:
        leaders = [i for i, c in self.cores.items() if c.raft.role is Role.LEADER]
        assert len(leaders) == 1, leaders
        return leaders[0]


def test_a_leader_sends_a_snapshot_to_a_follower_behind_its_compacted_log() -> None:
    # Found by the simulator: drain() called send_snapshot() between ready() and advance(),
    # which the Raft core refuses, so the first snapshot a leader had to send crashed it.
    group = _Group()
    group.down = {3}
    group.run(400)
    leader = group.leader()
    metric = LiveMetric(generation=1, schema=MetricSchema(code="c", agg_type=AggType.COUNT))
    group.step(leader, CatalogUpdate(1, (metric,), token=object()))
    group.run(50)
    core = group.cores[leader]
    applied = core.state.applied_index
    assert core.state.catalog_version == 1
    core.raft.compact(applied)  # what PartitionRuntime.checkpoint does
    group.down = set()
    group.sent.clear()
    group.run(300)
    assert any(isinstance(s.message, InstallSnapshot) and s.dst == 3 for s in group.sent)
    assert group.cores[3].state.applied_index >= applied
    assert group.cores[3].state.catalog_version == 1
