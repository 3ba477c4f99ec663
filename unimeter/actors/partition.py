"""The partition actor's pure core: turns requests into log entries and answers reads.

Theory of operation (single replica; the cluster issue puts Raft between append and commit):

    request ──propose──▶ entry appended (index i) ──fsync──▶ Durable(i) ──commit──▶ applied
                 │                                                        │
        ASYNC ack here                                          SYNC ack, parked reads

- *Propose* runs on the leader only. It validates each event (unknown metric, timestamp window,
  operation type), stamps events that came without a timestamp, and removes duplicates: event ids
  already applied, already proposed, or repeated in the same batch. The producer's
  ``(producer_id, seq)`` is checked against applied *and* proposed batches, so a retry is never
  proposed twice; a retry of a batch still in flight waits for that batch's answer.
  The dedup claims (event ids, producer seq) live only in the entry itself: if the entry is
  never committed, nothing was claimed (DESIGN §2.6).
- *Commit* applies entries in log order to ``PartitionState``, the deterministic applied state.
  Reads are served from applied state only, after ``min_index`` is applied (read-your-writes).
- Schema changes arrive as ``CatalogUpdate`` and become ``SchemaEntry`` records, so the applied
  state sees every schema change at a fixed point of the log.
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass

from unimeter import errors, limits
from unimeter.actors.effects import Effects, Outgoing
from unimeter.actors.entries import BatchEntry, Entry, LiveMetric, SchemaEntry
from unimeter.actors.partition_state import PartitionState
from unimeter.model import AggType
from unimeter.periods import US_PER_DAY
from unimeter.wire import messages as m

# Reasons a single event is rejected (IngestResult.rejected); documented in docs/protocol.md.
REJECT_UNKNOWN_METRIC = "unknown_metric"
REJECT_TOO_OLD = "timestamp_too_old"
REJECT_IN_FUTURE = "timestamp_in_future"
REJECT_OPERATION = "operation_type_requires_count_unique"
REJECT_NEGATIVE_UNIQUE = "count_unique_value_negative"

PartitionRead = m.Query | m.QueryRealtime | m.QueryBreakdown | m.ListEvents | m.ListAlerts


@dataclass(frozen=True, slots=True)
class ClientRequest:
    token: object
    request: m.Ingest | PartitionRead


@dataclass(frozen=True, slots=True)
class CatalogUpdate:
    """The catalog's new metric set; ``token`` is answered once the partition has applied it."""

    version: int
    metrics: tuple[LiveMetric, ...]
    token: object | None = None


@dataclass(frozen=True, slots=True)
class Durable:
    """The runtime's fsync finished: the log is durable up to ``index``."""

    index: int


PartitionMessage = ClientRequest | CatalogUpdate | Durable


