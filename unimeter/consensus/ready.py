"""What the core asks its runtime to do, and read-only views of its state.

The contract (docs/consensus.md has the long form):

    ready = core.ready()
    1. if ready.snapshot: store it durably in place of the whole WAL, load it into the state
       machine;
    2. if ready.entries: wal.truncate_after(ready.entries[0].index - 1) when that index is
       already stored, then append them;
    3. if ready.hard_state: store it (after the entries);
    4. send every message in ready.messages (they never depend on what 1-3 wrote);
    5. apply ready.committed in order (they are already durable locally); act on soft_state;
    6. core.advance(ready) -- nothing else may be called on the core between ready() and this;
    7. for each peer in ready.snapshot_requests, later: core.send_snapshot(peer, snapshot, now);
    8. if ready.must_sync: fsync (off the loop, possibly together with later Readies), then
       core.on_persisted(n) where n is the number of the newest Ready the fsync covered.
Messages that promise durable state (vote grants, append and snapshot acknowledgements, a
candidate's vote requests) are held inside the core until ``on_persisted`` covers the Ready
that made the state, and come out in a later Ready's ``messages``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from unimeter.consensus.config import Role
from unimeter.consensus.log import RaftLog
from unimeter.consensus.messages import HardState, LogEntry, Message, Snapshot
from unimeter.consensus.progress import ProgressState


@dataclass(frozen=True, slots=True, kw_only=True)
class SoftState:
    """Volatile role information, reported to the application whenever it changes."""

    role: Role
    term: int
    leader_id: int | None


@dataclass(slots=True, kw_only=True)
class Ready:
    """Treat as read-only. Not frozen only because frozen dataclasses are several times
    slower to build, and a commit goes through a few Readies."""

    number: int  # increases by one per Ready; on_persisted(n) covers Readies 1..n
    hard_state: HardState | None  # store it if not None
    entries: tuple[LogEntry, ...]  # append; the first may overwrite a stored suffix
    snapshot: Snapshot | None  # install (replaces the WAL and the state machine) if not None
    messages: tuple[Message, ...]  # send now, in order
    committed: tuple[LogEntry, ...]  # apply, in order; skip ``is_noop`` entries
    soft_state: SoftState | None  # role, term or leader changed
    snapshot_requests: tuple[int, ...]  # peers that need a snapshot (see send_snapshot)
    must_sync: bool  # the runtime must fsync what it stored, then call on_persisted(number)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerStatus:
    match: int
    next: int
    state: ProgressState
    inflight_appends: int
    recent_active: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    node_id: int
    role: Role
    term: int
    vote: int | None
    leader_id: int | None
    commit_index: int
    applied_index: int
    stable_index: int
    last_index: int
    snapshot_index: int
    peers: dict[int, PeerStatus]  # empty unless leader


class _Unpersisted(NamedTuple):
    """A Ready handed out with ``must_sync`` whose durability is not yet reported."""

    number: int
    last_index: int  # the log's last entry when it was handed out
    last_term: int
    hard_state: HardState  # the newest hard state stored by then


class Outbox:
    """The core's side of the Ready contract: what was handed out, what waits for durability.

    Messages go to ``now`` (may leave at once) or ``after`` (promise durable state). ``after``
    messages leave with the next Ready if everything handed out so far is already durable;
    otherwise they are held until ``persisted`` covers the newest Ready handed out when they
    were made -- that Ready carries (or follows) every change they depend on.
    """

    def __init__(self, hard_state: HardState, unsent_from: int) -> None:
        self.now: list[Message] = []
        self.after: list[Message] = []
        self.snapshot_requests: list[int] = []
        self.pending_snapshot: Snapshot | None = None
        self.unsent_from = unsent_from  # first log index not yet handed out
        self.handed_hs = hard_state
        self.durable_hs = hard_state
        self.handed_soft: SoftState | None = None
        self.number = 0  # the last Ready advanced
        self.outstanding: Ready | None = None
        self._held: deque[tuple[int, list[Message]]] = deque()
        self._unpersisted: deque[_Unpersisted] = deque()

    def has_work(self, last_index: int) -> bool:
        """Anything to hand out besides state changes (which the core checks itself)?"""
        return bool(
            self.now
            or self.after
            or self.unsent_from <= last_index
            or self.pending_snapshot is not None
            or self.snapshot_requests
        )

    def build(
        self,
        log: RaftLog,
        hard_state: HardState,
        soft_state: SoftState,
        committed: tuple[LogEntry, ...],
    ) -> Ready:
        assert self.outstanding is None
        entries: tuple[LogEntry, ...] = ()
        if self.unsent_from <= log.last_index:
            entries = log.entries_from(self.unsent_from)
        handed = self.handed_hs
        vote_changed = (hard_state.term, hard_state.vote) != (handed.term, handed.vote)
        # A commit-only change need not be synced: losing it only delays re-applying.
        must_sync = bool(entries) or self.pending_snapshot is not None or vote_changed
        messages = list(self.now)
        if not must_sync and not self._unpersisted:
            messages.extend(self.after)
        self.outstanding = Ready(
            number=self.number + 1,
            hard_state=hard_state if hard_state is not handed else None,
            entries=entries,
            snapshot=self.pending_snapshot,
            messages=tuple(messages),
            committed=committed,
            soft_state=soft_state if soft_state is not self.handed_soft else None,
            snapshot_requests=tuple(self.snapshot_requests),
            must_sync=must_sync,
        )
        return self.outstanding

    def advance(self, ready: Ready, log: RaftLog) -> None:
        assert ready is self.outstanding, "advance() takes the Ready just returned by ready()"
        self.outstanding = None
        self.number = ready.number
        if ready.entries:
            self.unsent_from = ready.entries[-1].index + 1
        if ready.hard_state is not None:
            self.handed_hs = ready.hard_state
        if ready.snapshot is not None:
            self.pending_snapshot = None
        if ready.soft_state is not None:
            self.handed_soft = ready.soft_state
        self.snapshot_requests.clear()
        released = len(ready.messages) > len(self.now)
        self.now = []
        if ready.must_sync:
            rec = _Unpersisted(ready.number, log.last_index, log.last_term, self.handed_hs)
            self._unpersisted.append(rec)
        if self.after and not released:
            self._held.append((self._unpersisted[-1].number, self.after))
        self.after = []

    def persisted(self, number: int, log: RaftLog) -> int:
        """Readies up to ``number`` are durable; returns the log index now known durable
        (0 if none), and releases the messages that waited for it."""
        assert number <= self.number, (number, self.number)
        stable = 0
        while self._unpersisted and self._unpersisted[0].number <= number:
            rec = self._unpersisted.popleft()
            # If a later Ready overwrote this suffix, the durable copy differs from memory and
            # says nothing about it; (index, term) identifies an entry and its whole prefix.
            if log.term_at(rec.last_index) == rec.last_term:
                stable = max(stable, rec.last_index)
            self.durable_hs = rec.hard_state
        while self._held and self._held[0][0] <= number:
            self.now.extend(self._held.popleft()[1])
        return stable
