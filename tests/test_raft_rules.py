"""Rules of the Raft core pinned down on single cores driven by hand.

Random schedules (test_raft_interleavings.py) reach some of these situations only rarely;
here each rule is set up directly: durability of votes, vote requests and acknowledgements,
the stored commit index, acknowledging only the checked prefix, conflict replacement,
rejection hints on both sides, Raft §5.4.2, flow-control bounds, the lease, TimeoutNow,
RaftLog edge cases and misuse of the API.
"""

from __future__ import annotations

import math
import random

import pytest

from tests.raft_harness import FAST
from unimeter.consensus.config import NotLeader, Role
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
from unimeter.consensus.raft import RaftCore


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


def test_a_lone_leader_has_no_deadline_and_a_group_leader_does() -> None:
    lone = make_core(1, members=(1,))
    lone.tick(0.0)  # a lone member campaigns at its first tick and wins on its own vote
    drain(lone)
    assert lone.role is Role.LEADER
    assert lone.next_deadline() == math.inf  # no heartbeats to send, no quorum to check
    leader = make_core(1)
    elect(leader)
    assert leader.next_deadline() <= 10.0 + FAST.election_timeout_s


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


def test_answering_a_pre_vote_changes_nothing_durable() -> None:
    core = make_core(2, term=3, vote=1, log=((1, 1), (2, 3)))  # no leader known: no lease
    core.step(RequestVote(src=3, dst=2, term=4, last_index=5, last_term=3, pre_vote=True), 1.0)
    rd = core.ready()
    assert rd.messages == (RequestVoteResponse(src=2, dst=3, term=4, granted=True, pre_vote=True),)
    assert rd.hard_state is None and not rd.must_sync
    core.advance(rd)
    # A pre-vote from a node that is behind is refused, still without adopting its term.
    core.step(RequestVote(src=3, dst=2, term=4, last_index=1, last_term=1, pre_vote=True), 1.0)
    assert drain(core) == [RequestVoteResponse(src=2, dst=3, term=3, granted=False, pre_vote=True)]
    assert (core.term, core.vote) == (3, 1)


def test_a_follower_whose_leader_link_closed_campaigns_soon_and_drops_its_lease() -> None:
    follower = make_core(2, term=3, log=((1, 3),))
    follower.step(Heartbeat(src=1, dst=2, term=3, commit=1), 1.0)
    drain(follower)
    assert follower.next_deadline() >= 1.0 + FAST.election_timeout_s
    follower.leader_lost(3, 1.01)  # not its leader: nothing changes
    assert follower.next_deadline() >= 1.0 + FAST.election_timeout_s
    follower.leader_lost(1, 1.02)
    assert follower.next_deadline() <= 1.02 + FAST.election_timeout_s / 4
    # Its lease is gone: it grants another follower's pre-vote at once.
    follower.step(RequestVote(src=3, dst=2, term=4, last_index=1, last_term=3, pre_vote=True), 1.03)
    [answer] = [m for m in drain(follower) if isinstance(m, RequestVoteResponse)]
    assert answer.granted and answer.pre_vote
    # A follower that still hears the leader refuses the same pre-vote (the lease holds).
    other = make_core(3, term=3, log=((1, 3),))
    other.step(Heartbeat(src=1, dst=3, term=3, commit=1), 1.0)
    drain(other)
    other.step(RequestVote(src=2, dst=3, term=4, last_index=1, last_term=3, pre_vote=True), 1.03)
    assert not [m for m in drain(other) if isinstance(m, RequestVoteResponse) and m.granted]
