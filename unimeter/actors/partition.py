"""The partition actor's pure core: turns requests into log entries and answers reads.

Theory of operation. Each partition replica is a member of the partition's Raft group
(``ReplicatedCore``); only the leader takes requests:

    request ──propose──▶ entry appended at index i ──Raft: quorum fsynced──▶ committed ──▶ applied
                 │                                                                     │
        ASYNC ack here (appended on the leader)                      SYNC ack, parked reads

- *Propose* runs on the leader only, once it has applied every entry of earlier terms (so its
  view of event ids and producer sequences is complete). It validates each event (unknown
  metric, timestamp window, operation type), stamps events that came without a timestamp, and
  removes duplicates: event ids already applied, already proposed, or repeated in the batch. The
  producer's ``(producer_id, seq)`` is checked against applied *and* proposed batches, so a
  retry is never proposed twice; a retry of a batch still in flight waits for its answer.
  The dedup claims (event ids, producer seq) live only in the entry itself: if the entry is
  never committed, nothing was claimed (docs/semantics.md §8).
- *Commit* applies entries in log order to ``PartitionState``, the deterministic applied state,
  on every replica alike. Reads are served by the leader from applied state only, once
  ``min_index`` is applied (read-your-writes, also across a leader change: indexes are the
  group's).
- Schema changes arrive as ``CatalogUpdate`` from this node's catalog replica; the leader turns
  them into ``SchemaEntry`` records, so every replica sees each change at the same log index.
- Webhook deliveries (``unimeter/webhooks``) run beside the leader and report how far they got
  as ``WebhookProgress``; the leader logs it as a ``WebhookMark``, so the next leader (or this
  node after a restart) goes on from there instead of from the first alert.
- Losing leadership fails every waiting request with NOT_LEADER (naming the new leader when
  known); the client retries there with the same producer sequence, which is always safe.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unimeter import errors, limits, testing_switches
from unimeter.actors.admission import Array, admit
from unimeter.actors.claims import IdClaims
from unimeter.actors.effects import Effects, Outgoing
from unimeter.actors.replicated import (
    PARKED_MAX,
    RaftTick,
    Recovered,
    ReplicatedCore,
    seconds,
)
from unimeter.consensus.config import ProposalRejected, RaftConfig, Role
from unimeter.consensus.messages import LogEntry, Snapshot
from unimeter.periods import US_PER_DAY
from unimeter.state.entries import (
    BatchEntry,
    BatchPart,
    Entry,
    LiveMetric,
    SchemaEntry,
    WebhookMark,
)
from unimeter.state.partition_state import PartitionState
from unimeter.state.reads import whole_period_wire
from unimeter.state.records import decode_entry, encode_entry
from unimeter.wire import messages as m

PartitionRead = (
    m.Query | m.QueryRealtime | m.QueryBreakdown | m.ListEvents | m.ListAlerts | m.SubscribeAlerts
)

# How often a leader that is not the preferred one tries to hand leadership back.
_HAND_BACK_INTERVAL_US = 2_000_000


@dataclass(frozen=True, slots=True)
class ClientRequest:
    token: object
    request: m.Ingest | PartitionRead


@dataclass(frozen=True, slots=True)
class IngestGroup:
    """INGEST requests that reached the partition in the same loop iteration: admitted
    together and, where they store anything, logged as one entry (``runtime`` makes these)."""

    requests: tuple[ClientRequest, ...]


def group_ingests(messages: list[object]) -> list[object]:
    """The same messages, with every run of two or more INGEST requests made one
    ``IngestGroup`` (order kept): a runtime calls this on what it drained from the mailbox."""
    out: list[object] = []
    run: list[ClientRequest] = []
    for msg in messages:
        if isinstance(msg, ClientRequest) and isinstance(msg.request, m.Ingest):
            run.append(msg)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else IngestGroup(tuple(run)))
            run = []
        out.append(msg)
    if run:
        out.append(run[0] if len(run) == 1 else IngestGroup(tuple(run)))
    return out


@dataclass(frozen=True, slots=True)
class CatalogUpdate:
    """This node's catalog replica applied ``version``; ``token`` hears back once the
    partition has taken it in (applied it as leader, or noted it as follower)."""

    version: int
    metrics: tuple[LiveMetric, ...]
    token: object | None = None


@dataclass(frozen=True, slots=True)
class WebhookProgress:
    """Every alert below ``next_cursor`` was delivered to its webhook (or needs none): the
    webhook deliverer's report, logged by the leader as a ``WebhookMark``."""

    next_cursor: int


