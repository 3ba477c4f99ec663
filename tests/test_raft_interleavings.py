"""Random fault schedules against the Raft core, safety checked after every event.

Each schedule runs a safety phase (message loss, duplication and reordering, slow fsyncs,
crashes that keep a random part of unsynced writes, partitions, leadership transfers,
proposals at whichever nodes believe they lead -- stale leaders included), then a healing
phase that must converge: within a bounded virtual time a leader exists, a new proposal
commits and every node applies the same log. The SafetyChecker in raft_harness.py asserts
after every event: one leader per term, committed entries never change, identical apply
sequences, committed entries durable on a quorum, leader completeness.

Explore more seeds than the suite runs with:
    python -m tests.test_raft_interleavings --seeds 2000 [--size 5] [--compact 4]
A failing seed prints its number; the same seed replays the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.raft_harness import FAST, Cluster, DiskConfig, NetConfig
from unimeter.consensus.config import ProposalRejected

# Small appends and windows so that flow control, partial batches and probing get exercised.
CHAOS = dataclasses.replace(FAST, append_entries_max=2, inflight_appends_max=3)

ACTIONS = (
    *("propose",) * 3,
    *("bounce",) * 2,
    *("crash", "restart", "isolate", "heal", "split", "move"),
)


@dataclass(frozen=True)
class Step:
    wait_s: float
    action: str
    node: int  # 1-based, taken modulo the cluster size


def random_steps(rng: random.Random, count: int) -> list[Step]:
    return [
        Step(rng.uniform(0.001, 0.04), rng.choice(ACTIONS), rng.randint(1, 5)) for _ in range(count)
    ]


def run_schedule(
    seed: int, steps: list[Step], *, size: int = 3, compact_every: int | None = None
) -> Cluster:
    cluster = Cluster(
        size,
        seed=seed,
        config=CHAOS,
        net=NetConfig(drop_p=0.08, dup_p=0.05, delay_max_s=0.02),
        disk=DiskConfig(fsync_slow_p=0.15, fsync_slow_s=0.05),
        compact_every=compact_every,
    )
    rng = random.Random(seed)
    proposals = 0
    for step in steps:
        cluster.run_for(step.wait_s)
        node = (step.node - 1) % size + 1
        if step.action == "propose":
            # Any node that believes it leads: stale leaders' entries must never commit.
            believers = cluster.leaders()
            if believers:
                who = believers[node % len(believers)]
                for _ in range(rng.randint(1, 3)):
                    proposals += 1
                    try:
                        cluster.propose(who, b"p%d" % proposals)
                    except ProposalRejected:
                        break
        elif step.action == "crash":
            cluster.crash(node)
        elif step.action == "bounce":  # crash and come straight back: unsynced writes are lost
            cluster.crash(node)
            cluster.restart(node)
        elif step.action == "restart":
            cluster.restart(node)
        elif step.action == "isolate":
            cluster.isolate(node)
        elif step.action == "heal":
            cluster.heal()
        elif step.action == "split":
            cluster.partition(tuple(rng.sample(cluster.members, size // 2)))
        elif step.action == "move":
            leader = cluster.leader()
            if leader is not None and leader != node:
                cluster.transfer(leader, node)
    heal_and_converge(cluster)
    return cluster


# Measured over 600 seeds: healing takes 2 election timeouts at the median and under 6 at
# worst; the bound leaves room without letting a slow livelock pass.
HEAL_TIMEOUT_S = 15 * CHAOS.election_timeout_s


def heal_and_converge(cluster: Cluster, timeout_s: float = HEAL_TIMEOUT_S) -> None:
    """Liveness: once the faults stop, a proposal commits and every node applies it."""
    cluster.heal()
    cluster.net.drop_p = cluster.net.dup_p = 0.0
    cluster.disk.fsync_slow_p = 0.0
    for node in cluster.members:
        cluster.restart(node)
    deadline = cluster.now + timeout_s
    while cluster.now < deadline:
        leader = cluster.leader()
        if leader is None or not cluster.core(leader).leader_ready:
            cluster.run_for(0.01)
            continue
        try:
            index = cluster.propose(leader, b"final")
        except ProposalRejected:  # a leadership transfer is under way
            cluster.run_for(0.01)
            continue
        term = cluster.core(leader).term

        def applied_everywhere(index: int = index, term: int = term) -> bool:
            return all((index, term, b"final") in n.app.applied for n in cluster.nodes.values())

        def deposed(leader: int = leader, term: int = term) -> bool:
            core = cluster.core(leader)
            return core.term != term or core.leader_id != leader

        cluster.run_until(lambda: applied_everywhere() or deposed(), deadline - cluster.now)
        if applied_everywhere():
            return
    states = [
        (n.id, n.must_core().role.value, n.must_core().term, n.must_core().commit_index)
        for n in cluster.nodes.values()
    ]
    raise AssertionError(f"seed={cluster.seed}: no convergence within {timeout_s}s: {states}")


def run_seed(seed: int, *, size: int = 3, compact_every: int | None = None) -> Cluster:
    return run_schedule(
        seed, random_steps(random.Random(seed), 150), size=size, compact_every=compact_every
    )


step_strategy = st.builds(
    Step,
    wait_s=st.floats(min_value=0.001, max_value=0.04),
    action=st.sampled_from(ACTIONS),
    node=st.integers(min_value=1, max_value=5),
)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), steps=st.lists(step_strategy, max_size=120))
def test_three_nodes_survive_any_schedule(seed: int, steps: list[Step]) -> None:
    run_schedule(seed, steps, size=3)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), steps=st.lists(step_strategy, max_size=120))
def test_five_nodes_with_snapshots_survive_any_schedule(seed: int, steps: list[Step]) -> None:
    run_schedule(seed, steps, size=5, compact_every=4)


def test_seeded_three_node_schedules() -> None:
    for seed in range(40):
        run_seed(seed)


def test_seeded_five_node_schedules() -> None:
    for seed in range(15):
        run_seed(seed, size=5)


def test_seeded_schedules_with_compaction_and_snapshots() -> None:
    installs = 0
    for seed in range(25):
        cluster = run_seed(seed, compact_every=3)
        installs += sum(1 for n in cluster.nodes.values() if n.durable.snapshot is not None)
    assert installs > 0, "the schedules never exercised snapshots"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=500)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--compact", type=int, default=None)
    args = parser.parse_args()
    for seed in range(args.first, args.first + args.seeds):
        try:
            run_seed(seed, size=args.size, compact_every=args.compact)
        except AssertionError as exc:
            print(f"seed {seed} FAILED: {exc}")
            sys.exit(1)
    print(f"{args.seeds} seeds passed")


if __name__ == "__main__":
    main()
