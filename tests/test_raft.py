"""Scenario tests of the Raft core on the deterministic cluster harness.

Each scenario checks behaviour end to end, with the SafetyChecker of tests/raft_harness.py
running after every event. Rules pinned down on single cores are in test_raft_rules.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.raft_harness import FAST, Cluster
from unimeter.consensus.config import LeadershipTransferring, NotLeader, Role
from unimeter.consensus.progress import ProgressState

ELECTION = FAST.election_timeout_s


def committed_payloads(cluster: Cluster, node: int) -> list[bytes]:
    return cluster.nodes[node].app.payloads()


def all_applied(cluster: Cluster, payload: bytes) -> bool:
    return all(payload in n.app.payloads() for n in cluster.nodes.values() if n.up)


# ---------------------------------------------------------------------- elections


@pytest.mark.parametrize("size", [1, 3, 5])
def test_a_single_leader_is_elected_and_stays(size: int) -> None:
    cluster = Cluster(size, seed=size)
    leader = cluster.wait_leader(timeout=2 * ELECTION * 3)
    term = cluster.core(leader).term
    cluster.run_for(20 * ELECTION)
    assert cluster.leaders() == [leader]
    assert cluster.core(leader).term == term, "a healthy cluster must not hold new elections"
    for node in cluster.members:
        assert cluster.core(node).leader_id == leader
        assert cluster.core(node).term == term


def test_leader_commits_a_noop_of_its_term_then_is_ready() -> None:
    cluster = Cluster(3, seed=7)
    leader = cluster.wait_leader()
    core = cluster.core(leader)
    assert cluster.run_until(lambda: core.leader_ready, ELECTION)
    noop = core.entries(core.term_start_index, core.term_start_index)[0]
    assert noop.is_noop and noop.term == core.term
    assert committed_payloads(cluster, leader) == []


def test_a_new_leader_is_elected_when_the_leader_crashes() -> None:
    cluster = Cluster(3, seed=11)
    old = cluster.wait_leader()
    old_term = cluster.core(old).term
    cluster.propose(old, b"before")
    assert cluster.run_until(lambda: all_applied(cluster, b"before"), ELECTION)
    cluster.crash(old)
    new = cluster.wait_leader(timeout=4 * ELECTION)
    assert new != old and cluster.core(new).term > old_term
    cluster.propose(new, b"after")
    assert cluster.run_until(lambda: all_applied(cluster, b"after"), ELECTION)
    cluster.restart(old)
    assert cluster.run_until(lambda: b"after" in committed_payloads(cluster, old), 2 * ELECTION)
    assert committed_payloads(cluster, old) == [b"before", b"after"]


def test_pre_vote_keeps_a_returning_partitioned_node_from_disrupting_the_leader() -> None:
    cluster = Cluster(3, seed=3)
    leader = cluster.wait_leader()
    term = cluster.core(leader).term
    loner = next(n for n in cluster.members if n != leader)
    cluster.isolate(loner)
    cluster.run_for(30 * ELECTION)  # the loner campaigns over and over, in vain
    assert cluster.core(loner).role in (Role.FOLLOWER, Role.PRE_CANDIDATE)
    assert cluster.core(loner).term == term, "pre-vote must not raise the loner's term"
    cluster.heal()
    cluster.run_for(10 * ELECTION)
    assert cluster.leader() == leader
    assert cluster.core(leader).term == term
    assert cluster.core(loner).leader_id == leader


def test_without_pre_vote_a_returning_node_does_disrupt() -> None:
    """The control experiment for the test above: it shows what pre-vote prevents."""
    config = dataclasses.replace(FAST, pre_vote=False)
    cluster = Cluster(3, seed=3, config=config)
    leader = cluster.wait_leader()
    term = cluster.core(leader).term
    loner = next(n for n in cluster.members if n != leader)
    cluster.isolate(loner)
    cluster.run_for(30 * ELECTION)
    assert cluster.core(loner).term > term + 5
    cluster.heal()
    cluster.run_for(10 * ELECTION)
    assert cluster.core(cluster.wait_leader()).term > term


def test_check_quorum_makes_an_isolated_leader_step_down() -> None:
    cluster = Cluster(3, seed=5)
    leader = cluster.wait_leader()
    cluster.isolate(leader)
    assert cluster.run_until(lambda: cluster.core(leader).role is not Role.LEADER, 3 * ELECTION)
    with pytest.raises(NotLeader):
        cluster.core(leader).propose(b"x", cluster.now)
    others = [n for n in cluster.members if n != leader]
    assert cluster.run_until(lambda: cluster.leader() in others, 4 * ELECTION)


def test_followers_in_lease_ignore_a_candidate() -> None:
    """A node that cannot hear the leader (one-way link failure) must not depose it while the
    others still hear the leader: they ignore its vote requests (the leader lease)."""
    cluster = Cluster(3, seed=9)
    leader = cluster.wait_leader()
    term = cluster.core(leader).term
    deaf = next(n for n in cluster.members if n != leader)
    cluster.blocked.add((leader, deaf))
    cluster.run_for(30 * ELECTION)
    assert cluster.leader() == leader and cluster.core(leader).term == term


# ---------------------------------------------------------------------- replication


def test_commit_needs_a_quorum_of_fsyncs() -> None:
    cluster = Cluster(3, seed=2)
    leader = cluster.wait_leader()
    assert cluster.run_until(lambda: cluster.core(leader).leader_ready, ELECTION)
    a, b = (n for n in cluster.members if n != leader)
    cluster.set_hold_fsync(a, True)
    cluster.set_hold_fsync(b, True)
    index = cluster.propose(leader, b"x")
    cluster.run_for(5 * ELECTION)
    # Both followers hold the entry in their written (unsynced) logs, and the leader's own
    # fsync is done: one durable copy out of three is not a quorum.
    assert all(cluster.nodes[n].written.term_at(index) is not None for n in (a, b))
    assert cluster.nodes[leader].durable.term_at(index) is not None
    assert cluster.core(leader).commit_index < index
    cluster.set_hold_fsync(a, False)
    assert cluster.run_until(lambda: cluster.core(leader).commit_index >= index, ELECTION)
    assert cluster.run_until(lambda: b"x" in committed_payloads(cluster, leader), ELECTION)


def test_the_leaders_own_fsync_counts_only_once_done() -> None:
    cluster = Cluster(3, seed=4)
    leader = cluster.wait_leader()
    assert cluster.run_until(lambda: cluster.core(leader).leader_ready, ELECTION)
    a, b = (n for n in cluster.members if n != leader)
    cluster.set_hold_fsync(leader, True)
    cluster.set_hold_fsync(b, True)
    index = cluster.propose(leader, b"x")
    cluster.run_for(5 * ELECTION)
    assert cluster.nodes[a].durable.term_at(index) is not None
    assert cluster.core(leader).commit_index < index, "leader + 1 unsynced is not a quorum"
    cluster.set_hold_fsync(b, False)  # two followers durable: a quorum without the leader
    assert cluster.run_until(lambda: cluster.core(leader).commit_index >= index, ELECTION)
    # ... but the leader applies only what its own disk holds.
    cluster.run_for(ELECTION)
    assert b"x" not in committed_payloads(cluster, leader)
    cluster.set_hold_fsync(leader, False)
    assert cluster.run_until(lambda: b"x" in committed_payloads(cluster, leader), ELECTION)


def test_an_idle_follower_is_not_mistaken_for_a_stalled_one() -> None:
    cluster = Cluster(3, seed=14)
    leader = cluster.wait_leader()
    assert cluster.run_until(lambda: cluster.core(leader).leader_ready, ELECTION)
    follower = next(n for n in cluster.members if n != leader)
    cluster.run_for(10 * ELECTION)  # idle, much longer than replicate_stall_s
    cluster.set_hold_fsync(follower, True)
    cluster.propose(leader, b"x")
    cluster.run_for(0.8 * FAST.replicate_stall_s)  # heartbeats pass; the ack is not late yet
    peer = cluster.core(leader).status().peers[follower]
    assert peer.state is ProgressState.REPLICATE and peer.inflight_appends == 1
    cluster.run_for(FAST.replicate_stall_s)  # now it is: probe again
    assert cluster.core(leader).status().peers[follower].state is ProgressState.PROBE
    cluster.set_hold_fsync(follower, False)
    assert cluster.run_until(lambda: b"x" in committed_payloads(cluster, follower), ELECTION)


def test_a_stale_leaders_entries_are_replaced_after_a_new_election() -> None:
    cluster = Cluster(3, seed=6)
    old = cluster.wait_leader()
    assert cluster.run_until(lambda: cluster.core(old).leader_ready, ELECTION)
    cluster.isolate(old)
    for i in range(3):
        cluster.propose(old, b"stale%d" % i)
    others = [n for n in cluster.members if n != old]
    assert cluster.run_until(lambda: cluster.leader() in others, 5 * ELECTION)
    new = cluster.leader()
    assert new is not None
    for i in range(5):
        cluster.propose(new, b"fresh%d" % i)
    majority_applied = lambda: all(b"fresh4" in committed_payloads(cluster, n) for n in others)  # noqa: E731
    assert cluster.run_until(majority_applied, 2 * ELECTION)
    cluster.heal()
    assert cluster.run_until(lambda: b"fresh4" in committed_payloads(cluster, old), 5 * ELECTION)
    assert cluster.core(old).role is Role.FOLLOWER
    for node in cluster.members:
        payloads = committed_payloads(cluster, node)
        assert payloads == [b"fresh%d" % i for i in range(5)]
    old_log = [e.data for e in cluster.core(old).entries(1, cluster.core(old).last_index)]
    assert not any(d.startswith(b"stale") for d in old_log)


def test_a_lagging_follower_catches_up_by_snapshot() -> None:
    cluster = Cluster(3, seed=8, compact_every=4)
    leader = cluster.wait_leader()
    lagger = next(n for n in cluster.members if n != leader)
    cluster.crash(lagger)
    for i in range(30):
        cluster.propose(leader, b"e%d" % i)
        cluster.run_for(0.005)
    assert cluster.run_until(lambda: b"e29" in committed_payloads(cluster, leader), ELECTION)
    assert cluster.core(leader).snapshot_index > 10, "the leader should have compacted"
    cluster.restart(lagger)
    assert cluster.run_until(lambda: b"e29" in cluster.nodes[lagger].app.payloads(), ELECTION)
    node = cluster.nodes[lagger]
    installed = cluster.run_until(lambda: node.durable.snapshot is not None, ELECTION)
    assert installed, "the lagger should have installed a snapshot"
    assert node.app.payloads() == [b"e%d" % i for i in range(30)]

    def replicating() -> bool:
        peer = cluster.core(leader).status().peers[lagger]
        return peer.state is ProgressState.REPLICATE and peer.match >= 31

    assert cluster.run_until(replicating, ELECTION)


def test_leadership_transfer_moves_the_leader() -> None:
    cluster = Cluster(3, seed=10)
    leader = cluster.wait_leader()
    term = cluster.core(leader).term
    target = next(n for n in cluster.members if n != leader)
    for i in range(5):
        cluster.propose(leader, b"t%d" % i)
    cluster.transfer(leader, target)
    with pytest.raises(LeadershipTransferring):
        cluster.core(leader).propose(b"during", cluster.now)
    assert cluster.run_until(lambda: cluster.leader() == target, ELECTION)
    assert cluster.core(target).term == term + 1
    cluster.propose(target, b"after")
    assert cluster.run_until(lambda: all_applied(cluster, b"after"), ELECTION)
    assert committed_payloads(cluster, leader) == [*(b"t%d" % i for i in range(5)), b"after"]


def test_a_transfer_to_an_unreachable_node_times_out_and_the_leader_leads_on() -> None:
    cluster = Cluster(3, seed=12)
    leader = cluster.wait_leader()
    target = next(n for n in cluster.members if n != leader)
    cluster.crash(target)
    cluster.transfer(leader, target)
    cluster.run_for(2 * ELECTION)
    assert cluster.leader() == leader
    cluster.propose(leader, b"still")
    assert cluster.run_until(lambda: b"still" in committed_payloads(cluster, leader), ELECTION)


def test_restarting_every_node_keeps_committed_entries() -> None:
    cluster = Cluster(3, seed=13)
    leader = cluster.wait_leader()
    for i in range(10):
        cluster.propose(leader, b"k%d" % i)
    assert cluster.run_until(lambda: all_applied(cluster, b"k9"), ELECTION)
    for node in cluster.members:
        cluster.crash(node)
    for node in cluster.members:
        cluster.restart(node)
    # Recovered from disk alone: what the hard state says is committed is re-applied at once.
    expected = [b"k%d" % i for i in range(11)]
    for node in cluster.members:
        replayed = committed_payloads(cluster, node)
        assert replayed == expected[: len(replayed)]
    leader = cluster.wait_leader(timeout=4 * ELECTION)
    cluster.propose(leader, b"k10")
    assert cluster.run_until(lambda: all_applied(cluster, b"k10"), ELECTION)
    for node in cluster.members:
        assert committed_payloads(cluster, node) == [b"k%d" % i for i in range(11)]
