"""A pure core whose log is a Raft group: the shared half of the partition and catalog cores.

``ReplicatedCore`` owns a ``RaftCore`` and turns each of its Readies into ``Effects`` (log
writes, hard state, peer messages, fsync requests), applies committed entries through the
subclass's ``_apply_entry`` and reports role changes through ``_on_role_change``. Subclasses
never touch Raft's Ready contract themselves; they call ``_propose`` and get an index.

Messages common to every replicated core:
- ``PeerMessage``: a Raft message from a peer;
- ``RaftTick``: the runtime's timer fired (``next_deadline`` says when it should);
- ``Persisted``: the runtime's fsync covered every Ready up to ``number``.
Times are integer microseconds for the cores and float seconds for Raft.
"""

from __future__ import annotations

import abc
import math
import random
from dataclasses import dataclass

from unimeter.actors.effects import Effects, Outgoing, Send
from unimeter.consensus.config import RaftConfig, Role
from unimeter.consensus.messages import HardState, LogEntry, Message, Snapshot, SnapshotMeta
from unimeter.consensus.raft import RaftCore
from unimeter.consensus.ready import SoftState
from unimeter.errors import Status
from unimeter.wire import messages as m

# ``next_deadline_us`` when no timer is due: far enough to never fire, small enough for any
# clock arithmetic.
NEVER_US = 2**62

# Requests parked while a replica becomes ready to lead (beyond: NOT_LEADER or UNAVAILABLE).
PARKED_MAX = 4096


@dataclass(frozen=True, slots=True)
class PeerMessage:
    message: Message


@dataclass(frozen=True, slots=True)
class RaftTick:
    pass


@dataclass(frozen=True, slots=True)
class Persisted:
    number: int


@dataclass(frozen=True, slots=True)
class PeerLost:
    """The link from that node closed (its process died, or the connection broke)."""

    node_id: int


@dataclass(frozen=True, slots=True)
class DiskState:
    """The runtime's view of the data disk: below the reserve, or after ENOSPC, writes stop."""

    writable: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovered:
    """What a replica's runtime read from disk before the core starts."""

    hard_state: HardState
    entries: tuple[LogEntry, ...]  # the log after the snapshot
    snapshot: SnapshotMeta | None


def seconds(now_us: int) -> float:
    return now_us / 1_000_000


