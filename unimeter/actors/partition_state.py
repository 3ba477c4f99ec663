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

Layout: metric instances (``aggregates.Instance``) own the per (account, period) records, which
own their events; ``event_store`` interns property maps and cells; ``dedup`` holds event-id
hashes and producers; ``alerts`` the alert log; ``range_reads`` answers queries;
``state_snapshot`` encodes the whole thing.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from unimeter import errors, limits, periods
from unimeter.actors import range_reads
from unimeter.actors.aggregates import (
    PROPS_SHIFT,
    DeadBucket,
    Instance,
    NumCell,
    NumRec,
    Record,
    apply_unique,
    fold_into_base,
    num_total,
    shape_of,
    unique_total,
)
from unimeter.actors.alerts import AlertLog, crossings
from unimeter.actors.dedup import SEEN, EventIdIndex, ProducerTable, Seen, event_id_hash
from unimeter.actors.entries import BatchEntry, Entry, LiveMetric, SchemaEntry
from unimeter.actors.event_store import CellTable, PropsTable, cell_of, page_events
from unimeter.model import AggType, AggValue
from unimeter.wire.messages import NO_TIMESTAMP, IngestReply, StoredAlert, StoredEvent

__all__ = ["SEEN", "ApplyResult", "PartitionState", "Seen"]

US_PER_DAY = periods.US_PER_DAY
# Reads are clamped to timestamps whose periods stay inside what ``datetime`` can represent.
TS_MIN_US = periods.to_us(periods.EPOCH.replace(year=2))
TS_MAX_US = periods.to_us(periods.EPOCH.replace(year=9998))

Group = range_reads.Group


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    first_offset: int | None  # offsets of the BatchEntry's events (None: no events)
    last_offset: int | None
    alerts: tuple[StoredAlert, ...]  # fired by this entry, in cursor order


_NOTHING = ApplyResult(first_offset=None, last_offset=None, alerts=())


def _plain_extras(rec: NumRec, ts: int, value: int) -> None:
    """The rare tail of a plain event joining a record that also holds event ids or cells
    (from earlier batches): its id is None and, as it has no properties, its cell is 0."""
    row = (len(rec.ev) >> 2) - 1
    if rec.eids is not None:
        rec.eids.append(None)
    if rec.cells is not None:
        agg = rec.cells.get(0)
        if agg is None:
            rec.cells[0] = NumCell(1, value, value, row)
        else:
            agg.count += 1
            agg.sum += value
            if value > agg.max:
                agg.max = value
            if ts >= rec.ev[(agg.last << 2) + 1]:
                agg.last = row


