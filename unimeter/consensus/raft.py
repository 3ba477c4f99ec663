"""The pure Raft core of one group: no I/O, no clock, no asyncio; randomness from a passed rng.

Theory of operation. Inputs are ``step`` (a peer's message), ``tick`` (timers, driven by
``next_deadline``), ``propose``, ``transfer_leadership``, ``send_snapshot``, ``compact`` and
``on_persisted``; outputs come out of ``ready()`` (ready.py states the runtime's contract).

Roles and their transitions (Raft §5.2 with pre-vote and check-quorum, as in etcd-io/raft):

    FOLLOWER        --election timeout-->            PRE_CANDIDATE
    PRE_CANDIDATE   --quorum of pre-votes-->         CANDIDATE (term + 1, votes for itself)
    CANDIDATE       --quorum of durable votes-->     LEADER (appends a no-op of its term)
    (PRE_)CANDIDATE --quorum rejects-->              FOLLOWER
    (PRE_)CANDIDATE --its term's leader speaks-->    FOLLOWER
    LEADER          --no quorum heard in a timeout-> FOLLOWER (check-quorum)
    FOLLOWER        --TimeoutNow-->                  CANDIDATE (skips pre-vote and the lease)
    any             --a higher term (_step_term)-->  FOLLOWER
(Without pre-vote, an election timeout leads straight to CANDIDATE.)

Durability. "Committed" means "on stable storage of a quorum": the leader counts its own log
only up to ``stable`` (what the runtime reported durable through ``on_persisted``), and
followers acknowledge appends only once the Ready holding them is durable (those messages are
held back until then). A candidate counts its own vote only once its term and vote are durable.
Committed entries are handed to the application only up to the local ``stable`` index.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from unimeter import testing_switches
from unimeter.consensus.config import LeadershipTransferring, NotLeader, RaftConfig, Role
from unimeter.consensus.leader import Leader
from unimeter.consensus.log import RaftLog
from unimeter.consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    HardState,
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
from unimeter.consensus.quorum import Membership, VoteResult
from unimeter.consensus.ready import Outbox, Ready, SoftState
from unimeter.consensus.view import CoreView

_FROM_LEADER = (AppendEntries, Heartbeat, InstallSnapshot)
_TO_LEADER = (AppendEntriesResponse, InstallSnapshotResponse, HeartbeatResponse)


class RaftCore(CoreView):
    def __init__(
        self,
        *,
        node_id: int,
        members: Sequence[int],
        rng: random.Random,
        config: RaftConfig,
        hard_state: HardState,
        log: Sequence[LogEntry],
        snapshot: SnapshotMeta | None,
        now: float,
        applied: int = 0,
    ) -> None:
        """Start (or restart) from what the runtime recovered from disk.

        ``log`` holds the entries after ``snapshot`` (older ones are ignored). ``applied`` is
        how far the application's state already reaches (at least the snapshot's index).
        """
        self._id = node_id
        self._members = Membership.of(members)
        if node_id not in self._members:
            raise ValueError(f"node {node_id} is not a member of {self._members.sorted()}")
        if snapshot is not None and set(snapshot.members) != self._members.voters:
            raise ValueError("membership is static: the snapshot's members differ")
        self._peers = tuple(p for p in self._members.sorted() if p != node_id)
        self._rng = rng
        self._cfg = config
        self._log = RaftLog(snapshot, log)
        self._term = hard_state.term
        self._vote = hard_state.vote
        self._commit = max(hard_state.commit, self._log.snapshot_index)
        if self._commit > self._log.last_index:
            raise ValueError(f"commit {self._commit} is beyond the log ({self._log.last_index})")
        self._applied = max(applied, self._log.snapshot_index)
        if self._applied > self._commit:
            raise ValueError(f"applied {self._applied} is beyond commit {self._commit}")
        self._stable = self._log.last_index  # everything recovered from disk is durable
        self._now = now

        self._role = Role.FOLLOWER
        self._leader: int | None = None
        self._leader_contact_at = -math.inf
        self._votes: dict[int, bool] = {}
        # A lone member has nobody to wait for: it campaigns at the first tick.
        self._election_due = now
        if self._peers:
            self._reset_election_timer()
        self._lead: Leader | None = None  # while leading
        self._term_start_index = 0  # the index of this leader's no-op
        self._commit_moved = False

        recovered = HardState(term=self._term, vote=self._vote, commit=self._commit)
        self._out = Outbox(recovered, unsent_from=self._log.last_index + 1)

    # ------------------------------------------------------------------ local inputs

    def propose(self, data: bytes, now: float) -> int:
        """Append ``data`` to the log; returns its index (its term is ``self.term``).

        The proposal took effect if and when the entry applied at that index has that term;
        an entry of another term there means it was lost in a leader change.
        """
        self._assert_no_outstanding_ready()
        if not data:
            raise ValueError("empty payloads are reserved for the leader's no-op")
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        if self._lead is not None and self._lead.transferee is not None:
            raise LeadershipTransferring(self._lead.transferee)
        self._now = now
        index = self._log.last_index + 1
        self._log.append(LogEntry(term=self._term, index=index, data=data))
        return index

    def tick(self, now: float) -> None:
        self._assert_no_outstanding_ready()
        self._now = now
        if self._lead is None:
            if now >= self._election_due:
                self._campaign(transfer=False)
        elif not self._lead.tick(now, self._commit):
            self._become_follower(self._term, None)  # check-quorum: we may be cut off

    def leader_lost(self, peer: int, now: float) -> None:
        """The runtime saw its link from ``peer`` close: the process died or the link broke.
        A follower whose leader that is stops trusting it at once -- it forgets the lease and
        campaigns after a short random pause instead of a whole election timeout -- so a dead
        leader is replaced in a fraction of the timeout. Only liveness is at stake: the
        campaign starts with a pre-vote, which a follower still hearing the leader refuses."""
        self._assert_no_outstanding_ready()
        self._now = now
        if self._lead is not None or self._leader != peer:
            return
        self._leader_contact_at = -math.inf
        pause = self._rng.uniform(0.0, self._cfg.election_timeout_s / 4)
        self._election_due = min(self._election_due, now + pause)

    def next_deadline(self) -> float:
        """When ``tick`` must be called next (calling it earlier is harmless)."""
        return self._election_due if self._lead is None else self._lead.next_deadline()

    def transfer_leadership(self, to: int, now: float) -> None:
        """Hand leadership to ``to`` once it has every entry (proposals pause meanwhile).

        Gives up after an election timeout; a no-op if ``to`` is this node."""
        self._assert_no_outstanding_ready()
        if self._lead is None:
            raise NotLeader(self._leader)
        if to not in self._members:
            raise ValueError(f"{to} is not a member")
        self._now = now
        self._lead.start_transfer(to, now)

    def send_snapshot(self, to: int, snapshot: Snapshot, now: float) -> None:
        """The runtime's answer to ``Ready.snapshot_requests``: the latest snapshot.

        Ignored if ``to`` no longer needs one or we no longer lead. Raises ValueError unless
        the snapshot reaches at least this core's compaction point (so the follower can go on
        from the log) and at most the commit index.
        """
        self._assert_no_outstanding_ready()
        if self._lead is not None:
            self._now = now
            self._lead.send_snapshot(to, snapshot, self._commit, now)

    def compact(self, index: int) -> None:
        """The application holds a durable snapshot at ``index``: drop entries up to it."""
        self._assert_no_outstanding_ready()
        if index <= self._log.snapshot_index:
            return
        if index > self._applied:
            raise ValueError(f"cannot compact to {index}: only {self._applied} is applied")
        self._log.compact(index)

    def release(self, index: int) -> None:
        """In a group of one, drop from memory the payloads of applied entries up to ``index``
        (``RaftLog.release``): there is no follower to send them to, and the WAL holds them.
        With peers it does nothing: a lagging follower may still need them."""
        self._assert_no_outstanding_ready()
        if not self._peers:
            self._log.release(min(index, self._applied))

    def on_persisted(self, number: int) -> None:
        """Every Ready numbered up to ``number`` is durable (entries, hard state, snapshot)."""
        self._assert_no_outstanding_ready()
        self._stable = max(self._stable, self._out.persisted(number, self._log))
        if self._role is Role.CANDIDATE:
            hs = self._out.durable_hs
            if hs.term == self._term and hs.vote == self._id and self._id not in self._votes:
                self._votes[self._id] = True
                self._tally()
        elif self._role is Role.LEADER:
            self._maybe_commit()

    # ------------------------------------------------------------------ Ready

    def has_ready(self) -> bool:
        # Called after every input: compares plain fields rather than building state objects.
        self._assert_no_outstanding_ready()
        self._flush()
        out = self._out
        hs, soft = out.handed_hs, out.handed_soft
        durable_commit = min(self._commit, self._stable)
        return (
            out.has_work(self._log.last_index)
            or self._applied < durable_commit
            or hs.commit != durable_commit
            or hs.term != self._term
            or hs.vote != self._vote
            or soft is None
            or soft.role is not self._role
            or soft.term != self._term
            or soft.leader_id != self._leader
        )

    def ready(self) -> Ready:
        self._assert_no_outstanding_ready()
        self._flush()
        committed: tuple[LogEntry, ...] = ()
        apply_to = min(self._commit, self._stable, self._applied + self._cfg.apply_entries_max)
        if apply_to > self._applied:
            committed = self.entries(self._applied + 1, apply_to)
        return self._out.build(self._log, self._hard_state(), self._soft_state(), committed)

    def advance(self, ready: Ready) -> None:
        """The runtime stored ``ready``'s state (not necessarily durably yet), sent its
        messages and applied its committed entries."""
        self._out.advance(ready, self._log)
        if ready.committed:
            self._applied = ready.committed[-1].index

    def _hard_state(self) -> HardState:
        # Only a locally durable commit point is stored, so a restart never finds a commit
        # index pointing past (or at other entries than) its durable log.
        commit = min(self._commit, self._stable)
        hs = self._out.handed_hs
        if (hs.term, hs.vote, hs.commit) == (self._term, self._vote, commit):
            return hs
        return HardState(term=self._term, vote=self._vote, commit=commit)

    def _soft_state(self) -> SoftState:
        soft = self._out.handed_soft
        now = (self._role, self._term, self._leader)
        if soft is None or (soft.role, soft.term, soft.leader_id) != now:
            soft = SoftState(role=self._role, term=self._term, leader_id=self._leader)
        return soft

    def _assert_no_outstanding_ready(self) -> None:
        assert self._out.outstanding is None, "call advance() before anything else after ready()"

    def _flush(self) -> None:
        if self._lead is not None:
            self._lead.flush(self._commit, self._now, commit_moved=self._commit_moved)
            self._commit_moved = False

    # ------------------------------------------------------------------ messages

    def step(self, msg: Message, now: float) -> None:
        """Handle one message from a peer."""
        self._assert_no_outstanding_ready()
        if msg.dst != self._id or msg.src == self._id or msg.src not in self._members:
            return  # misrouted, or from outside the group
        self._now = now
        if not self._step_term(msg):
            return
        if isinstance(msg, RequestVote):
            self._on_request_vote(msg)
        elif isinstance(msg, RequestVoteResponse):
            self._on_vote_response(msg)
        elif isinstance(msg, _FROM_LEADER):
            assert self._role is not Role.LEADER, f"two leaders in term {self._term}: {msg}"
            self._heard_from_leader(msg.src)
            if isinstance(msg, AppendEntries):
                self._on_append(msg)
            elif isinstance(msg, Heartbeat):
                self._commit_to(min(msg.commit, self._log.last_index))
                self._out.now.append(HeartbeatResponse(src=self._id, dst=msg.src, term=self._term))
            else:
                self._on_install_snapshot(msg)
        elif isinstance(msg, TimeoutNow):
            if self._role is Role.FOLLOWER:
                self._campaign(transfer=True)
        elif self._lead is not None:
            assert isinstance(msg, _TO_LEADER), msg
            if self._lead.on_response(msg, self._now):
                self._maybe_commit()

    def _step_term(self, msg: Message) -> bool:
        """Apply the term rules of Raft §5.1 plus pre-vote and the lease; False: drop it."""
        if msg.term > self._term:
            if isinstance(msg, RequestVote) and not msg.transfer and self._in_lease():
                return False  # a live leader exists: do not let this candidate disrupt it
            if isinstance(msg, RequestVote) and msg.pre_vote:
                return True  # a pre-vote never changes our term
            if isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
                return True  # granted for the term we may campaign in: counted, not adopted
            leader = msg.src if isinstance(msg, _FROM_LEADER) else None
            self._become_follower(msg.term, leader)
            return True
        if msg.term < self._term:
            if isinstance(msg, _FROM_LEADER):
                # A deposed leader: tell it our term so it steps down. Without this, a node
                # whose term rose while it was cut off (its vote requests are ignored under the
                # lease) could never rejoin.
                self._out.now.append(HeartbeatResponse(src=self._id, dst=msg.src, term=self._term))
            elif isinstance(msg, RequestVote) and msg.pre_vote:
                self._out.now.append(
                    RequestVoteResponse(
                        src=self._id, dst=msg.src, term=self._term, granted=False, pre_vote=True
                    )
                )
            return False
        return True

    def _in_lease(self) -> bool:
        if not self._cfg.check_quorum or self._leader is None:
            return False
        if self._role is Role.LEADER:
            return True  # check-quorum demotes a leader that lost its quorum
        return self._now - self._leader_contact_at < self._cfg.election_timeout_s

    # ------------------------------------------------------------------ elections

    def _reset_election_timer(self) -> None:
        timeout = self._cfg.election_timeout_s
        self._election_due = self._now + self._rng.uniform(timeout, 2 * timeout)

    def _become_follower(self, term: int, leader: int | None) -> None:
        if term != self._term:
            self._term = term
            self._vote = None
        self._role = Role.FOLLOWER
        self._leader = leader
        if leader is not None:
            self._leader_contact_at = self._now
        self._votes = {}
        self._lead = None
        self._term_start_index = 0
        self._commit_moved = False
        self._reset_election_timer()

    def _heard_from_leader(self, leader: int) -> None:
        if self._role is not Role.FOLLOWER:
            self._become_follower(self._term, leader)
        self._leader = leader
        self._leader_contact_at = self._now
        self._reset_election_timer()

    def _campaign(self, *, transfer: bool) -> None:
        assert self._role is not Role.LEADER
        if self._cfg.pre_vote and not transfer:
            self._become_pre_candidate()
        else:
            self._become_candidate(transfer=transfer)

    def _become_pre_candidate(self) -> None:
        """Ask whether we could win before raising our term (Raft thesis §9.6): a node that
        cannot win, e.g. one back from a partition, then never disrupts the group."""
        self._role = Role.PRE_CANDIDATE
        self._leader = None
        self._votes = {self._id: True}  # a pre-vote promises nothing: no need to persist it
        self._reset_election_timer()
        self._request_votes(self._out.now, self._term + 1, pre_vote=True, transfer=False)
        self._tally()

    def _become_candidate(self, *, transfer: bool) -> None:
        self._role = Role.CANDIDATE
        self._leader = None
        self._term += 1
        self._vote = self._id
        self._votes = {}  # our own vote counts once it is durable (on_persisted)
        self._reset_election_timer()
        # Asking for votes in a term we could forget in a crash would let us win it twice.
        self._request_votes(self._out.after, self._term, pre_vote=False, transfer=transfer)

    def _request_votes(
        self, outbox: list[Message], term: int, *, pre_vote: bool, transfer: bool
    ) -> None:
        last_index, last_term = self._log.last_index, self._log.last_term
        for peer in self._peers:
            outbox.append(
                RequestVote(
                    src=self._id,
                    dst=peer,
                    term=term,
                    last_index=last_index,
                    last_term=last_term,
                    pre_vote=pre_vote,
                    transfer=transfer,
                )
            )

    def _tally(self) -> None:
        result = self._members.vote_result(self._votes)
        if result is VoteResult.WON:
            if self._role is Role.PRE_CANDIDATE:
                self._become_candidate(transfer=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self._term, None)

    def _become_leader(self) -> None:
        assert self._role is Role.CANDIDATE
        self._role = Role.LEADER
        self._leader = self._id
        self._votes = {}
        self._lead = Leader(
            node_id=self._id,
            term=self._term,
            members=self._members,
            log=self._log,
            config=self._cfg,
            outbox=self._out,
            now=self._now,
        )
        # Raft §5.4.2: entries of earlier terms commit only under an entry of this term.
        self._term_start_index = self._log.last_index + 1
        self._log.append(LogEntry(term=self._term, index=self._term_start_index, data=b""))

    def _on_request_vote(self, msg: RequestVote) -> None:
        can_vote = (
            self._vote == msg.src
            or (self._vote is None and self._leader is None)
            or (msg.pre_vote and msg.term > self._term)
        )
        if can_vote and self._log.is_up_to_date(msg.last_index, msg.last_term):
            if msg.pre_vote:
                self._out.now.append(
                    RequestVoteResponse(
                        src=self._id, dst=msg.src, term=msg.term, granted=True, pre_vote=True
                    )
                )
                return
            self._vote = msg.src
            self._reset_election_timer()
            self._out.after.append(
                RequestVoteResponse(src=self._id, dst=msg.src, term=self._term, granted=True)
            )
            return
        self._out.now.append(
            RequestVoteResponse(
                src=self._id, dst=msg.src, term=self._term, granted=False, pre_vote=msg.pre_vote
            )
        )

    def _on_vote_response(self, msg: RequestVoteResponse) -> None:
        if self._role is Role.PRE_CANDIDATE and msg.pre_vote:
            expected = self._term + 1 if msg.granted else self._term
        elif self._role is Role.CANDIDATE and not msg.pre_vote:
            expected = self._term
        else:
            return  # an answer to a campaign we are no longer running
        if msg.term == expected:
            self._votes[msg.src] = msg.granted
            self._tally()

    # ------------------------------------------------------------------ follower

    def _on_append(self, msg: AppendEntries) -> None:
        if msg.prev_index < self._commit:
            # Everything up to our commit point matches any leader's log (leader completeness).
            self._ack(msg.src, self._commit)
            return
        if not self._log.matches(msg.prev_index, msg.prev_term):
            hint = self._log.find_conflict_by_term(msg.prev_index, msg.prev_term)
            self._out.now.append(
                AppendEntriesResponse(
                    src=self._id,
                    dst=msg.src,
                    term=self._term,
                    success=False,
                    rejected_index=msg.prev_index,
                    hint_index=hint,
                    hint_term=self._log.term_at(hint) or 0,
                )
            )
            return
        last_new = msg.prev_index + len(msg.entries)
        conflict = self._log.find_conflict(msg.entries)
        if conflict:
            assert conflict > self._commit, f"leader {msg.src} overwrites committed {conflict}"
            self._log.truncate_and_append(msg.entries[conflict - msg.entries[0].index :])
            self._out.unsent_from = min(self._out.unsent_from, conflict)
            self._stable = min(self._stable, conflict - 1)
        self._commit_to(min(msg.leader_commit, last_new))
        self._ack(msg.src, last_new)

    def _ack(self, leader: int, match: int) -> None:
        self._out.after.append(
            AppendEntriesResponse(
                src=self._id, dst=leader, term=self._term, success=True, match_index=match
            )
        )

    def _on_install_snapshot(self, msg: InstallSnapshot) -> None:
        meta = msg.snapshot.meta
        assert set(meta.members) == self._members.voters, "membership is static"
        if meta.index <= self._commit:
            match = self._commit
        elif self._log.matches(meta.index, meta.term):
            # Our log already holds the snapshot's last entry, hence everything before it.
            self._commit_to(meta.index)
            match = meta.index
        else:
            # Until the snapshot is durable, only what was committed before is known durable.
            self._stable = min(self._stable, self._commit)
            self._log.restore(meta)
            self._commit = self._applied = meta.index
            self._out.unsent_from = meta.index + 1
            self._out.pending_snapshot = msg.snapshot
            match = meta.index
        self._out.after.append(
            InstallSnapshotResponse(src=self._id, dst=msg.src, term=self._term, match_index=match)
        )

    def _commit_to(self, index: int) -> None:
        if index > self._commit:
            self._commit = index

    # ------------------------------------------------------------------ leader

    def _maybe_commit(self) -> None:
        assert self._lead is not None
        index = self._lead.quorum_match(self._stable)
        if testing_switches.COMMIT_WITHOUT_QUORUM:
            index = self._stable
        # Raft §5.4.2: count replicas only for an entry of the current term.
        if index > self._commit and self._log.term_at(index) == self._term:
            self._commit = index
            self._commit_moved = True
