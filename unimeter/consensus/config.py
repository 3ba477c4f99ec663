"""Tunables, roles and errors of the Raft core. Every limit has its unit last in its name."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftConfig:
    # A follower campaigns after hearing nothing from a leader for a random time in
    # [election_timeout_s, 2 * election_timeout_s). A leader steps down if a quorum has not
    # answered it within election_timeout_s (check-quorum), and followers that heard from a
    # leader within election_timeout_s ignore vote requests (the leader lease).
    election_timeout_s: float = 1.0
    heartbeat_interval_s: float = 0.1
    pre_vote: bool = True
    check_quorum: bool = True
    # Flow control of log replication, per follower.
    append_entries_max: int = 512  # entries per AppendEntries
    append_bytes_max: int = 1 << 20  # payload bytes per AppendEntries (at least one entry)
    inflight_appends_max: int = 64  # unacknowledged AppendEntries in REPLICATE state
    inflight_bytes_max: int = 16 << 20
    # A follower in REPLICATE that has acknowledged nothing for this long while appends are
    # outstanding is probed again: the appends or their answers were lost.
    replicate_stall_s: float = 0.5
    # A follower that wanted a snapshot and has not acknowledged one for this long is probed
    # again (the snapshot or its answer was lost, or the runtime never provided it).
    snapshot_retry_s: float = 5.0
    # Committed entries handed to the application per Ready (the rest follow in the next ones).
    apply_entries_max: int = 4096

    def __post_init__(self) -> None:
        assert 0 < self.heartbeat_interval_s < self.election_timeout_s
        assert self.append_entries_max >= 1 and self.append_bytes_max >= 1
        assert self.inflight_appends_max >= 1 and self.inflight_bytes_max >= 1
        assert self.replicate_stall_s > 0 and self.snapshot_retry_s > 0
        assert self.apply_entries_max >= 1
        # Check-quorum only makes sense if a healthy leader hears back within one round.
        assert self.heartbeat_interval_s * 2 <= self.election_timeout_s


class ProposalRejected(Exception):
    """The entry was not appended; the caller may retry (elsewhere or later)."""

    retriable = True


class NotLeader(ProposalRejected):
    def __init__(self, leader_hint: int | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint})")
        self.leader_hint = leader_hint


class LeadershipTransferring(ProposalRejected):
    """Proposals pause while leadership moves, so the target can catch up and take over."""

    def __init__(self, target: int) -> None:
        super().__init__(f"leadership is moving to {target}")
        self.target = target