class PartitionCore:
    def __init__(
        self,
        partition: int,
        state: PartitionState,
        *,
        retention_days: int = limits.retention_days_default,
    ) -> None:
        self.partition = partition
        self.state = state
        self.retention_us = retention_days * US_PER_DAY
        self.last_index = state.applied_index
        self.durable_index = state.applied_index
        self._unapplied: deque[tuple[int, Entry]] = deque()
        self._metrics: dict[str, LiveMetric] = {lm.schema.code: lm for lm in state.live_metrics()}
        self._catalog_version = state.catalog_version
        self._next_offset = state.next_offset
        # Claims of entries proposed but not yet applied (cleared as each one applies).
        self._pending_ids: set[tuple[str, int, str]] = set()
        self._pending_seqs: dict[tuple[int, int], int] = {}
        # Replies released when the entry at their index is applied.
        self._on_apply: dict[int, list[tuple[object, m.IngestReply | None]]] = {}
        # Retries of an in-flight batch: answered with that batch's reply once it applies.
        self._retry_waiters: dict[int, list[object]] = {}
        self._entry_replies: dict[int, m.IngestReply] = {}
        self._parked_reads: list[tuple[int, ClientRequest]] = []
        self._parked_ingests: list[ClientRequest] = []

    # ------------------------------------------------------------------ step

    def step(self, msg: PartitionMessage, now_us: int) -> Effects:
        fx = Effects()
        if isinstance(msg, ClientRequest):
            req = msg.request
            if isinstance(req, m.Ingest):
                self._on_ingest(msg, now_us, fx)
            else:
                self._on_read(msg, now_us, fx)
        elif isinstance(msg, CatalogUpdate):
            self._on_catalog(msg, now_us, fx)
        elif isinstance(msg, Durable):
            self._on_durable(msg.index, now_us, fx)
        else:  # pragma: no cover - the runtime only delivers the types above
            raise AssertionError(f"unexpected message {msg!r}")
        return fx

    # ------------------------------------------------------------------ catalog

    def _on_catalog(self, msg: CatalogUpdate, now_us: int, fx: Effects) -> None:
        if msg.version <= self._catalog_version:
            if msg.token is not None:
                # Already proposed: answer once it is applied (or now, if it is).
                index = self.last_index if self.state.catalog_version < msg.version else 0
                self._answer_at(index, msg.token, None, fx)
            return
        self._catalog_version = msg.version
        self._metrics = {lm.schema.code: lm for lm in msg.metrics}
        index = self._append(SchemaEntry(catalog_version=msg.version, metrics=msg.metrics), fx)
        if msg.token is not None:
            self._on_apply.setdefault(index, []).append((msg.token, None))
        # Ingests that waited for this catalog version can go now.
        parked, self._parked_ingests = self._parked_ingests, []
        for req in parked:
            self._on_ingest(req, now_us, fx)

    # ------------------------------------------------------------------ ingest

    def _on_ingest(self, msg: ClientRequest, now_us: int, fx: Effects) -> None:
        req = msg.request
        assert isinstance(req, m.Ingest)
        if req.catalog_version > self._catalog_version:
            self._parked_ingests.append(msg)
            return
        key = (req.producer_id, req.seq)
        if req.producer_id != 0:
            outcome = self.state.producer_outcome(req.producer_id, req.seq)
            if isinstance(outcome, m.IngestReply):
                fx.replies.append(Outgoing(msg.token, errors.Status.OK, outcome))
                return
            if outcome is not None:  # applied long ago; its answer is no longer cached
                reply = m.IngestReply(
                    n_stored=0,
                    n_duplicates=len(req.batch),
                    n_rejected=0,
                    rejected=(),
                    last_offset=None,
                    log_index=self.state.applied_index,
                )
                fx.replies.append(Outgoing(msg.token, errors.Status.OK, reply))
                return
            in_flight = self._pending_seqs.get(key)
            if in_flight is not None:
                self._retry_waiters.setdefault(in_flight, []).append(msg.token)
                return
        entry = self._build_entry(req, now_us)
        n_stored = len(entry.batch)
        if n_stored == 0 and req.producer_id == 0:
            reply = m.IngestReply(
                n_stored=0,
                n_duplicates=entry.n_duplicates,
                n_rejected=entry.n_rejected,
                rejected=entry.rejected,
                last_offset=None,
                log_index=self.state.applied_index,
            )
            fx.replies.append(Outgoing(msg.token, errors.Status.OK, reply))
            return
        index = self._append(entry, fx)
        last_offset = None
        if n_stored:
            last_offset = self._next_offset + n_stored - 1
            self._next_offset += n_stored
        reply = m.IngestReply(
            n_stored=n_stored,
            n_duplicates=entry.n_duplicates,
            n_rejected=entry.n_rejected,
            rejected=entry.rejected,
            last_offset=last_offset,
            log_index=index,
        )
        self._entry_replies[index] = reply
        if req.producer_id != 0:
            self._pending_seqs[key] = index
        if req.sync:
            self._on_apply.setdefault(index, []).append((msg.token, reply))
        else:
            fx.replies.append(Outgoing(msg.token, errors.Status.OK, reply))

    def _build_entry(self, req: m.Ingest, now_us: int) -> BatchEntry:
        """Validate, stamp and deduplicate one batch: the leader's half of exactly-once."""
        batch = req.batch
        n = len(batch)
        metrics = [self._metrics.get(code) for code in batch.metric_codes]
        unique = [lm is not None and lm.schema.agg_type == AggType.COUNT_UNIQUE for lm in metrics]
        oldest = now_us - self.retention_us
        newest = now_us + limits.future_skew_us_max
        ts_col = batch.timestamps
        ops = batch.operation_types
        ids = batch.event_ids
        midx = batch.metric_index
        values = batch.values
        accounts = batch.account_ids
        simple = (
            all(lm is not None for lm in metrics)
            and not any(unique)
            and ts_col is None
            and ids is None
            and (ops is None or not any(ops))
        )
        if simple:
            # The common case: every event is accepted as sent; only stamp the batch.
            stamped = m.EventBatch(
                metric_codes=batch.metric_codes,
                metric_index=midx,
                account_ids=accounts,
                values=values,
                timestamps=array("q", [now_us]) * n,
                operation_types=ops,
                properties=batch.properties,
                event_ids=None,
            )
            return BatchEntry(
                producer_id=req.producer_id,
                seq=req.seq,
                stamp_us=now_us,
                batch=stamped,
                n_duplicates=0,
                n_rejected=0,
                rejected=(),
            )
        keep: list[int] = []
        rejected: list[tuple[int, str]] = []
        n_duplicates = 0
        seen_here: set[tuple[str, int, str]] = set()
        stamps = array("q", [now_us]) * n if ts_col is None else array("q", ts_col)
        codes = batch.metric_codes
        for i in range(n):
            mi = midx[i]
            if metrics[mi] is None:
                rejected.append((i, REJECT_UNKNOWN_METRIC))
                continue
            ts = stamps[i]
            if ts == m.NO_TIMESTAMP:
                stamps[i] = ts = now_us
            if ts < oldest:
                rejected.append((i, REJECT_TOO_OLD))
                continue
            if ts > newest:
                rejected.append((i, REJECT_IN_FUTURE))
                continue
            if unique[mi]:
                if values[i] < 0:
                    rejected.append((i, REJECT_NEGATIVE_UNIQUE))
                    continue
            elif ops is not None and ops[i]:
                rejected.append((i, REJECT_OPERATION))
                continue
            if ids is not None:
                eid = ids[i]
                if eid is not None:
                    claim = (codes[mi], accounts[i], eid)
                    if (
                        claim in seen_here
                        or claim in self._pending_ids
                        or self.state.event_id_seen(claim[0], claim[1], eid)
                    ):
                        n_duplicates += 1
                        continue
                    seen_here.add(claim)
            keep.append(i)
        self._pending_ids |= seen_here
        if len(keep) == n:
            kept = m.EventBatch(
                metric_codes=codes,
                metric_index=midx,
                account_ids=accounts,
                values=values,
                timestamps=stamps,
                operation_types=ops,
                properties=batch.properties,
                event_ids=ids,
            )
        else:
            kept = _select(batch, stamps, keep)
        return BatchEntry(
            producer_id=req.producer_id,
            seq=req.seq,
            stamp_us=now_us,
            batch=kept,
            n_duplicates=n_duplicates,
            n_rejected=len(rejected),
            rejected=tuple(rejected),
        )

    # ------------------------------------------------------------------ commit

    def _append(self, entry: Entry, fx: Effects) -> int:
        self.last_index += 1
        index = self.last_index
        self._unapplied.append((index, entry))
        fx.appends.append((index, entry))
        fx.sync = True
        return index

    def _on_durable(self, index: int, now_us: int, fx: Effects) -> None:
        if index <= self.durable_index:
            return  # a stale completion (an earlier sync finished late)
        assert index <= self.last_index, (index, self.last_index)
        self.durable_index = index
        self._commit(index, now_us, fx)

    def _commit(self, upto: int, now_us: int, fx: Effects) -> None:
        state = self.state
        while self._unapplied and self._unapplied[0][0] <= upto:
            index, entry = self._unapplied.popleft()
            result = state.apply(index, entry)
            fx.alerts.extend(result.alerts)
            if isinstance(entry, BatchEntry):
                self._release_claims(index, entry)
            for token, reply in self._on_apply.pop(index, ()):
                fx.replies.append(Outgoing(token, errors.Status.OK, reply or _applied(index)))
            for token in self._retry_waiters.pop(index, ()):
                fx.replies.append(Outgoing(token, errors.Status.OK, self._entry_replies[index]))
            self._entry_replies.pop(index, None)
        self._release_reads(now_us, fx)

    def _release_claims(self, index: int, entry: BatchEntry) -> None:
        if entry.producer_id != 0:
            self._pending_seqs.pop((entry.producer_id, entry.seq), None)
        ids = entry.batch.event_ids
        if ids is None or not self._pending_ids:
            return
        codes, midx, accounts = (
            entry.batch.metric_codes,
            entry.batch.metric_index,
            entry.batch.account_ids,
        )
        for i, eid in enumerate(ids):
            if eid is not None:
                self._pending_ids.discard((codes[midx[i]], accounts[i], eid))

    def _answer_at(
        self, index: int, token: object, reply: m.IngestReply | None, fx: Effects
    ) -> None:
        if index <= self.state.applied_index:
            fx.replies.append(Outgoing(token, errors.Status.OK, reply or _applied(index)))
        else:
            self._on_apply.setdefault(index, []).append((token, reply))

    # ------------------------------------------------------------------ reads

    def _on_read(self, msg: ClientRequest, now_us: int, fx: Effects) -> None:
        req = msg.request
        assert not isinstance(req, m.Ingest)
        min_index = getattr(req, "min_index", 0)
        if min_index > self.state.applied_index:
            if min_index > self.last_index:
                fx.replies.append(
                    Outgoing(
                        msg.token,
                        errors.Status.INVALID_REQUEST,
                        m.ErrorReply(
                            message=f"min_index {min_index} is beyond this partition's log "
                            f"({self.last_index}); was it acknowledged by another cluster?",
                        ),
                    )
                )
                return
            self._parked_reads.append((min_index, msg))
            return
        fx.replies.append(self._answer_read(msg, now_us))

    def _release_reads(self, now_us: int, fx: Effects) -> None:
        if not self._parked_reads:
            return
        applied = self.state.applied_index
        still: list[tuple[int, ClientRequest]] = []
        for min_index, msg in self._parked_reads:
            if min_index <= applied:
                fx.replies.append(self._answer_read(msg, now_us))
            else:
                still.append((min_index, msg))
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
            else:  # pragma: no cover
                raise AssertionError(f"unexpected read {req!r}")
        except errors.UnimeterError as exc:
            return Outgoing(msg.token, exc.status, m.ErrorReply(message=exc.message))
        return Outgoing(msg.token, errors.Status.OK, reply)

    def truncate_uncommitted(self, after: int) -> list[object]:
        """Forget the proposals after ``after``: they never reached the log (disk full, or a
        new leader's log replaced them). Returns the requesters to fail; nothing they sent was
        stored, so their retries are free to be accepted."""
        assert after >= self.state.applied_index, (after, self.state.applied_index)
        failed: list[object] = []
        while self._unapplied and self._unapplied[-1][0] > after:
            index, entry = self._unapplied.pop()
            if isinstance(entry, BatchEntry):
                self._release_claims(index, entry)
                self._next_offset -= len(entry.batch)
            failed += [t for t, _ in self._on_apply.pop(index, ())]
            failed += self._retry_waiters.pop(index, [])
            self._entry_replies.pop(index, None)
        self.last_index = after
        schema = next((e for _, e in reversed(self._unapplied) if isinstance(e, SchemaEntry)), None)
        if schema is None:
            self._metrics = {lm.schema.code: lm for lm in self.state.live_metrics()}
            self._catalog_version = self.state.catalog_version
        else:
            self._metrics = {lm.schema.code: lm for lm in schema.metrics}
            self._catalog_version = schema.catalog_version
        return failed

    # ------------------------------------------------------------------ shutdown

    def pending_tokens(self) -> list[object]:
        """Every requester still waiting for an answer (failed with a typed error on stop)."""
        tokens: list[object] = [t for waiters in self._on_apply.values() for t, _ in waiters]
        tokens += [t for waiters in self._retry_waiters.values() for t in waiters]
        tokens += [msg.token for _, msg in self._parked_reads]
        tokens += [msg.token for msg in self._parked_ingests]
        return tokens


def _applied(index: int) -> m.IngestReply:
    return m.IngestReply(
        n_stored=0, n_duplicates=0, n_rejected=0, rejected=(), last_offset=None, log_index=index
    )


def _select(batch: m.EventBatch, stamps: array[int], keep: list[int]) -> m.EventBatch:
    """The columns of ``batch`` restricted to the events at ``keep``."""
    ops = batch.operation_types
    props = batch.properties
    ids = batch.event_ids
    return m.EventBatch(
        metric_codes=batch.metric_codes,
        metric_index=array(batch.metric_index.typecode, [batch.metric_index[i] for i in keep]),
        account_ids=array("Q", [batch.account_ids[i] for i in keep]),
        values=array("q", [batch.values[i] for i in keep]),
        timestamps=array("q", [stamps[i] for i in keep]),
        operation_types=None if ops is None else array("B", [ops[i] for i in keep]),
        properties=None if props is None else tuple(props[i] for i in keep),
        event_ids=None if ids is None else tuple(ids[i] for i in keep),
    )
