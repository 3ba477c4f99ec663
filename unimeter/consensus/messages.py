"""The records and messages of one Raft group.

Every message carries ``src``, ``dst`` and the sender's ``term``; the group id is the caller's
business (many groups share one link per peer pair). Payloads are opaque ``bytes``.
The wire codec (not here) maps each class to one tag; nothing else travels between cores.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bytes charged per entry on top of its payload when flow control counts bytes: the index, the
# term and framing are not free, and an empty entry must still cost something.
ENTRY_OVERHEAD_BYTES = 24


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEntry:
    term: int
    index: int
    data: bytes  # b"" only for the no-op a new leader appends (see ``is_noop``)

    @property
    def is_noop(self) -> bool:
        """The entry a leader appends when elected; the application skips it.

        Proposals may not be empty, so an empty payload can only be this marker.
        """
        return not self.data

    @property
    def size_bytes(self) -> int:
        return len(self.data) + ENTRY_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class HardState:
    """What must survive a crash besides the log (Raft paper, figure 2: currentTerm, votedFor),
    plus the commit index so a restarted node can re-apply its log without a leader."""

    term: int = 0
    vote: int | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotMeta:
    index: int  # the last log index the snapshot contains
    term: int  # the term of the entry at ``index``
    members: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes  # the application's state at ``meta.index``; opaque to Raft


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestVote:
    src: int
    dst: int
    term: int  # for a pre-vote: the term the candidate would campaign in (its term + 1)
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False  # a campaign started by TimeoutNow: bypasses the leader lease


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestVoteResponse:
    src: int
    dst: int
    term: int  # granted pre-vote: the request's term; otherwise the responder's term
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEntries:
    """Sent by the leader (``src``). Entries follow ``prev_index`` consecutively."""

    src: int
    dst: int
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[LogEntry, ...]
    leader_commit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEntriesResponse:
    """On success, ``match_index`` is durable on ``src`` and matches the leader's log.

    On rejection, ``rejected_index`` is the ``prev_index`` that did not match and
    (``hint_index``, ``hint_term``) is the follower's best guess of where the logs may agree:
    its last index at or below ``rejected_index`` whose term is at most the leader's
    ``prev_term``. The leader may skip back to it in one round trip instead of one per entry.
    """

    src: int
    dst: int
    term: int
    success: bool
    match_index: int = 0
    rejected_index: int = 0
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """Keeps followers from campaigning. ``commit`` is at most the follower's known match, so
    a follower can adopt it without checking its log."""

    src: int
    dst: int
    term: int
    commit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResponse:
    src: int
    dst: int
    term: int


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshot:
    src: int
    dst: int
    term: int
    snapshot: Snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshotResponse:
    """``match_index`` is durable on ``src`` (its snapshot or log reaches that far)."""

    src: int
    dst: int
    term: int
    match_index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNow:
    """Leadership transfer: the leader asks an up-to-date follower to campaign at once."""

    src: int
    dst: int
    term: int


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
)
