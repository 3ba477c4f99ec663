"""Scenario tests of the Raft core on the deterministic harness, and unit tests of single cores.

Cluster scenarios (tests/raft_harness.py) check behaviour end to end with the SafetyChecker
running after every event; the unit tests at the bottom drive one core by hand to pin down
rules that random schedules reach only rarely (durability of votes and acks, §5.4.2, hints).
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from tests.raft_harness import FAST, Cluster
from unimeter.consensus.config import LeadershipTransferring, NotLeader, Role
from unimeter.consensus.log import RaftLog
from unimeter.consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    HardState,
    Heartbeat,
    LogEntry,
    Message,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)
from unimeter.consensus.progress import ProgressState
from unimeter.consensus.raft import RaftCore

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


# ---------------------------------------------------------------------- single cores by hand


def make_core(
    node: int = 1,
    *,
    members: tuple[int, ...] = (1, 2, 3),
    term: int = 0,
    vote: int | None = None,
    commit: int = 0,
    log: tuple[tuple[int, int], ...] = (),  # (index, term) pairs
) -> RaftCore:
    entries = [LogEntry(term=t, index=i, data=b"d%d" % i) for i, t in log]
    return RaftCore(
        node_id=node,
        members=members,
        rng=random.Random(node),
        config=FAST,
        hard_state=HardState(term=term, vote=vote, commit=commit),
        log=entries,
        snapshot=None,
        now=0.0,
    )


def drain(core: RaftCore, *, persist: bool = True) -> list[Message]:
    """Run Readies to a fixpoint; with ``persist``, report each durable at once."""
    out: list[Message] = []
    while core.has_ready():
        rd = core.ready()
        out.extend(rd.messages)
        core.advance(rd)
        if persist and rd.must_sync:
            core.on_persisted(rd.number)
    return out


def elect(core: RaftCore, now: float = 10.0) -> list[Message]:
    """Make ``core`` leader through a real election; returns its first messages."""
    core.tick(now)
    msgs = drain(core)
    pre = [m for m in msgs if isinstance(m, RequestVote) and m.pre_vote]
    for m in pre:
        core.step(
            RequestVoteResponse(src=m.dst, dst=m.src, term=m.term, granted=True, pre_vote=True), now
        )
    msgs = drain(core)
    votes = [m for m in msgs if isinstance(m, RequestVote) and not m.pre_vote]
    assert votes, msgs
    for m in votes:
        core.step(RequestVoteResponse(src=m.dst, dst=m.src, term=m.term, granted=True), now)
    assert core.role is Role.LEADER
    return drain(core)


def test_vote_grant_leaves_only_after_the_vote_is_durable() -> None:
    core = make_core(2, term=1)
    core.step(RequestVote(src=1, dst=2, term=2, last_index=0, last_term=0), 5.0)
    rd = core.ready()
    assert rd.must_sync and rd.hard_state == HardState(term=2, vote=1, commit=0)
    assert not any(isinstance(m, RequestVoteResponse) for m in rd.messages)
    core.advance(rd)
    assert not core.has_ready()
    core.on_persisted(rd.number)
    (grant,) = drain(core)
    assert grant == RequestVoteResponse(src=2, dst=1, term=2, granted=True)


def test_a_candidate_asks_and_counts_itself_only_once_its_term_is_durable() -> None:
    core = make_core(1, members=(1,))
    core.tick(0.0)  # a lone member campaigns at once; its pre-vote wins alone
    rd = core.ready()
    assert core.role is Role.CANDIDATE and rd.must_sync
    core.advance(rd)
    assert core.role is Role.CANDIDATE, "won before its own vote was durable"
    core.on_persisted(rd.number)
    assert core.status().role is Role.LEADER

    three = make_core(1)
    three.tick(10.0)
    pre = drain(three)
    for m in pre:
        three.step(
            RequestVoteResponse(src=m.dst, dst=1, term=m.term, granted=True, pre_vote=True), 10.0
        )
    rd = three.ready()
    assert not any(isinstance(m, RequestVote) for m in rd.messages)
    three.advance(rd)
    three.on_persisted(rd.number)
    assert len([m for m in drain(three) if isinstance(m, RequestVote)]) == 2


def test_append_acks_leave_only_once_the_entries_are_durable() -> None:
    core = make_core(2, term=1)
    entry = LogEntry(term=1, index=1, data=b"a")
    core.step(
        AppendEntries(
            src=1, dst=2, term=1, prev_index=0, prev_term=0, entries=(entry,), leader_commit=1
        ),
        1.0,
    )
    rd = core.ready()
    assert rd.entries == (entry,) and rd.must_sync
    assert not any(isinstance(m, AppendEntriesResponse) for m in rd.messages)
    # Committed, but not applied nor recorded as committed before it is durable here: a
    # stored commit index must never point past the durable log.
    assert core.commit_index == 1 and rd.committed == ()
    assert rd.hard_state is None, "term and vote are unchanged; commit 1 is not durable yet"
    core.advance(rd)
    core.on_persisted(rd.number)
    rd = core.ready()
    assert rd.committed == (entry,) and rd.hard_state == HardState(term=1, vote=None, commit=1)
    assert not rd.must_sync, "a commit-only change needs no fsync"
    assert rd.messages == (
        AppendEntriesResponse(src=2, dst=1, term=1, success=True, match_index=1),
    )
    core.advance(rd)


def test_a_follower_acknowledges_only_the_prefix_it_checked() -> None:
    # Entries 1-2 of term 1 match the leader; 3-4 of term 2 came from another leader.
    core = make_core(2, term=3, log=((1, 1), (2, 1), (3, 2), (4, 2)))
    first = LogEntry(term=1, index=1, data=b"d1")
    core.step(
        AppendEntries(
            src=1, dst=2, term=3, prev_index=0, prev_term=0, entries=(first,), leader_commit=0
        ),
        1.0,
    )
    acks = [m for m in drain(core) if isinstance(m, AppendEntriesResponse)]
    assert acks == [AppendEntriesResponse(src=2, dst=1, term=3, success=True, match_index=1)]
    assert core.last_index == 4, "matching entries must not truncate the log"


def test_conflicting_uncommitted_entries_are_replaced() -> None:
    core = make_core(2, term=3, commit=1, log=((1, 1), (2, 1), (3, 2), (4, 2)))
    new = (LogEntry(term=3, index=3, data=b"n3"),)
    core.step(
        AppendEntries(
            src=1, dst=2, term=3, prev_index=2, prev_term=1, entries=new, leader_commit=3
        ),
        1.0,
    )
    rd = core.ready()
    assert rd.entries == new, "the runtime must truncate after 2 and append"
    core.advance(rd)
    core.on_persisted(rd.number)
    assert core.last_index == 3 and core.term_at(3) == 3
    assert drain(core)[-1] == AppendEntriesResponse(
        src=2, dst=1, term=3, success=True, match_index=3
    )
    assert core.commit_index == 3


def test_a_rejection_hints_where_the_logs_may_agree() -> None:
    # Follower: terms 1 1 2 2 2 2; leader probes at index 6 claiming term 3 there.
    core = make_core(2, term=4, log=((1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 2)))
    core.step(
        AppendEntries(src=1, dst=2, term=4, prev_index=6, prev_term=3, entries=(), leader_commit=0),
        1.0,
    )
    (reject,) = drain(core)
    assert isinstance(reject, AppendEntriesResponse) and not reject.success
    assert (reject.rejected_index, reject.hint_index, reject.hint_term) == (6, 6, 2)
    # Probed at 6 claiming term 1: every entry above index 2 has a larger term.
    core.step(
        AppendEntries(src=1, dst=2, term=4, prev_index=6, prev_term=1, entries=(), leader_commit=0),
        1.0,
    )
    (reject,) = drain(core)
    assert isinstance(reject, AppendEntriesResponse)
    assert (reject.hint_index, reject.hint_term) == (2, 1)


def test_the_leader_skips_back_by_term_on_a_rejection() -> None:
    leader = make_core(1, term=5, vote=1, log=tuple((i, 1 if i <= 2 else 3) for i in range(1, 8)))
    msgs = elect(leader)
    probe = next(m for m in msgs if isinstance(m, AppendEntries) and m.dst == 2)
    assert probe.prev_index == 7
    # Follower 2 holds terms 1 1 2 2 2 ...: its hint (5, 2) lets the leader jump to index 2.
    leader.step(
        AppendEntriesResponse(
            src=2, dst=1, term=6, success=False, rejected_index=7, hint_index=5, hint_term=2
        ),
        11.0,
    )
    (retry,) = [m for m in drain(leader) if isinstance(m, AppendEntries) and m.dst == 2]
    assert retry.prev_index == 2 and retry.prev_term == 1


def test_only_current_term_entries_are_committed_by_counting() -> None:
    """Raft §5.4.2 (figure 8): a quorum holding an entry of an older term does not commit it."""
    leader = make_core(1, term=2, vote=1, log=((1, 1), (2, 2), (3, 2)))
    elect(leader)  # term 3; the no-op is at index 4
    assert leader.term == 3 and leader.term_start_index == 4
    leader.step(AppendEntriesResponse(src=2, dst=1, term=3, success=True, match_index=3), 11.0)
    drain(leader)
    assert leader.commit_index == 0, "entries of term 2 on a quorum must not commit by counting"
    leader.step(AppendEntriesResponse(src=2, dst=1, term=3, success=True, match_index=4), 11.0)
    drain(leader)
    assert leader.commit_index == 4


def test_flow_control_bounds_entries_and_appends_in_flight() -> None:
    leader = make_core(1)
    elect(leader)
    leader.step(
        AppendEntriesResponse(src=2, dst=1, term=leader.term, success=True, match_index=1), 11.0
    )
    for i in range(100):
        leader.propose(b"p%d" % i, 11.0)
    appends = [m for m in drain(leader) if isinstance(m, AppendEntries) and m.dst == 2]
    assert len(appends) == FAST.inflight_appends_max
    assert all(len(m.entries) == FAST.append_entries_max for m in appends)
    # Follower 3 never answered the first probe: it gets nothing more until it does.
    assert not any(isinstance(m, AppendEntries) and m.dst == 3 for m in drain(leader))
    leader.step(
        AppendEntriesResponse(
            src=2, dst=1, term=leader.term, success=True, match_index=appends[0].entries[-1].index
        ),
        11.0,
    )
    more = [m for m in drain(leader) if isinstance(m, AppendEntries) and m.dst == 2]
    assert len(more) == 1, "one acknowledged append frees one slot"


def test_followers_heard_from_a_leader_ignore_vote_requests() -> None:
    core = make_core(2, term=1)
    core.step(Heartbeat(src=1, dst=2, term=1, commit=0), 1.0)
    drain(core)
    core.step(RequestVote(src=3, dst=2, term=2, last_index=5, last_term=1), 1.05)
    assert drain(core) == [] and core.term == 1
    core.step(RequestVote(src=3, dst=2, term=2, last_index=5, last_term=1, transfer=True), 1.05)
    assert core.term == 2 and core.vote == 3


def test_timeout_now_starts_an_immediate_real_election() -> None:
    core = make_core(2, term=1)
    core.step(TimeoutNow(src=1, dst=2, term=1), 1.0)
    assert core.role is Role.CANDIDATE and core.term == 2
    votes = [m for m in drain(core) if isinstance(m, RequestVote)]
    assert {m.dst for m in votes} == {1, 3} and all(m.transfer and not m.pre_vote for m in votes)


def test_misuse_is_refused() -> None:
    core = make_core(1)
    with pytest.raises(NotLeader):
        core.propose(b"x", 0.0)
    elect(core)
    with pytest.raises(ValueError):
        core.propose(b"", 11.0)  # empty payloads are the no-op's marker
    with pytest.raises(ValueError):
        core.compact(core.last_index)  # nothing applied yet
    rd = core.ready()
    with pytest.raises(AssertionError):
        core.tick(12.0)  # advance() must come first
    core.advance(rd)
    with pytest.raises(ValueError):
        make_core(1, commit=3, log=((1, 1),))  # a commit index past the log is corruption


def test_next_deadline_drives_ticks() -> None:
    core = make_core(1)
    due = core.next_deadline()
    assert FAST.election_timeout_s <= due < 2 * FAST.election_timeout_s
    core.tick(due - 1e-6)
    assert core.role is Role.FOLLOWER
    core.tick(due)
    assert core.status().role is Role.PRE_CANDIDATE
    assert core.next_deadline() > due


def test_an_ack_for_state_stored_earlier_waits_for_that_sync() -> None:
    """A duplicate append needs nothing new stored, but its ack still promises entries that
    an earlier, not yet synced Ready stored: it must wait for that sync."""
    core = make_core(2, term=1)
    entry = LogEntry(term=1, index=1, data=b"a")
    append = AppendEntries(
        src=1, dst=2, term=1, prev_index=0, prev_term=0, entries=(entry,), leader_commit=0
    )
    core.step(append, 1.0)
    first = core.ready()
    core.advance(first)
    core.step(append, 1.0)  # a duplicate: nothing to store
    second = core.ready()
    assert not second.must_sync and second.messages == ()
    core.advance(second)
    assert drain(core, persist=False) == []
    core.on_persisted(first.number)
    acks = [m for m in drain(core) if isinstance(m, AppendEntriesResponse)]
    assert [m.match_index for m in acks] == [1, 1]


def test_log_slices_respect_limits_but_never_come_back_empty() -> None:
    log = RaftLog(None, [LogEntry(term=1, index=i, data=b"x" * 100) for i in range(1, 11)])
    assert len(log.slice(1, 10, count_max=3, bytes_max=1 << 20)) == 3
    assert len(log.slice(1, 10, count_max=100, bytes_max=250)) == 2  # 124 bytes each
    assert len(log.slice(1, 10, count_max=100, bytes_max=1)) == 1  # one even if too big
    assert [e.index for e in log.slice(9, 20, count_max=100, bytes_max=1 << 20)] == [9, 10]


def test_log_search_by_term_stops_at_the_snapshot_base() -> None:
    meta = SnapshotMeta(index=4, term=2, members=(1, 2, 3))
    log = RaftLog(meta, [LogEntry(term=t, index=i, data=b"") for i, t in [(5, 3), (6, 3), (7, 5)]])
    assert log.first_index == 5 and log.last_index == 7 and log.term_at(4) == 2
    assert log.term_at(3) is None and log.term_at(8) is None
    assert log.find_conflict_by_term(7, 4) == 6
    assert log.find_conflict_by_term(9, 5) == 7  # beyond the end: start from the last entry
    assert log.find_conflict_by_term(7, 1) == 4  # nothing better than the base
    assert log.find_conflict_by_term(2, 1) == 2  # below the base: the caller must snapshot
    log.compact(6)
    assert (log.snapshot_index, log.snapshot_term, log.last_index) == (6, 3, 7)
    with pytest.raises(ValueError):
        RaftLog(None, [LogEntry(term=1, index=1, data=b""), LogEntry(term=1, index=3, data=b"")])
