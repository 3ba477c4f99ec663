"""The read-only face of a RaftCore: what the runtime and the application may look at.

The fields are set by RaftCore; this class only reads them (RaftCore lives in raft.py).
"""

from __future__ import annotations

from unimeter.consensus.config import Role
from unimeter.consensus.leader import Leader
from unimeter.consensus.log import RaftLog
from unimeter.consensus.messages import LogEntry
from unimeter.consensus.quorum import Membership
from unimeter.consensus.ready import Status


class CoreView:
    _id: int
    _members: Membership
    _role: Role
    _term: int
    _vote: int | None
    _leader: int | None
    _commit: int
    _applied: int
    _stable: int
    _log: RaftLog
    _lead: Leader | None
    _term_start_index: int

    @property
    def node_id(self) -> int:
        return self._id

    @property
    def members(self) -> tuple[int, ...]:
        return self._members.sorted()

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def vote(self) -> int | None:
        return self._vote

    @property
    def leader_id(self) -> int | None:
        return self._leader

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def applied_index(self) -> int:
        """The last entry handed to the application (in a Ready that was advanced)."""
        return self._applied

    @property
    def stable_index(self) -> int:
        """The local log is durable (and unchanged since) up to here."""
        return self._stable

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def last_term(self) -> int:
        return self._log.last_term

    @property
    def snapshot_index(self) -> int:
        return self._log.snapshot_index

    @property
    def term_start_index(self) -> int:
        """The index of the no-op this leader appended on election (0 unless leader)."""
        return self._term_start_index

    @property
    def leader_ready(self) -> bool:
        """Leader of its term with every earlier entry applied: safe to serve reads."""
        return self._role is Role.LEADER and self._applied >= self._term_start_index

    def term_at(self, index: int) -> int | None:
        return self._log.term_at(index)

    def entries(self, lo: int, hi: int) -> tuple[LogEntry, ...]:
        """Entries ``lo..hi`` (inclusive) still held in memory (neither compacted nor released)."""
        lo = max(lo, self._log.held_from)
        hi = min(hi, self._log.last_index)
        return self._log.span(lo, hi) if lo <= hi else ()

    def status(self) -> Status:
        return Status(
            node_id=self._id,
            role=self._role,
            term=self._term,
            vote=self._vote,
            leader_id=self._leader,
            commit_index=self._commit,
            applied_index=self._applied,
            stable_index=self._stable,
            last_index=self._log.last_index,
            snapshot_index=self._log.snapshot_index,
            peers=self._lead.peer_status() if self._lead is not None else {},
        )
