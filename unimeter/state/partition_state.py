"""The applied state of one partition: a pure, deterministic function of its log.

Theory of operation
-------------------
``apply(index, entry)`` is the only way to change the state, and it reads nothing but the entry:
no clock, no randomness, no I/O. Time moves only with BatchEntry stamps: the day of the newest
stamp (``newest_day``) drives retention, the event-id window and producer expiry, and each of
those is swept once, when ``newest_day`` advances. So every replica, and every replay of the log
after a restart, holds the same state after the same entry.

Everything observable is defined in docs/semantics.md; ``tests/partition_model.py`` is the same
definition written naively, and the Hypothesis suite holds this class to it.

Layout (docs/architecture.md): a batch becomes columns (``gather``), which are appended to the
event store (``events``) and folded into aggregate rows (``aggregates``, ``rows``) with array
operations; ``dedup`` holds event-id keys and producers, ``alerts`` the alert log, ``reads``
answers queries and ``snapshot`` encodes the whole thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyroaring import BitMap64

from unimeter import errors, limits, periods
from unimeter.model import AggValue
from unimeter.state import apply_batch, reads
from unimeter.state.aggregates import Tables
from unimeter.state.alerts import AlertLog
from unimeter.state.dedup import SEEN, EventIdIndex, ProducerTable, Seen
from unimeter.state.entries import Entry, LiveMetric, SchemaEntry, WebhookMark
from unimeter.state.events import CHUNK_EVENTS, EventStore
from unimeter.state.hashing import code_key, event_id_key
from unimeter.state.instances import Instance, shape_of
from unimeter.state.props import CellTable, PropsTable
from unimeter.wire.messages import IngestReply, StoredAlert, StoredEvent

__all__ = ["SEEN", "ApplyResult", "PartitionState", "Seen"]

US_PER_DAY = periods.US_PER_DAY
TS_MIN_US = reads.TS_MIN_US
TS_MAX_US = reads.TS_MAX_US
Group = reads.Group


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    first_offset: int | None  # offsets of the BatchEntry's stored events (None: no events)
    last_offset: int | None
    alerts: tuple[StoredAlert, ...]  # fired by this entry, in cursor order
    replies: tuple[IngestReply, ...] = ()  # one per part, in part order


_NOTHING = ApplyResult(first_offset=None, last_offset=None, alerts=())


class PartitionState:
    def __init__(
        self,
        partition: int,
        *,
        retention_days: int = limits.retention_days_default,
        dedup_window_days: int = limits.dedup_window_days_default,
        chunk_events: int = CHUNK_EVENTS,
    ) -> None:
        assert 0 <= partition < limits.partitions_max
        assert retention_days >= 1 and dedup_window_days >= 1
        self.partition = partition
        self.retention_days = retention_days
        self.dedup_window_days = dedup_window_days
        self.applied_index = 0
        self.catalog_version = 0
        self.next_mid = 1
        self.next_table = 0
        self.newest_day: int | None = None
        # Periods ending at or before ``cutoff`` are gone (rows, events, alerts before it).
        self.cutoff = TS_MIN_US
        self.live: dict[str, Instance] = {}
        self.instances: dict[int, Instance] = {}  # live and dead, by mid
        self.props = PropsTable()
        self.cells = CellTable()
        self.tables = Tables()
        self.events = EventStore(partition << 48, chunk_events)
        self.ids = EventIdIndex()
        self.producers = ProducerTable()
        self.alerts = AlertLog()
        self.webhook_next = 0  # alerts below this cursor are delivered (``WebhookMark``)

    # ----------------------------------------------------------------------- apply

    def apply(self, index: int, entry: Entry) -> ApplyResult:
        assert index == self.applied_index + 1, (index, self.applied_index)
        if isinstance(entry, SchemaEntry):
            self._apply_schema(entry)
            result = _NOTHING
        elif isinstance(entry, WebhookMark):
            self.webhook_next = max(self.webhook_next, entry.next_cursor)
            result = _NOTHING
        else:
            result = apply_batch.apply(self, index, entry)
        self.applied_index = index
        return result

    def apply_noop(self, index: int) -> None:
        """A log index that holds no entry for this state (a new Raft leader's no-op)."""
        assert index == self.applied_index + 1, (index, self.applied_index)
        self.applied_index = index

    def _apply_schema(self, entry: SchemaEntry) -> None:
        seen: set[str] = set()
        for metric in entry.metrics:
            code = metric.schema.code
            assert code not in seen, f"metric {code!r} listed twice"
            seen.add(code)
            current = self.live.get(code)
            if (
                current is not None
                and current.metric.generation == metric.generation
                and current.shape == shape_of(metric.schema)
            ):
                if current.configure(metric):
                    apply_batch.refresh_levels(self, current)
                continue
            if current is not None:
                self._kill(current)
            inst = Instance(self.next_mid, metric)
            self.next_mid += 1
            self.instances[inst.mid] = inst
            self.live[code] = inst
        for code in [c for c in self.live if c not in seen]:
            self._kill(self.live[code])
        self.catalog_version = entry.catalog_version

    def _kill(self, inst: Instance) -> None:
        """Drop a metric instance's aggregates; its events stay listable until they expire."""
        del self.live[inst.code]
        inst.live = False
        inst.base.clear()
        inst.ucache.clear()
        apply_batch.drop_tables(self, inst, list(inst.periods))
        inst.ps = inst.pe = 0
        inst.table = -1

    # ----------------------------------------------------------------------- time

    def advance(self, day: int) -> None:
        """``newest_day`` moves forward: expire what fell out of retention and the windows."""
        self.newest_day = day
        cutoff = max(TS_MIN_US, (day - self.retention_days) * US_PER_DAY)
        oldest_kept_day = day - self.dedup_window_days + 1
        self.ids.expire(oldest_kept_day)
        self.producers.expire(oldest_kept_day)
        if cutoff <= self.cutoff:
            return
        self.cutoff = cutoff
        self.alerts.expire(cutoff)
        dropped = False
        for inst in list(self.instances.values()):
            expired = sorted(s for s, (end, _) in inst.periods.items() if end <= cutoff)
            if expired:
                apply_batch.expire_periods(self, inst, expired)
                dropped = True
        visible_from = self.visible_from()
        self.events.drop_while(
            lambda newest: all(
                ts < visible_from.get(mid, reads.NEVER) for mid, ts in newest.items()
            )
        )
        for inst in [i for i in self.instances.values() if not i.live and not i.periods]:
            if not any(inst.mid in chunk.max_ts() for chunk in self.events.chunks):
                del self.instances[inst.mid]
        if dropped and self.props.needs_gc():
            apply_batch.compact_props(self)

    def visible_from(self) -> dict[int, int]:
        """Per instance, the earliest timestamp whose period ends after the cutoff."""
        if self.cutoff <= TS_MIN_US:
            return dict.fromkeys(self.instances, TS_MIN_US)
        return {mid: inst.period_of(self.cutoff)[0] for mid, inst in self.instances.items()}

    # ----------------------------------------------------------------------- leader lookups

    def metric(self, code: str) -> LiveMetric | None:
        inst = self.live.get(code)
        return inst.metric if inst is not None else None

    def live_metrics(self) -> tuple[LiveMetric, ...]:
        """Every live metric, sorted by code (the leader's starting view after recovery)."""
        return tuple(self.live[code].metric for code in sorted(self.live))

    @property
    def next_offset(self) -> int:
        """The offset the next stored event will get."""
        return self.events.next_offset

    def producer_outcome(self, producer_id: int, seq: int) -> IngestReply | Seen | None:
        return self.producers.outcome(producer_id, seq)

    def event_id_seen(self, metric_code: str, account_id: int, event_id: str) -> bool:
        return self.ids.seen(event_id_key(metric_code, account_id, event_id))

    def event_keys_seen(self, keys: np.ndarray) -> np.ndarray:
        """Which of these event-id keys are already stored (the leader's dedup check)."""
        return self.ids.contains(keys)

    code_key = staticmethod(code_key)

    # ----------------------------------------------------------------------- reads

    def query(
        self,
        metric_code: str,
        account_id: int,
        start_us: int,
        end_us: int,
        filters: tuple[tuple[str, str], ...] = (),
    ) -> AggValue:
        return reads.query(self, metric_code, account_id, start_us, end_us, filters)

    def query_realtime(
        self, metric_code: str, account_id: int, now_us: int
    ) -> tuple[AggValue, int, int]:
        return reads.query_realtime(self, metric_code, account_id, now_us)

    def breakdown(
        self,
        metric_code: str,
        account_id: int,
        start_us: int,
        end_us: int,
        group_by: tuple[str, ...],
        filters: tuple[tuple[str, str], ...] = (),
    ) -> tuple[tuple[Group, AggValue], ...]:
        return reads.breakdown(self, metric_code, account_id, start_us, end_us, group_by, filters)

    def list_events(
        self, account_id: int, since_us: int, until_us: int, after_offset: int, limit: int
    ) -> tuple[tuple[StoredEvent, ...], int | None]:
        if limit < 1:
            raise errors.InvalidRequestError(f"limit must be at least 1, got {limit}")
        return reads.list_events(self, account_id, since_us, until_us, after_offset, limit)

    def list_alerts(
        self, account_id: int, after_cursor: int, limit: int
    ) -> tuple[tuple[StoredAlert, ...], int | None]:
        if limit < 1:
            raise errors.InvalidRequestError(f"limit must be at least 1, got {limit}")
        return self.alerts.page(account_id, after_cursor, limit, self.cutoff)

    def alerts_catch_up(
        self, account_id: int | None, after_cursor: int, limit: int
    ) -> tuple[tuple[StoredAlert, ...], int | None, int]:
        """A subscriber's catch-up page: ``list_alerts`` of one account, or of every account
        when ``account_id`` is None, plus the cursor the next alert will get (live pushes
        start there)."""
        if limit < 1:
            raise errors.InvalidRequestError(f"limit must be at least 1, got {limit}")
        if account_id is None:
            page, nxt = self.alerts.page_all(after_cursor, limit, self.cutoff)
        else:
            page, nxt = self.alerts.page(account_id, after_cursor, limit, self.cutoff)
        return page, nxt, self.alerts.next_cursor

    # ----------------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        from unimeter.state import snapshot

        return snapshot.encode(self)

    @classmethod
    def from_snapshot(cls, data: bytes) -> PartitionState:
        from unimeter.state import snapshot

        return snapshot.decode(data)


def unique_members(present: BitMap64) -> int:
    return len(present)
