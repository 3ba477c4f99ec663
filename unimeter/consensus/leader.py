"""What a node holds only while it leads one term: followers' progress, heartbeats,
check-quorum and leadership transfer.

It decides what to send to whom (progress.py has the per-follower flow-control state machine)
and reports the quorum's match index; the core decides what that commits (Raft §5.4.2).
"""

from __future__ import annotations

import math

from unimeter.consensus.config import RaftConfig
from unimeter.consensus.log import RaftLog
from unimeter.consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    LogEntry,
    Snapshot,
    TimeoutNow,
)
from unimeter.consensus.progress import Inflights, Progress, ProgressState
from unimeter.consensus.quorum import Membership
from unimeter.consensus.ready import Outbox, PeerStatus


class Leader:
    def __init__(
        self,
        *,
        node_id: int,
        term: int,
        members: Membership,
        log: RaftLog,
        config: RaftConfig,
        outbox: Outbox,
        now: float,
    ) -> None:
        self._id = node_id
        self._term = term
        self._members = members
        self._log = log
        self._cfg = config
        self._outbox = outbox
        self.heartbeat_due = now + config.heartbeat_interval_s
        self.check_quorum_due = now + config.election_timeout_s
        self.transferee: int | None = None
        self.transfer_due = math.inf
        self._timeout_now_sent = False
        next_index = log.last_index + 1
        self.progress = {
            p: Progress(
                match=0,
                next=next_index,
                inflights=Inflights(config.inflight_appends_max, config.inflight_bytes_max),
                waiting_since=now,
            )
            for p in members.sorted()
            if p != node_id
        }
        if not self.progress:
            # A lone member has nobody to send heartbeats to or hear from: no timers at all
            # (a single node's idle partitions then never wake).
            self.heartbeat_due = self.check_quorum_due = math.inf

    def quorum_match(self, own_stable: int) -> int:
        """The highest index durable on a quorum (our own log counts up to ``own_stable``)."""
        match = {p: pr.match for p, pr in self.progress.items()}
        match[self._id] = own_stable
        return self._members.committed_index(match)

    def peer_status(self) -> dict[int, PeerStatus]:
        return {
            p: PeerStatus(
                match=pr.match,
                next=pr.next,
                state=pr.state,
                inflight_appends=len(pr.inflights),
                recent_active=pr.recent_active,
            )
            for p, pr in self.progress.items()
        }

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float:
        return min(self.heartbeat_due, self.check_quorum_due, self.transfer_due)

    def tick(self, now: float, commit: int) -> bool:
        """Run due timers; False means the leader must step down (check-quorum failed)."""
        if now >= self.check_quorum_due:
            self.check_quorum_due = now + self._cfg.election_timeout_s
            if self._cfg.check_quorum:
                active = [self._id, *(p for p, pr in self.progress.items() if pr.recent_active)]
                if not self._members.has_quorum(active):
                    return False
            for pr in self.progress.values():
                pr.recent_active = False
        if self.transferee is not None and now >= self.transfer_due:
            self.transferee = None  # the target did not take over in time: lead on
            self.transfer_due = math.inf
        if now >= self.heartbeat_due:
            self.heartbeat_due = now + self._cfg.heartbeat_interval_s
            self._heartbeat(commit, now)
        return True

    # ------------------------------------------------------------------ transfer

    def start_transfer(self, to: int, now: float) -> None:
        if to == self._id or to == self.transferee:
            return
        self.transferee = to
        self.transfer_due = now + self._cfg.election_timeout_s
        self._timeout_now_sent = False
        self.maybe_send_timeout_now()

    def maybe_send_timeout_now(self) -> None:
        to = self.transferee
        if to is None or self._timeout_now_sent:
            return
        if self.progress[to].match == self._log.last_index:
            # Sent once: if it is lost, the transfer times out and this leader leads on.
            self._outbox.now.append(TimeoutNow(src=self._id, dst=to, term=self._term))
            self._timeout_now_sent = True

    # ------------------------------------------------------------------ answers

    def on_response(
        self,
        msg: AppendEntriesResponse | InstallSnapshotResponse | HeartbeatResponse,
        now: float,
    ) -> bool:
        """Returns whether the follower's match index moved (commit may advance)."""
        pr = self.progress.get(msg.src)
        if pr is None:
            return False
        pr.recent_active = True
        if isinstance(msg, HeartbeatResponse):
            # Also how a lost probe is retried: at most one probe per heartbeat round trip.
            pr.probe_sent = False
            return False
        if isinstance(msg, InstallSnapshotResponse):
            assert msg.match_index <= self._log.last_index, (msg, self._log.last_index)
            moved = self._on_ack(pr, msg.match_index, now)
        else:
            moved = self._on_append_response(pr, msg, now)
        self.maybe_send_timeout_now()
        return moved

    def _on_append_response(self, pr: Progress, msg: AppendEntriesResponse, now: float) -> bool:
        if msg.success:
            assert msg.match_index <= self._log.last_index, (msg, self._log.last_index)
            pr.waiting_since = now
            return self._on_ack(pr, msg.match_index, now)
        hint = self._log.find_conflict_by_term(msg.hint_index, msg.hint_term)
        if pr.maybe_decrease(msg.rejected_index, hint) and pr.state is ProgressState.REPLICATE:
            pr.become_probe()
        return False

    def _on_ack(self, pr: Progress, match: int, now: float) -> bool:
        updated = pr.maybe_update(match)
        if pr.state is ProgressState.SNAPSHOT:
            if pr.match >= self._log.snapshot_index:  # the log can take it from here
                pr.become_replicate(now)
        elif updated:
            if pr.state is ProgressState.PROBE:
                pr.become_replicate(now)
            else:
                pr.inflights.free_to(match)
        return updated

    # ------------------------------------------------------------------ sending

    def _heartbeat(self, commit: int, now: float) -> None:
        for peer, pr in self.progress.items():
            # Capped at what the follower is known to hold, so it can adopt it blindly.
            hb_commit = min(commit, pr.match)
            self._outbox.now.append(
                Heartbeat(src=self._id, dst=peer, term=self._term, commit=hb_commit)
            )
            stalled = (
                pr.state is ProgressState.REPLICATE
                and len(pr.inflights) > 0
                and now - pr.waiting_since >= self._cfg.replicate_stall_s
            )
            snapshot_lost = (
                pr.state is ProgressState.SNAPSHOT
                and now - pr.snapshot_at >= self._cfg.snapshot_retry_s
            )
            if stalled or snapshot_lost:
                pr.become_probe()  # messages or their answers were lost: find out where

    def flush(self, commit: int, now: float, *, commit_moved: bool) -> None:
        """Send each follower what flow control allows (proposals batch up until then)."""
        last = self._log.last_index
        for peer, pr in self.progress.items():
            sent = False
            # Runs after every input, so the common "nothing new for this peer" case is cheap.
            while pr.next <= last and not pr.is_paused():
                if not self._send_append(peer, pr, commit, now, send_if_empty=False):
                    break
                sent = True
            idle = pr.state is ProgressState.REPLICATE and pr.next == pr.match + 1
            if commit_moved and not sent and idle:
                # Nothing in flight will carry the new commit index: send it on its own.
                self._send_append(peer, pr, commit, now, send_if_empty=True)

    def _send_append(
        self, peer: int, pr: Progress, commit: int, now: float, *, send_if_empty: bool
    ) -> bool:
        """Send one AppendEntries if flow control allows; True if it carried entries."""
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self._log.term_at(prev_index)
        if prev_term is None:
            assert prev_index < self._log.snapshot_index, (prev_index, self._log.last_index)
            pr.become_snapshot(now)
            self._outbox.snapshot_requests.append(peer)
            return False
        entries: tuple[LogEntry, ...] = ()
        if pr.next <= self._log.last_index:
            entries = self._log.slice(
                pr.next,
                self._log.last_index,
                count_max=self._cfg.append_entries_max,
                bytes_max=self._cfg.append_bytes_max,
            )
        if not entries and not send_if_empty:
            return False
        self._outbox.now.append(
            AppendEntries(
                src=self._id,
                dst=peer,
                term=self._term,
                prev_index=prev_index,
                prev_term=prev_term,
                entries=entries,
                leader_commit=commit,
            )
        )
        if not entries:
            return False
        pr.sent(entries[-1].index, sum(e.size_bytes for e in entries), now)
        return True

    def send_snapshot(self, peer: int, snapshot: Snapshot, commit: int, now: float) -> None:
        pr = self.progress.get(peer)
        if pr is None or pr.state is not ProgressState.SNAPSHOT or pr.snapshot_index != 0:
            return  # no longer wanted (or already sent)
        meta = snapshot.meta
        if not (self._log.snapshot_index <= meta.index <= commit):
            raise ValueError(
                f"snapshot at {meta.index} is outside [{self._log.snapshot_index}, {commit}]"
            )
        if self._log.term_at(meta.index) != meta.term:
            raise ValueError(f"snapshot term {meta.term} does not match the log at {meta.index}")
        pr.snapshot_index = meta.index
        pr.snapshot_at = now
        self._outbox.now.append(
            InstallSnapshot(src=self._id, dst=peer, term=self._term, snapshot=snapshot)
        )