class PartitionState:
    def __init__(
        self,
        partition: int,
        *,
        retention_days: int = limits.retention_days_default,
        dedup_window_days: int = limits.dedup_window_days_default,
    ) -> None:
        assert 0 <= partition < limits.partitions_max
        assert retention_days >= 1 and dedup_window_days >= 1
        self.partition = partition
        self.retention_days = retention_days
        self.dedup_window_days = dedup_window_days
        self.applied_index = 0
        self.catalog_version = 0
        self._offset_base = partition << 48
        self._n_stored = 0  # events ever stored in this partition: the next offset's low bits
        self._next_mid = 1
        self._newest_day: int | None = None
        # Periods ending at or before ``_cutoff`` are gone (records, events, alerts before it).
        self._cutoff = TS_MIN_US
        self._live: dict[str, Instance] = {}
        self._accounts: dict[int, int] = {}  # one int object per account id, shared by records
        self._instances: dict[int, Instance] = {}  # live and dead, by mid
        self._props = PropsTable()
        self._cells = CellTable()
        self._ids = EventIdIndex()
        self._producers = ProducerTable()
        self._alerts = AlertLog()

    # ----------------------------------------------------------------------- apply

    def apply(self, index: int, entry: Entry) -> ApplyResult:
        assert index == self.applied_index + 1, (index, self.applied_index)
        if isinstance(entry, SchemaEntry):
            self._apply_schema(entry)
            result = _NOTHING
        else:
            result = self._apply_batch(index, entry)
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
            current = self._live.get(code)
            if (
                current is not None
                and current.metric.generation == metric.generation
                and current.shape == shape_of(metric.schema)
            ):
                current.configure(metric)
                continue
            if current is not None:
                self._kill(current)
            inst = Instance(self._next_mid, metric)
            self._next_mid += 1
            self._instances[inst.mid] = inst
            self._live[code] = inst
        for code in [c for c in self._live if c not in seen]:
            self._kill(self._live[code])
        self.catalog_version = entry.catalog_version

    def _kill(self, inst: Instance) -> None:
        """Drop a metric instance's aggregates; its events stay listable until they expire."""
        del self._live[inst.code]
        inst.live = False
        inst.base.clear()
        inst.ucache.clear()
        inst.cell_cache.clear()
        inst.forget_cached_periods()
        for recs in inst.periods.values():
            for account, rec in recs.items():
                recs[account] = DeadBucket(rec.ev, rec.eids)
        if not inst.periods:
            del self._instances[inst.mid]

    def _apply_batch(self, index: int, entry: BatchEntry) -> ApplyResult:
        if self._newest_day is None or entry.stamp_us // US_PER_DAY > self._newest_day:
            self._advance(entry.stamp_us // US_PER_DAY)
        assert self._newest_day is not None
        producer_id = entry.producer_id
        if producer_id:
            assert self._producers.outcome(producer_id, entry.seq) is None, (
                f"producer {producer_id} seq {entry.seq} is already applied"
            )
        n = len(entry.batch)
        alerts: list[StoredAlert] = []
        first_offset = last_offset = None
        if n:
            first_offset = self._offset_base + self._n_stored
            batch = entry.batch
            insts = [self._live.get(code) for code in batch.metric_codes]
            assert batch.timestamps is not None and len(batch.timestamps) == n
            assert min(batch.timestamps) > NO_TIMESTAMP, "BatchEntry events must carry timestamps"
            if (
                batch.properties is None
                and batch.event_ids is None
                and all(inst is not None and not inst.unique and not inst.dims for inst in insts)
            ):
                done = self._apply_plain(entry, insts, first_offset, alerts)  # type: ignore[arg-type]
            else:
                done = False
            if not done:
                self._apply_events(entry, insts, first_offset, alerts)
            self._n_stored += n
            last_offset = first_offset + n - 1
        if producer_id:
            reply = IngestReply(
                n_stored=n,
                n_duplicates=entry.n_duplicates,
                n_rejected=entry.n_rejected,
                rejected=entry.rejected,
                last_offset=last_offset,
                log_index=index,
            )
            self._producers.record(producer_id, entry.seq, reply, self._newest_day)
        if not n and not producer_id:
            return _NOTHING
        return ApplyResult(first_offset=first_offset, last_offset=last_offset, alerts=tuple(alerts))

    def _apply_plain(
        self, entry: BatchEntry, insts: list[Instance], first: int, alerts: list[StoredAlert]
    ) -> bool:
        """The hot loop for the common batch: COUNT/SUM/MAX/LATEST metrics without dimensions,
        events without properties, ids or operations, each metric's events in one period (a
        leader-stamped batch always is). Same effect as ``_apply_events``, less per event.
        Returns False, having changed nothing observable, when the batch is not like that."""
        batch = entry.batch
        stamps = batch.timestamps
        assert stamps is not None
        ops = batch.operation_types
        if ops is not None and any(ops):
            return False
        lo, hi = min(stamps), max(stamps)
        recs_of: list[dict[int, NumRec]] = []
        for inst in insts:
            if not inst.ps <= lo < inst.pe and inst.recs_for(lo, self._cutoff) is None:
                return False  # expired at once: the general loop skips those events
            if hi >= inst.pe:
                return False
            recs_of.append(inst.recs)
        thresholds_of = [inst.thresholds for inst in insts]
        interned_accounts = self._accounts
        columns = zip(
            range(first, first + len(stamps)),
            batch.metric_index,
            batch.account_ids,
            stamps,
            batch.values,
            strict=True,
        )
        for offset, metric, account, ts, value in columns:
            recs = recs_of[metric]
            rec = recs.get(account)
            if rec is None:
                rec = NumRec(value, value, array("q", (offset, ts, value, 0)))
                recs[interned_accounts.setdefault(account, account)] = rec
            else:
                ev = rec.ev
                ev.extend((offset, ts, value, 0))
                rec.sum += value
                if value > rec.max:
                    rec.max = value
                if ts >= ev[(rec.last << 2) + 1]:
                    rec.last = (len(ev) >> 2) - 1
                if rec.eids is not None or rec.cells is not None:
                    _plain_extras(rec, ts, value)
            thresholds = thresholds_of[metric]
            if thresholds:
                total = num_total(insts[metric].agg, rec)
                rec.fired, crossed = crossings(rec.fired, thresholds, total)
                if crossed is not None:
                    code = insts[metric].code
                    for threshold in crossed:
                        alerts.append(
                            self._alerts.append(account, code, threshold, total, entry.stamp_us)
                        )
        return True

    def _apply_events(
        self,
        entry: BatchEntry,
        insts: list[Instance | None],
        first: int,
        alerts: list[StoredAlert],
    ) -> None:
        """The general hot loop: one pass over the batch's columns, nothing allocated per event
        beyond the packed event words and the record a new (account, period) needs."""
        batch = entry.batch
        stamps = batch.timestamps
        assert stamps is not None
        ops = batch.operation_types
        props = batch.properties
        event_ids = batch.event_ids
        cutoff = self._cutoff
        intern_props = self._props.intern
        interned_accounts = self._accounts
        combined_ids = self._ids.combined
        day_ids = self._ids.day_set(self._newest_day)  # type: ignore[arg-type]
        columns = zip(batch.metric_index, batch.account_ids, stamps, batch.values, strict=True)
        for i, (metric, account, ts, value) in enumerate(columns):
            inst = insts[metric]
            assert inst is not None, "BatchEntry event for a metric the partition does not know"
            event_id = event_ids[i] if event_ids is not None else None
            if event_id is not None:
                key = event_id_hash(inst.code, account, event_id)
                assert key not in combined_ids, f"event id {event_id!r} is already stored"
                day_ids.add(key)
                combined_ids.add(key)
            if inst.ps <= ts < inst.pe:
                recs = inst.recs
            else:
                found_recs = inst.recs_for(ts, cutoff)
                if found_recs is None:
                    continue  # its period is already past retention: stored, expired at once
                recs = found_recs
            offset = first + i
            op = ops[i] if ops is not None else 0
            pmap = props[i] if props is not None else None
            pid = intern_props(pmap) if pmap else 0
            cell = 0
            if inst.dims:
                found = inst.cell_cache.get(pid)
                if found is None:
                    found = self._cells.intern(cell_of(inst.dims, self._props.maps[pid]))
                    inst.cell_cache[pid] = found
                cell = found
            packed = pid << PROPS_SHIFT | cell << 2 | op
            total: int
            if inst.unique:
                assert value >= 0, "COUNT_UNIQUE values are u64"
                if account not in recs:
                    account = interned_accounts.setdefault(account, account)
                urec = apply_unique(
                    inst, recs, account, inst.ps, offset, ts, value, op, packed, cell, event_id
                )
                if not inst.thresholds:
                    continue
                total = unique_total(inst, account, inst.ps, urec)
                urec.fired, crossed = crossings(urec.fired, inst.thresholds, total)
            else:
                rec: NumRec | None = recs.get(account)
                if rec is None:
                    rec = NumRec(value, value, array("q", (offset, ts, value, packed)))
                    recs[interned_accounts.setdefault(account, account)] = rec
                    if event_id is not None:
                        rec.eids = [event_id]
                    if cell:
                        rec.cells = {cell: NumCell(1, value, value, 0)}
                else:
                    ev = rec.ev
                    row = len(ev) >> 2
                    if cell and rec.cells is None:
                        rec.cells = {0: NumCell(row, rec.sum, rec.max, rec.last)}
                    ev.extend((offset, ts, value, packed))
                    rec.sum += value
                    if value > rec.max:
                        rec.max = value
                    if ts >= ev[(rec.last << 2) + 1]:
                        rec.last = row
                    if rec.eids is not None:
                        rec.eids.append(event_id)
                    elif event_id is not None:
                        rec.eids = [None] * row
                        rec.eids.append(event_id)
                    if rec.cells is not None:
                        agg = rec.cells.get(cell)
                        if agg is None:
                            rec.cells[cell] = NumCell(1, value, value, row)
                        else:
                            agg.count += 1
                            agg.sum += value
                            if value > agg.max:
                                agg.max = value
                            if ts >= ev[(agg.last << 2) + 1]:
                                agg.last = row
                if not inst.thresholds:
                    continue
                total = num_total(inst.agg, rec)
                rec.fired, crossed = crossings(rec.fired, inst.thresholds, total)
            if crossed is not None:
                for code in crossed:
                    alerts.append(
                        self._alerts.append(account, inst.code, code, total, entry.stamp_us)
                    )

    # ----------------------------------------------------------------------- time

    def _advance(self, day: int) -> None:
        """``newest_day`` moves forward: expire what fell out of retention and the windows."""
        self._newest_day = day
        cutoff = max(TS_MIN_US, (day - self.retention_days) * US_PER_DAY)
        oldest_kept_day = day - self.dedup_window_days + 1
        self._ids.expire(oldest_kept_day)
        self._producers.expire(oldest_kept_day)
        if cutoff <= self._cutoff:
            return
        self._cutoff = cutoff
        self._alerts.expire(cutoff)
        dropped = False
        for inst in list(self._instances.values()):
            dropped |= self._expire_instance(inst, cutoff)
        if dropped and self._props.needs_gc():
            self._props.compact(rec.ev for rec in self._all_records())
            for inst in self._instances.values():
                inst.cell_cache.clear()

    def _expire_instance(self, inst: Instance, cutoff: int) -> bool:
        """Drop the instance's periods that ended at or before ``cutoff``, oldest first,
        carrying into the bases what recurring reads still need."""
        expired = sorted(s for s, (_, end) in inst.period_index.items() if end <= cutoff)
        if not expired:
            return False
        carry = inst.live and (inst.unique or inst.agg == AggType.LATEST)
        for start in expired:
            del inst.period_index[start]
            recs = inst.periods.pop(start, None)
            if recs is None:
                continue
            for account, rec in recs.items():
                if carry:
                    fold_into_base(inst, account, rec)
                cached = inst.ucache.get(account)
                if cached is not None and cached[0] <= start:
                    del inst.ucache[account]
        inst.forget_cached_periods()
        if not inst.live and not inst.periods:
            del self._instances[inst.mid]
        return True

    def _all_records(self) -> list[Record]:
        return [
            rec
            for inst in self._instances.values()
            for recs in inst.periods.values()
            for rec in recs.values()
        ]

    # ----------------------------------------------------------------------- leader lookups

    def metric(self, code: str) -> LiveMetric | None:
        inst = self._live.get(code)
        return inst.metric if inst is not None else None

    def live_metrics(self) -> tuple[LiveMetric, ...]:
        """Every live metric, sorted by code (the leader's starting view after recovery)."""
        return tuple(self._live[code].metric for code in sorted(self._live))

    @property
    def next_offset(self) -> int:
        """The offset the next stored event will get."""
        return self._offset_base + self._n_stored

    def producer_outcome(self, producer_id: int, seq: int) -> IngestReply | Seen | None:
        return self._producers.outcome(producer_id, seq)

    def event_id_seen(self, metric_code: str, account_id: int, event_id: str) -> bool:
        return self._ids.seen(event_id_hash(metric_code, account_id, event_id))

    # ----------------------------------------------------------------------- reads

    def query(
        self,
        metric_code: str,
        account_id: int,
        start_us: int,
        end_us: int,
        filters: tuple[tuple[str, str], ...] = (),
    ) -> AggValue:
        if not filters:
            inst = self._live.get(metric_code)
            if inst is not None:
                found = range_reads.whole_period(inst, account_id, start_us, end_us)
                if found is not None:
                    return found
        groups, flags = self._read(metric_code, account_id, start_us, end_us, filters, ())
        return groups.get((), AggValue(alert_flags=flags))

    def query_realtime(
        self, metric_code: str, account_id: int, now_us: int
    ) -> tuple[AggValue, int, int]:
        inst = self._instance(metric_code)
        now_us = min(max(now_us, TS_MIN_US), TS_MAX_US)
        if inst.ps <= now_us < inst.pe:  # the period ingest is filling: bounds already known
            start, end = inst.ps, inst.pe
        else:
            start, end = inst.period_of(now_us)
        return self.query(metric_code, account_id, start, end), start, end

    def breakdown(
        self,
        metric_code: str,
        account_id: int,
        start_us: int,
        end_us: int,
        group_by: tuple[str, ...],
        filters: tuple[tuple[str, str], ...] = (),
    ) -> tuple[tuple[Group, AggValue], ...]:
        groups, _ = self._read(metric_code, account_id, start_us, end_us, filters, group_by)
        return tuple(
            (group, value)
            for group, value in sorted(groups.items())
            if value.count > 0 or value.last_value is not None
        )

    def list_events(
        self, account_id: int, since_us: int, until_us: int, after_offset: int, limit: int
    ) -> tuple[tuple[StoredEvent, ...], int | None]:
        if limit < 1:
            raise errors.InvalidRequestError(f"limit must be at least 1, got {limit}")
        buckets: list[tuple[str, Record]] = []
        for inst in self._instances.values():
            for start, recs in inst.periods.items():
                rec = recs.get(account_id)
                if rec is not None and start < until_us and inst.end_of(start) > since_us:
                    buckets.append((inst.code, rec))
        return page_events(
            account_id, buckets, self._props, since_us, until_us, after_offset, limit
        )

    def list_alerts(
        self, account_id: int, after_cursor: int, limit: int
    ) -> tuple[tuple[StoredAlert, ...], int | None]:
        if limit < 1:
            raise errors.InvalidRequestError(f"limit must be at least 1, got {limit}")
        return self._alerts.page(account_id, after_cursor, limit, self._cutoff)

    def alerts_catch_up(
        self, account_id: int | None, after_cursor: int, limit: int
    ) -> tuple[tuple[StoredAlert, ...], int | None, int]:
        """A subscriber's catch-up page: ``list_alerts`` of one account, or of every account
        when ``account_id`` is None, plus the cursor the next alert will get (live pushes
        start there)."""
        if limit < 1:
            raise errors.InvalidRequestError(f"limit must be at least 1, got {limit}")
        if account_id is None:
            page, nxt = self._alerts.page_all(after_cursor, limit, self._cutoff)
        else:
            page, nxt = self._alerts.page(account_id, after_cursor, limit, self._cutoff)
        return page, nxt, self._alerts.next_cursor

    def _instance(self, metric_code: str) -> Instance:
        inst = self._live.get(metric_code)
        if inst is None:
            raise errors.UnknownMetricError(f"unknown metric {metric_code!r}")
        return inst

    def _read(
        self,
        metric_code: str,
        account_id: int,
        start_us: int,
        end_us: int,
        filters: tuple[tuple[str, str], ...],
        group_by: tuple[str, ...],
    ) -> tuple[dict[Group, AggValue], int]:
        inst = self._instance(metric_code)
        for key, value in filters:
            allowed = inst.dim_values(key)
            if allowed is None:
                raise errors.InvalidRequestError(
                    f"metric {metric_code!r} has no dimension {key!r} to filter on"
                )
            if value not in allowed:
                raise errors.InvalidRequestError(
                    f"dimension {key!r} of metric {metric_code!r} has no value {value!r}"
                )
        for key in group_by:
            if inst.dim_values(key) is None:
                raise errors.InvalidRequestError(
                    f"metric {metric_code!r} has no dimension {key!r} to group by"
                )
        if start_us >= end_us:
            raise errors.InvalidRequestError(f"empty range [{start_us}, {end_us})")
        start = max(start_us, TS_MIN_US)
        end = min(end_us, TS_MAX_US)
        if self._cutoff > start:
            # Periods that ended at or before the cutoff are gone; the one holding it is not.
            start = max(start, inst.period_of(self._cutoff)[0])
        if start >= end:
            return {}, 0
        pieces = range_reads.plan(inst, inst.series(account_id), start, end)
        view = range_reads.CellView(self._cells.cells, filters, tuple(group_by))
        if inst.unique:
            return range_reads.read_unique(inst, account_id, pieces, view)
        return range_reads.read_num(inst, account_id, pieces, view)

    # ----------------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        from unimeter.actors import state_snapshot

        return state_snapshot.encode(self)

    @classmethod
    def from_snapshot(cls, data: bytes) -> PartitionState:
        from unimeter.actors import state_snapshot

        return state_snapshot.decode(data)