class ReplicatedCore(abc.ABC):
    """Base of the partition and catalog cores. ``group`` names the Raft group on the wire."""

    def __init__(
        self,
        *,
        group: int,
        node_id: int,
        members: tuple[int, ...],
        addresses: dict[int, str],
        recovered: Recovered,
        applied: int,
        raft_config: RaftConfig,
        rng: random.Random,
        now_us: int,
    ) -> None:
        self.group = group
        self.node_id = node_id
        self.members = members
        self.addresses = addresses
        self.raft = RaftCore(
            node_id=node_id, members=members, rng=rng, config=raft_config,
            hard_state=recovered.hard_state, log=recovered.entries,
            snapshot=recovered.snapshot, now=seconds(now_us), applied=applied,
        )  # fmt: skip
        self.role = Role.FOLLOWER
        self.leader_id: int | None = None
        self._stored_last = self.raft.last_index  # the newest index handed to the WAL
        self.writable = True
        # A lone member's applied index as the previous drain left it (see ``drain``).
        self._lone = len(members) == 1
        self._applied_before = self.raft.applied_index

    # ------------------------------------------------------------------ raft plumbing

    def step_common(self, msg: object, now_us: int, fx: Effects) -> bool:
        """Handle the messages every replicated core takes; False if ``msg`` is not one."""
        if isinstance(msg, PeerMessage):
            self.raft.step(msg.message, seconds(now_us))
        elif isinstance(msg, RaftTick):
            self.raft.tick(seconds(now_us))
        elif isinstance(msg, Persisted):
            self.raft.on_persisted(msg.number)
        elif isinstance(msg, DiskState):
            self.writable = msg.writable
        elif isinstance(msg, PeerLost):
            self.raft.leader_lost(msg.node_id, seconds(now_us))
        else:
            return False
        return True

    def next_deadline_us(self) -> int:
        due = self.raft.next_deadline()
        if due == math.inf:  # no timer is due (a lone member leading)
            return NEVER_US
        return int(due * 1_000_000) + 1

    def drain(self, now_us: int, fx: Effects) -> None:
        """Run every Ready the Raft core has, turning it into effects; again when what became
        answerable proposed (a parked change once this replica leads).

        A lone member first releases the payloads of what earlier drains applied
        (``RaftCore.release``): one step late, so whoever watches a step (the simulator's
        checkers, a trace) still sees the entries that step applied.
        """
        raft = self.raft
        if self._lone:
            raft.release(self._applied_before)
        self._drain_readies(now_us, fx)
        self._after_drain(now_us, fx)
        if raft.has_ready():
            self._drain_readies(now_us, fx)
            self._after_drain(now_us, fx)
        if self._lone:
            self._applied_before = raft.applied_index

    def _drain_readies(self, now_us: int, fx: Effects) -> None:
        raft = self.raft
        while raft.has_ready():
            ready = raft.ready()
            if ready.snapshot is not None:
                fx.install = ready.snapshot
                fx.appends.clear()
                fx.truncate_after = None
                self._install_snapshot(ready.snapshot)
            if ready.entries:
                first = ready.entries[0].index
                stored_last = fx.appends[-1][0] if fx.appends else self._stored_last
                if first <= stored_last:
                    # A new leader replaced our uncommitted suffix.
                    fx.appends = [a for a in fx.appends if a[0] < first]
                    fx.truncate_after = (
                        first - 1
                        if fx.truncate_after is None
                        else min(fx.truncate_after, first - 1)
                    )
                fx.appends.extend((e.index, e.term, e.data) for e in ready.entries)
                self._stored_last = ready.entries[-1].index
            if ready.hard_state is not None:
                fx.hard_state = ready.hard_state
            for msg in ready.messages:
                fx.sends.append(Send(msg.dst, self.group, msg))
            for entry in ready.committed:
                if not entry.is_noop:
                    self._apply_entry(entry, now_us, fx)
                else:
                    self._apply_noop(entry.index, now_us, fx)
            if ready.soft_state is not None:
                self._role_changed(ready.soft_state, now_us, fx)
            if ready.must_sync:
                fx.sync_number = ready.number
            raft.advance(ready)
            # Only after advance (ready.py step 7): the core takes no call between ready() and
            # advance(), and its applied index then matches the state the snapshot is cut from.
            for peer in ready.snapshot_requests:
                self._send_snapshot(peer, now_us)

    def _role_changed(self, soft: SoftState, now_us: int, fx: Effects) -> None:
        was_leader = self.role == Role.LEADER
        self.role = soft.role
        self.leader_id = soft.leader_id
        if was_leader and soft.role != Role.LEADER:
            self._lost_leadership(now_us, fx)

    def _send_snapshot(self, peer: int, now_us: int) -> None:
        index = self.raft.applied_index
        term = self.raft.term_at(index)
        assert term is not None, f"no term for applied index {index}"
        meta = SnapshotMeta(index=index, term=term, members=self.members)
        self.raft.send_snapshot(
            peer, Snapshot(meta=meta, data=self._snapshot_data()), seconds(now_us)
        )

    def _propose(self, data: bytes, now_us: int) -> int:
        """Append ``data`` to the group's log (leader only; raises ``ProposalRejected``)."""
        return self.raft.propose(data, seconds(now_us))

    @property
    def leader_ready(self) -> bool:
        """Leader of its term with every earlier entry applied: safe to propose and read."""
        return self.role == Role.LEADER and self.raft.leader_ready

    def parks_for_leader(self, parked: int) -> bool:
        """Whether a request that finds this replica not ``leader_ready`` waits here (``parked``
        already wait) instead of being answered NOT_LEADER at once.

        A leader still applying its predecessors' entries answers once it is ready, and so does
        a lone member still winning its own election (it is the only possible leader, a durable
        vote away): telling the client "no leader" would only make it ask again.
        """
        soon = self.role == Role.LEADER or len(self.members) == 1
        return soon and parked < PARKED_MAX

    def not_leader(self, token: object) -> Outgoing:
        hint = self.addresses.get(self.leader_id) if self.leader_id is not None else None
        if self.role == Role.LEADER:  # elected, still applying the previous terms' entries
            return Outgoing(
                token,
                Status.UNAVAILABLE,
                m.ErrorReply(message="the leader is catching up; retry shortly"),
            )
        return Outgoing(
            token,
            Status.NOT_LEADER,
            m.ErrorReply(message=f"node {self.node_id} does not lead this group", leader=hint),
        )

    # ------------------------------------------------------------------ subclass hooks

    @abc.abstractmethod
    def _apply_entry(self, entry: LogEntry, now_us: int, fx: Effects) -> None:
        """Apply one committed entry (never a no-op) to the state machine."""

    @abc.abstractmethod
    def _apply_noop(self, index: int, now_us: int, fx: Effects) -> None:
        """A new leader's no-op was committed at ``index``: the applied index moves past it."""

    @abc.abstractmethod
    def _install_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole state machine with the snapshot's."""

    @abc.abstractmethod
    def _snapshot_data(self) -> bytes:
        """The state machine at the applied index, for a follower that needs a snapshot."""

    @abc.abstractmethod
    def _lost_leadership(self, now_us: int, fx: Effects) -> None:
        """Fail or redirect whatever waited on this replica being the leader."""

    @abc.abstractmethod
    def _after_drain(self, now_us: int, fx: Effects) -> None:
        """Release what became answerable (reads whose index is now applied, ...)."""
