"""A deliberately naive model of the partition's applied state (docs/semantics.md, literally).

It keeps every event it was ever given in one list and recomputes every answer from scratch,
with no caches, no per-period records and no incremental sets: slow, short and obviously
right, so that ``PartitionState`` can be checked against it. Nothing here is shared with the
implementation beyond the contract modules (periods, model, messages, entries).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from unimeter import errors, limits, periods
from unimeter.model import AggType, AggValue, MetricSchema, OperationType
from unimeter.state.entries import BatchEntry, Entry, LiveMetric, SchemaEntry
from unimeter.wire.messages import IngestReply, StoredAlert, StoredEvent

DAY = periods.US_PER_DAY
TS_MIN = periods.to_us(datetime(2, 1, 1, tzinfo=UTC))
SEEN = "seen"

Group = tuple[tuple[str, str], ...]


@dataclass
class Metric:
    """One life of a metric code: same code + generation + shape."""

    ident: int
    generation: int
    schema: MetricSchema

    @property
    def shape(self) -> tuple[int, int, int, int]:
        s = self.schema
        return (s.agg_type, s.period_type, s.period_seconds, s.billing_cycle_day)

    def period(self, ts: int) -> tuple[int, int]:
        s = self.schema
        return periods.period_bounds(s.period_type, ts, s.period_seconds, s.billing_cycle_day)


@dataclass
class Ev:
    offset: int
    metric: Metric
    account: int
    ts: int
    value: int
    op: int
    props: dict[str, str]
    event_id: str | None
    cell: Group  # decided with the dimensions current when the event was applied
    period: tuple[int, int]
    counted: bool  # False: its period had already expired when it was applied


def latest_of(events: Iterable[Ev]) -> Ev | None:
    best = None
    for e in events:
        if best is None or (e.ts, e.offset) >= (best.ts, best.offset):
            best = e
    return best


def unique_fold(events: Iterable[Ev], match: object) -> dict[Group, set[int]]:
    """Replay ADD/NONE/REMOVE in the given order into one set per group."""
    sets: dict[Group, set[int]] = {}
    for e in events:
        if e.op == OperationType.REMOVE:
            for members in sets.values():
                members.discard(e.value)
            continue
        group = match(e.cell)  # type: ignore[operator]
        if group is not None:
            sets.setdefault(group, set()).add(e.value)
    return sets


class Model:
    def __init__(self, partition: int, retention_days: int, dedup_window_days: int) -> None:
        self.partition = partition
        self.retention_days = retention_days
        self.window = dedup_window_days
        self.applied_index = 0
        self.catalog_version = 0
        self.live: dict[str, Metric] = {}
        self.idents = 0
        self.events: list[Ev] = []
        self.fired: dict[tuple[int, int, int], dict[str, int]] = {}
        self.alerts: list[StoredAlert] = []
        self.ids: dict[tuple[str, int, str], int] = {}  # -> day it was stored
        self.producers: dict[int, list[tuple[int, IngestReply]]] = {}
        self.producer_day: dict[int, int] = {}
        self.newest_day: int | None = None

    # ------------------------------------------------------------------ time

    @property
    def cutoff(self) -> int:
        if self.newest_day is None:
            return TS_MIN
        return max(TS_MIN, (self.newest_day - self.retention_days) * DAY)

    # ------------------------------------------------------------------ apply

    def apply(self, index: int, entry: Entry) -> tuple[int | None, int | None, list[StoredAlert]]:
        assert index == self.applied_index + 1
        self.applied_index = index
        if isinstance(entry, SchemaEntry):
            self._schema(entry)
            return None, None, []
        return self._batch(index, entry)

    def _schema(self, entry: SchemaEntry) -> None:
        new: dict[str, Metric] = {}
        for lm in entry.metrics:
            old = self.live.get(lm.schema.code)
            probe = Metric(0, lm.generation, lm.schema)
            if old is not None and old.generation == lm.generation and old.shape == probe.shape:
                old.schema = lm.schema
                new[lm.schema.code] = old
            else:
                self.idents += 1
                new[lm.schema.code] = Metric(self.idents, lm.generation, lm.schema)
        self.live = new
        self.catalog_version = entry.catalog_version

    def _batch(
        self, index: int, entry: BatchEntry
    ) -> tuple[int | None, int | None, list[StoredAlert]]:
        day = entry.stamp_us // DAY
        if self.newest_day is None or day > self.newest_day:
            self.newest_day = day
            for pid in [p for p, d in self.producer_day.items() if d <= day - self.window]:
                del self.producers[pid], self.producer_day[pid]
        assert self.newest_day is not None
        fired_now: list[StoredAlert] = []
        first = self.partition * 2**48 + len(self.events)
        for i, logged in enumerate(entry.stored_events()):
            metric = self.live[logged.metric_code]
            account = logged.account_id
            props = dict(logged.properties or {})
            event_id = logged.event_id
            if event_id is not None:
                assert not self.event_id_seen(metric.schema.code, account, event_id)
                self.ids[(metric.schema.code, account, event_id)] = self.newest_day
            cell = tuple(
                sorted(
                    (d.key, props[d.key])
                    for d in metric.schema.filters
                    if props.get(d.key) in tuple(d.values)
                )
            )
            ts = logged.timestamp_us
            period = metric.period(ts)
            e = Ev(
                offset=first + i,
                metric=metric,
                account=account,
                ts=ts,
                value=logged.value,
                op=logged.operation_type,
                props=props,
                event_id=event_id,
                cell=cell,
                period=period,
                counted=period[1] > self.cutoff,
            )
            self.events.append(e)
            if e.counted:
                fired_now.extend(self._thresholds(e, entry.stamp_us))
        n = len(self.events) - (first - self.partition * 2**48)
        last = first + n - 1 if n else None
        offset = first
        for part in entry.parts:
            stored = part.n_stored
            if part.producer_id:
                reply = IngestReply(
                    n_stored=stored,
                    n_duplicates=part.n_duplicates,
                    n_rejected=part.n_rejected,
                    rejected=part.rejected,
                    last_offset=offset + stored - 1 if stored else None,
                    log_index=index,
                )
                self.producers.setdefault(part.producer_id, []).append((part.seq, reply))
                self.producer_day[part.producer_id] = self.newest_day
            offset += stored
        return (first if n else None), last, fired_now

    def _period_total(self, e: Ev) -> int:
        metric = e.metric
        mine = [
            x for x in self.events if x.counted and x.metric is metric and x.account == e.account
        ]
        if metric.schema.agg_type == AggType.COUNT_UNIQUE:
            if metric.schema.recurring:
                ordered = sorted(
                    (x for x in mine if x.period[0] <= e.period[0]),
                    key=lambda x: (x.period[0], x.offset),
                )
            else:
                ordered = [x for x in mine if x.period == e.period]
            return len(unique_fold(ordered, lambda cell: ()).get((), set()))
        here = [x for x in mine if x.period == e.period]
        agg = metric.schema.agg_type
        if agg == AggType.COUNT:
            return len(here)
        if agg == AggType.SUM:
            return sum(x.value for x in here)
        if agg == AggType.MAX:
            return max(x.value for x in here)
        newest = latest_of(here)
        assert newest is not None
        return newest.value

    def _thresholds(self, e: Ev, stamp_us: int) -> list[StoredAlert]:
        total = self._period_total(e)
        fired = self.fired.setdefault((e.metric.ident, e.account, e.period[0]), {})
        out = []
        for th in e.metric.schema.thresholds:
            if th.recurring:
                multiple = total // th.value if total >= th.value else 0
                if multiple < 1 or multiple <= fired.get(th.code, 0):
                    continue
                fired[th.code] = multiple
            else:
                if total < th.value or th.code in fired:
                    continue
                fired[th.code] = 1
            alert = StoredAlert(
                account_id=e.account,
                metric_code=e.metric.schema.code,
                threshold_code=th.code,
                value_at_cross=total,
                triggered_at_us=stamp_us,
                cursor=len(self.alerts),
            )
            self.alerts.append(alert)
            out.append(alert)
        return out

    # ------------------------------------------------------------------ lookups

    def metric(self, code: str) -> LiveMetric | None:
        m = self.live.get(code)
        return None if m is None else LiveMetric(generation=m.generation, schema=m.schema)

    def event_id_seen(self, code: str, account: int, event_id: str) -> bool:
        day = self.ids.get((code, account, event_id))
        return (
            day is not None
            and self.newest_day is not None
            and day > (self.newest_day - self.window)
        )

    def producer_outcome(self, producer_id: int, seq: int) -> IngestReply | str | None:
        history = self.producers.get(producer_id, [])
        recent = history[-limits.producer_results_cached_max :]
        for s, reply in recent:
            if s == seq:
                return reply
        return SEEN if any(s == seq for s, _ in history) else None

    # ------------------------------------------------------------------ reads

    def _metric_for_read(
        self, code: str, filters: tuple[tuple[str, str], ...], group_by: tuple[str, ...]
    ) -> Metric:
        metric = self.live.get(code)
        if metric is None:
            raise errors.UnknownMetricError(code)
        dims = {d.key: set(d.values) for d in metric.schema.filters}
        for key, value in filters:
            if key not in dims or value not in dims[key]:
                raise errors.InvalidRequestError(f"{key}={value}")
        for key in group_by:
            if key not in dims:
                raise errors.InvalidRequestError(key)
        return metric

    def _groups(
        self,
        code: str,
        account: int,
        start: int,
        end: int,
        filters: tuple[tuple[str, str], ...],
        group_by: tuple[str, ...],
    ) -> tuple[dict[Group, AggValue], int]:
        metric = self._metric_for_read(code, filters, group_by)
        if start >= end:
            raise errors.InvalidRequestError("empty range")
        s = metric.schema
        pieces = [
            (ps, pe, max(start, ps), min(end, pe))
            for ps, pe in periods.periods_covering(
                s.period_type, start, end, s.period_seconds, s.billing_cycle_day
            )
            if pe > self.cutoff
        ]
        flags = 0
        for ps, _, _, _ in pieces:
            fired = self.fired.get((metric.ident, account, ps), {})
            for bit, th in enumerate(s.thresholds):
                if th.code in fired:
                    flags |= 1 << bit

        def match(cell: Group) -> Group | None:
            if not set(filters) <= set(cell):
                return None
            return tuple(p for p in cell if p[0] in group_by)

        mine = [e for e in self.events if e.counted and e.metric is metric and e.account == account]
        if s.agg_type == AggType.COUNT_UNIQUE:
            union: dict[Group, set[int]] = {}
            for ps, _, a, b in pieces:
                if s.recurring:
                    ordered = sorted(
                        (e for e in mine if e.period[0] < ps or (e.period[0] == ps and e.ts < b)),
                        key=lambda e: (e.period[0], e.offset),
                    )
                else:
                    ordered = [e for e in mine if e.period[0] == ps and a <= e.ts < b]
                for group, members in unique_fold(ordered, match).items():
                    union.setdefault(group, set()).update(members)
            return {
                g: AggValue(count=len(m), alert_flags=flags) for g, m in union.items() if m
            }, flags
        inside: dict[Group, list[Ev]] = {}
        for ps, _, a, b in pieces:
            for e in mine:
                key = match(e.cell)
                if e.period[0] == ps and a <= e.ts < b and key is not None:
                    inside.setdefault(key, []).append(e)
        carried: dict[Group, Ev | None] = {}
        if s.agg_type == AggType.LATEST and s.recurring and pieces:
            for e in mine:
                key = match(e.cell)
                if key is not None and e.ts < end:
                    carried[key] = latest_of([x for x in (carried.get(key), e) if x])
        out: dict[Group, AggValue] = {}
        for group in set(inside) | set(carried):
            evs = inside.get(group, [])
            newest = carried.get(group) or latest_of(evs)
            out[group] = AggValue(
                sum=sum(e.value for e in evs),
                count=len(evs),
                max=max((e.value for e in evs), default=None),
                last_value=newest.value if newest else None,
                last_timestamp=periods.from_us(newest.ts) if newest else None,
                alert_flags=flags,
            )
        return out, flags

    def query(
        self,
        code: str,
        account: int,
        start: int,
        end: int,
        filters: tuple[tuple[str, str], ...] = (),
    ) -> AggValue:
        groups, flags = self._groups(code, account, start, end, filters, ())
        return groups.get((), AggValue(alert_flags=flags))

    def query_realtime(self, code: str, account: int, now: int) -> tuple[AggValue, int, int]:
        metric = self._metric_for_read(code, (), ())
        start, end = metric.period(now)
        return self.query(code, account, start, end), start, end

    def breakdown(
        self,
        code: str,
        account: int,
        start: int,
        end: int,
        group_by: tuple[str, ...],
        filters: tuple[tuple[str, str], ...] = (),
    ) -> tuple[tuple[Group, AggValue], ...]:
        groups, _ = self._groups(code, account, start, end, filters, group_by)
        return tuple(
            (g, v) for g, v in sorted(groups.items()) if v.count > 0 or v.last_value is not None
        )

    def list_events(
        self, account: int, since: int, until: int, after: int, limit: int
    ) -> tuple[tuple[StoredEvent, ...], int | None]:
        visible = [
            e
            for e in self.events
            if e.counted
            and e.period[1] > self.cutoff
            and e.account == account
            and since <= e.ts < until
            and e.offset > after
        ]
        page = [
            StoredEvent(
                account_id=e.account,
                metric_code=e.metric.schema.code,
                value=e.value,
                timestamp_us=e.ts,
                operation_type=e.op,
                properties=e.props,
                event_id=e.event_id,
                offset=e.offset,
            )
            for e in visible[:limit]
        ]
        return tuple(page), (page[-1].offset if len(visible) > limit else None)

    def list_alerts(
        self, account: int | None, after: int, limit: int
    ) -> tuple[tuple[StoredAlert, ...], int | None]:
        """``account`` None: every account (a subscriber's catch-up)."""
        visible = [
            a
            for a in self.alerts
            if account in (None, a.account_id)
            and a.cursor > after
            and a.triggered_at_us >= self.cutoff
        ]
        page = visible[:limit]
        return tuple(page), (page[-1].cursor if len(visible) > limit else None)