class PartitionCore(ReplicatedCore):
    def __init__(
        self,
        partition: int,
        state: PartitionState,
        *,
        node_id: int = 1,
        members: tuple[int, ...] = (1,),
        addresses: dict[int, str] | None = None,
        recovered: Recovered,
        raft_config: RaftConfig,
        rng: random.Random,
        now_us: int,
        retention_days: int = limits.retention_days_default,
        preferred: int | None = None,
    ) -> None:
        super().__init__(
            group=partition, node_id=node_id, members=members, addresses=addresses or {},
            recovered=recovered, applied=state.applied_index, raft_config=raft_config,
            rng=rng, now_us=now_us,
        )  # fmt: skip
        self.partition = partition
        self.state = state
        self.retention_us = retention_days * US_PER_DAY
        self.preferred = preferred  # the node that should lead this partition when healthy
        self._transfer_tried_us = 0
        # The leader's proposal view: the catalog and offsets as of its last proposal.
        self._metrics: dict[str, LiveMetric] = {}
        self._catalog_version = 0
        self._next_offset = 0
        self._node_catalog: tuple[int, tuple[LiveMetric, ...]] = (0, ())
        self._view_term = -1  # the term whose leadership the view was built for
        # Entries this replica proposed, by index, so applying them needs no decoding.
        self._proposals: dict[int, tuple[int, Entry]] = {}
        # Claims of entries proposed but not yet applied (released as each one applies): the
        # event-id keys each entry stores, by log index, and the producer sequences.
        self._claims = IdClaims()
        self._pending_seqs: dict[tuple[int, int], tuple[int, m.IngestReply]] = {}
        # Replies released when the entry at their index is applied.
        self._on_apply: dict[int, list[tuple[object, m.IngestReply | None]]] = {}
        self._parked_reads: list[tuple[int, int, ClientRequest]] = []
        self._parked_ingests: list[ClientRequest] = []  # waiting for a catalog version
        self._parked_leader: list[ClientRequest] = []  # waiting for leader_ready
        self._webhook_proposed = 0  # the highest WebhookMark proposed in this term

    # ------------------------------------------------------------------ step

    def step(self, msg: object, now_us: int) -> Effects:
        fx = Effects()
        if isinstance(msg, ClientRequest):
            self._on_request(msg, now_us, fx)
        elif isinstance(msg, IngestGroup):
            self._on_group(msg, now_us, fx)
        elif isinstance(msg, CatalogUpdate):
            self._on_catalog(msg, now_us, fx)
        elif isinstance(msg, WebhookProgress):
            self._on_webhook_progress(msg, now_us, fx)
        elif not self.step_common(msg, now_us, fx):
            raise AssertionError(f"unexpected message {msg!r}")
        elif isinstance(msg, RaftTick):
            self._maybe_hand_back(now_us)
        self.drain(now_us, fx)
        return fx

    def _maybe_hand_back(self, now_us: int) -> None:
        """Give leadership back to the preferred node once it is caught up (spreads leaders)."""
        pref = self.preferred
        if pref is None or pref == self.node_id or not self.leader_ready:
            return
        if now_us - self._transfer_tried_us < _HAND_BACK_INTERVAL_US:
            return
        peer = self.raft.status().peers.get(pref)
        if peer is None or not peer.recent_active or peer.match < self.raft.last_index:
            return
        self._transfer_tried_us = now_us
        self.raft.transfer_leadership(pref, seconds(now_us))

    def _on_request(self, msg: ClientRequest, now_us: int, fx: Effects) -> None:
        if not self.leader_ready:
            if self.parks_for_leader(len(self._parked_leader)):
                self._parked_leader.append(msg)
            else:
                fx.replies.append(self.not_leader(msg.token))
            return
        self._refresh_view()
        if isinstance(msg.request, m.Ingest):
            self._on_ingests((msg,), now_us, fx)
        else:
            self._on_read(msg, now_us, fx)

    def _on_group(self, group: IngestGroup, now_us: int, fx: Effects) -> None:
        if not self.leader_ready:
            for msg in group.requests:
                self._on_request(msg, now_us, fx)
            return
        self._refresh_view()
        self._on_ingests(group.requests, now_us, fx)

    def _refresh_view(self) -> None:
        """On the first request of a new term, rebuild the proposal view from applied state
        (leader_ready guarantees every earlier entry is applied)."""
        term = self.raft.term
        if self._view_term == term:
            return
        self._view_term = term
        self._metrics = {lm.schema.code: lm for lm in self.state.live_metrics()}
        self._catalog_version = self.state.catalog_version
        self._next_offset = self.state.next_offset

    # ------------------------------------------------------------------ catalog

    def _on_catalog(self, msg: CatalogUpdate, now_us: int, fx: Effects) -> None:
        if msg.version > self._node_catalog[0]:
            self._node_catalog = (msg.version, msg.metrics)
        if msg.token is None:
            return
        if self.leader_ready:
            self._propose_catalog(now_us, fx)
            pending = self.raft.last_index > self.state.applied_index
            if self.state.catalog_version < msg.version and pending:
                self._on_apply.setdefault(self.raft.last_index, []).append((msg.token, None))
                return
        fx.replies.append(Outgoing(msg.token, errors.Status.OK, _applied(0)))

    def _propose_catalog(self, now_us: int, fx: Effects) -> None:
        """As leader, log the node's newer catalog as a SchemaEntry, then retry parked ingests."""
        self._refresh_view()
        version, metrics = self._node_catalog
        if version <= self._catalog_version or not self.writable:
            return
        entry = SchemaEntry(catalog_version=version, metrics=metrics)
        if self._append(entry, now_us, fx) is None:
            return
        self._catalog_version = version
        self._metrics = {lm.schema.code: lm for lm in metrics}
        parked, self._parked_ingests = self._parked_ingests, []
        if parked:
            self._on_ingests(parked, now_us, fx)

    # ------------------------------------------------------------------ webhooks

    def _on_webhook_progress(self, msg: WebhookProgress, now_us: int, fx: Effects) -> None:
        # A delivery is a fact whoever led when it was made: a report from an earlier term of
        # this node is still true. Only what is not logged yet, nor beyond the alerts, is kept.
        if not self.leader_ready or not self.writable:
            return
        if msg.next_cursor <= max(self.state.webhook_next, self._webhook_proposed):
            return
        if msg.next_cursor > self.state.alerts.next_cursor:
            return  # more than this replica has applied: a report about another state
        if self._append(WebhookMark(next_cursor=msg.next_cursor), now_us, fx) is not None:
            self._webhook_proposed = msg.next_cursor

    # ------------------------------------------------------------------ ingest

    def _on_ingests(self, msgs: Sequence[ClientRequest], now_us: int, fx: Effects) -> None:
        """Admit the INGEST requests that arrived together and log those that store anything
        as one entry (one part each): one Raft proposal and one WAL record for all of them."""
        accepted: list[tuple[ClientRequest, BatchPart]] = []
        self._claims.drop_staged()  # (nothing is staged between calls)
        group_seqs: dict[tuple[int, int], int] = {}  # a retry within the group: its first part
        for msg in msgs:
            req = msg.request
            assert isinstance(req, m.Ingest)
            if not self._ingest_may_proceed(msg, req, fx):
                continue
            key = (req.producer_id, req.seq)
            if req.producer_id != 0 and key in group_seqs:
                accepted.append((msg, accepted[group_seqs[key]][1]))
                continue
            part = admit(req, now_us, self._metrics, self.retention_us,
                         self._seen_keys)  # fmt: skip
            if part.n_stored == 0 and req.producer_id == 0:
                reply = m.IngestReply(
                    n_stored=0, n_duplicates=part.n_duplicates, n_rejected=part.n_rejected,
                    rejected=part.rejected, last_offset=None, log_index=self.state.applied_index,
                )  # fmt: skip
                fx.replies.append(Outgoing(msg.token, errors.Status.OK, reply))
                continue
            if part.id_hashes is not None:
                self._claims.stage(part.id_hashes)
            if req.producer_id != 0:
                group_seqs[key] = len(accepted)
            accepted.append((msg, part))
        if accepted:
            self._log_parts(accepted, now_us, fx)

    def _ingest_may_proceed(self, msg: ClientRequest, req: m.Ingest, fx: Effects) -> bool:
        """False when the request is answered, parked or waiting already (no new part)."""
        if req.catalog_version > self._catalog_version:
            if len(self._parked_ingests) >= PARKED_MAX:
                fx.replies.append(
                    _error(
                        msg.token,
                        errors.Status.UNAVAILABLE,
                        "the catalog version asked for is not known yet",
                    )
                )
            else:
                self._parked_ingests.append(msg)
            return False
        if req.producer_id != 0 and not testing_switches.SKIP_PRODUCER_CHECK:
            outcome = self.state.producer_outcome(req.producer_id, req.seq)
            if isinstance(outcome, m.IngestReply):
                fx.replies.append(Outgoing(msg.token, errors.Status.OK, outcome))
                return False
            if outcome is not None:  # applied long ago; its answer is no longer cached
                reply = m.IngestReply(
                    n_stored=0, n_duplicates=len(req.batch), n_rejected=0, rejected=(),
                    last_offset=None, log_index=self.state.applied_index,
                )  # fmt: skip
                fx.replies.append(Outgoing(msg.token, errors.Status.OK, reply))
                return False
            in_flight = self._pending_seqs.get((req.producer_id, req.seq))
            if in_flight is not None:
                index, reply = in_flight
                self._on_apply.setdefault(index, []).append((msg.token, reply))
                return False
        if not self.writable:
            fx.replies.append(
                _error(
                    msg.token,
                    errors.Status.BACKPRESSURE,
                    "the data disk is full (or under its reserve); "
                    "writes resume when space returns",
                )
            )
            return False
        return True

    def _log_parts(self, accepted: list[tuple[ClientRequest, BatchPart]], now_us: int,
                   fx: Effects) -> None:  # fmt: skip
        # A retry within the group shares its first part: each part once, in order.
        parts = list({id(part): part for _, part in accepted}.values())
        entry = BatchEntry(stamp_us=now_us, parts=tuple(parts))
        index = self._append(entry, now_us, fx)
        if index is None:
            self._claims.drop_staged()
            for msg, _ in accepted:
                fx.replies.append(self.not_leader(msg.token))
            return
        self._claims.claim_staged(index)
        replies: dict[int, m.IngestReply] = {}
        for part in parts:
            n_stored = part.n_stored
            last_offset = None
            if n_stored:
                last_offset = self._next_offset + n_stored - 1
                self._next_offset += n_stored
            reply = replies[id(part)] = m.IngestReply(
                n_stored=n_stored, n_duplicates=part.n_duplicates, n_rejected=part.n_rejected,
                rejected=part.rejected, last_offset=last_offset, log_index=index,
            )  # fmt: skip
            if part.producer_id != 0:
                self._pending_seqs[(part.producer_id, part.seq)] = (index, reply)
        for msg, part in accepted:
            req = msg.request
            assert isinstance(req, m.Ingest)
            reply = replies[id(part)]
            if req.sync and not testing_switches.SYNC_ACK_BEFORE_COMMIT:
                self._on_apply.setdefault(index, []).append((msg.token, reply))
            else:
                fx.replies.append(Outgoing(msg.token, errors.Status.OK, reply))

    def _seen_keys(self, keys: Array) -> Array:
        """Which event-id keys are already stored, claimed by an entry in flight, or by an
        earlier part of the entry being built."""
        if testing_switches.SKIP_EVENT_ID_DEDUP:
            seen = np.zeros(len(keys), dtype=bool)
        else:
            seen = self.state.event_keys_seen(keys)
        seen |= self._claims.taken(keys, self.state.applied_index)
        return seen

    # ------------------------------------------------------------------ log

    def _append(self, entry: Entry, now_us: int, fx: Effects) -> int | None:
        """Propose ``entry``; its index, or None if this replica may not propose now."""
        try:
            index = self._propose(encode_entry(entry), now_us)
        except ProposalRejected:
            return None
        self._proposals[index] = (self.raft.term, entry)
        return index

    def _apply_entry(self, entry: LogEntry, now_us: int, fx: Effects) -> None:
        index = entry.index
        proposal = self._proposals.pop(index, None)
        obj = proposal[1] if proposal is not None and proposal[0] == entry.term else None
        if obj is None:
            obj = decode_entry(entry.data)
        result = self.state.apply(index, obj)
        fx.alerts.extend(result.alerts)
        if isinstance(obj, BatchEntry):
            self._release_claims(index, obj)
        self._answer_applied(index, fx)

    def _apply_noop(self, index: int, now_us: int, fx: Effects) -> None:
        self._proposals.pop(index, None)
        # A no-op changes nothing but the applied index (the state's own public field).
        assert index == self.state.applied_index + 1, (index, self.state.applied_index)
        self.state.applied_index = index
        self._answer_applied(index, fx)

    def _answer_applied(self, index: int, fx: Effects) -> None:
        for token, reply in self._on_apply.pop(index, ()):
            fx.replies.append(Outgoing(token, errors.Status.OK, reply or _applied(index)))

    def _release_claims(self, index: int, entry: BatchEntry) -> None:
        for part in entry.parts:
            if part.producer_id != 0:
                self._pending_seqs.pop((part.producer_id, part.seq), None)
        self._claims.release(index)

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        self.state = PartitionState.from_snapshot(snapshot.data)
        self._proposals.clear()
        self._view_term = -1

    def _snapshot_data(self) -> bytes:
        return self.state.snapshot()

    def _lost_leadership(self, now_us: int, fx: Effects) -> None:
        tokens = [t for waiters in self._on_apply.values() for t, _ in waiters]
        tokens += [msg.token for _, _, msg in self._parked_reads]
        tokens += [msg.token for msg in self._parked_ingests + self._parked_leader]
        for token in tokens:
            fx.replies.append(self.not_leader(token))
        self._on_apply.clear()
        self._parked_reads.clear()
        self._parked_ingests.clear()
        self._parked_leader.clear()
        self._claims.clear()
        self._pending_seqs.clear()
        self._view_term = -1
        self._webhook_proposed = 0

    def _after_drain(self, now_us: int, fx: Effects) -> None:
        if not self.leader_ready:
            return
        if self._node_catalog[0] > self.state.catalog_version:
            self._propose_catalog(now_us, fx)
        if self._parked_leader:
            parked, self._parked_leader = self._parked_leader, []
            for msg in parked:
                self._on_request(msg, now_us, fx)
        self._release_reads(now_us, fx)

    # ------------------------------------------------------------------ reads

    def _on_read(self, msg: ClientRequest, now_us: int, fx: Effects) -> None:
        req = msg.request
        assert not isinstance(req, m.Ingest)
        min_index = getattr(req, "min_index", 0)
        min_catalog = getattr(req, "catalog_version", 0)
        if min_index > self.raft.last_index:
            fx.replies.append(_error(
                msg.token, errors.Status.INVALID_REQUEST,
                f"min_index {min_index} is beyond this partition's log "
                f"({self.raft.last_index}); was it acknowledged by another cluster?",
            ))  # fmt: skip
            return
        answer = self.read_now(msg, now_us)
        if answer is None:
            # Read-your-writes: wait until this replica has applied what the client saw
            # (its writes, and the catalog version of a metric it just created).
            if len(self._parked_reads) >= PARKED_MAX:
                fx.replies.append(
                    _error(
                        msg.token,
                        errors.Status.UNAVAILABLE,
                        "too many reads waiting; retry shortly",
                    )
                )
            else:
                self._parked_reads.append((min_index, min_catalog, msg))
            return
        fx.replies.append(answer)

    def read_now(self, msg: ClientRequest, now_us: int) -> Outgoing | None:
        """The answer to a read that needs no waiting, computed at once; None when it must go
        through ``step`` (not the ready leader, or its ``min_index`` or catalog version is not
        applied yet). A read changes nothing, so answering it outside ``step`` leaves the core
        exactly as a stepped read would; the runtime's owner may call this between steps."""
        req = msg.request
        assert not isinstance(req, m.Ingest)
        if not self.leader_ready:
            return None
        state = self.state
        if getattr(req, "min_index", 0) > state.applied_index:
            return None
        if getattr(req, "catalog_version", 0) > state.catalog_version:
            return None
        return self._answer_read(msg, now_us)

    def read_period_body(
        self,
        account: int,
        code: str,
        start: int,
        end: int,
        min_index: int,
        catalog_version: int,
        filters: tuple[tuple[str, str], ...] = (),
    ) -> dict[str, Any] | None:
        """The OK reply body of a QUERY of exactly one stored period, read straight from its
        row, or under ``filters`` from its cell rows (the read fast path: no request or reply
        object is built); None whenever the answer needs anything else, and the request then
        goes through ``read_now`` or ``step`` as usual. Like ``read_now`` it changes nothing."""
        if self.role is not Role.LEADER or not self.raft.leader_ready:  # self.leader_ready
            return None
        state = self.state
        if min_index > state.applied_index or catalog_version > state.catalog_version:
            return None
        value = whole_period_wire(state, code, account, start, end, filters)
        if value is None:
            return None
        return {"v": value, "ps": start, "pe": end}

    def read_realtime_body(
        self, account: int, code: str, catalog_version: int, now_us: int
    ) -> dict[str, Any] | None:
        """``read_period_body`` for QUERY_REALTIME: the period ingest is filling."""
        if self.role is not Role.LEADER or not self.raft.leader_ready:  # self.leader_ready
            return None
        state = self.state
        if catalog_version > state.catalog_version:
            return None
        inst = state.live.get(code)
        if inst is None or inst.table < 0 or not inst.ps <= now_us < inst.pe:
            return None
        start, end = inst.ps, inst.pe
        value = whole_period_wire(state, code, account, start, end)
        if value is None:
            return None
        return {"v": value, "ps": start, "pe": end}

    def _release_reads(self, now_us: int, fx: Effects) -> None:
        if not self._parked_reads:
            return
        applied = self.state.applied_index
        catalog = self.state.catalog_version
        still: list[tuple[int, int, ClientRequest]] = []
        for min_index, min_catalog, msg in self._parked_reads:
            if min_index <= applied and min_catalog <= catalog:
                fx.replies.append(self._answer_read(msg, now_us))
            else:
                still.append((min_index, min_catalog, msg))
        self._parked_reads = still

    def _answer_read(self, msg: ClientRequest, now_us: int) -> Outgoing:
        req = msg.request
        state = self.state
        try:
            reply: m.Reply
            if isinstance(req, m.Query):
                value = state.query(
                    req.metric_code, req.account_id, req.start_us, req.end_us, req.filters
                )
                reply = m.AggReply(
                    value=value, period_start_us=req.start_us, period_end_us=req.end_us
                )
            elif isinstance(req, m.QueryRealtime):
                value, start, end = state.query_realtime(req.metric_code, req.account_id, now_us)
                reply = m.AggReply(value=value, period_start_us=start, period_end_us=end)
            elif isinstance(req, m.QueryBreakdown):
                cells = state.breakdown(
                    req.metric_code,
                    req.account_id,
                    req.start_us,
                    req.end_us,
                    req.group_by,
                    req.filters,
                )
                reply = m.BreakdownReply(cells=cells)
            elif isinstance(req, m.ListEvents):
                limit = min(req.limit, limits.list_page_events_max)
                events, nxt = state.list_events(
                    req.account_id, req.since_us, req.until_us, req.after_offset, limit
                )
                reply = m.EventsPage(events=events, next_offset=nxt)
            elif isinstance(req, m.ListAlerts):
                limit = min(req.limit, limits.list_page_alerts_max)
                alerts, cursor = state.list_alerts(req.account_id, req.after_cursor, limit)
                reply = m.AlertsPage(alerts=alerts, next_cursor=cursor)
            elif isinstance(req, m.SubscribeAlerts):
                # Answered in log order like any read; the runtime's subscriber hub makes the
                # subscription live from ``live_from`` (unimeter/actors/alert_feed.py).
                limit = min(req.limit, limits.list_page_alerts_max)
                alerts, cursor, live_from = state.alerts_catch_up(
                    req.account_id, req.after_cursor, limit
                )
                reply = m.Subscribed(alerts=alerts, next_cursor=cursor, live_from=live_from)
            else:  # pragma: no cover
                raise AssertionError(f"unexpected read {req!r}")
        except errors.UnimeterError as exc:
            return Outgoing(msg.token, exc.status, m.ErrorReply(message=exc.message))
        return Outgoing(msg.token, errors.Status.OK, reply)

    # ------------------------------------------------------------------ shutdown

    def pending_tokens(self) -> list[object]:
        """Every requester still waiting for an answer (failed with a typed error on stop)."""
        tokens: list[object] = [t for waiters in self._on_apply.values() for t, _ in waiters]
        tokens += [msg.token for _, _, msg in self._parked_reads]
        tokens += [msg.token for msg in self._parked_ingests + self._parked_leader]
        return tokens


def _applied(index: int) -> m.IngestReply:
    return m.IngestReply(
        n_stored=0, n_duplicates=0, n_rejected=0, rejected=(), last_offset=None, log_index=index
    )


def _error(token: object, status: errors.Status, message: str) -> Outgoing:
    return Outgoing(token, status, m.ErrorReply(message=message))
