"""A plain model of one partition, computed from its committed log (docs/semantics.md).

It keeps every event it was given in lists and recomputes each answer from them, with no
per-period records and no incremental sets (the definitions of docs/semantics.md written out,
like ``tests/partition_model.py`` but kept inside ``unimeter.sim``). It is fed the log's
committed entries in index order and answers *as of any index it has applied*: every event,
schema and alert remembers the index it came with, so the checkers can hold each replica to
the model at that replica's own applied index.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from unimeter import errors, periods
from unimeter.model import AggType, AggValue, MetricSchema, OperationType
from unimeter.state.entries import BatchEntry, Entry, SchemaEntry
from unimeter.wire.messages import StoredAlert, StoredEvent

DAY = periods.US_PER_DAY
TS_MIN = periods.to_us(periods.EPOCH.replace(year=2))
Group = tuple[tuple[str, str], ...]
Match = Callable[[Group], Group | None]


@dataclass(slots=True)
class Ev:
    index: int  # the log index of its entry
    offset: int
    ident: int  # the metric instance (one life of a code)
    code: str
    account: int
    ts: int
    value: int
    op: int
    props: dict[str, str]
    event_id: str | None
    cell: Group  # decided with the dimensions current when the event was applied
    period: tuple[int, int]
    counted: bool  # False: its period had already expired when it was applied


def _latest(a: Ev | None, b: Ev) -> Ev:
    return b if a is None or (b.ts, b.offset) >= (a.ts, a.offset) else a


def _fold(sets: dict[Group, set[int]], e: Ev, match: Match) -> None:
    if e.op == OperationType.REMOVE:
        for members in sets.values():
            members.discard(e.value)
        return
    group = match(e.cell)
    if group is not None:
        sets.setdefault(group, set()).add(e.value)


def _shape(schema: MetricSchema) -> tuple[int, int, int, int]:
    return (schema.agg_type, schema.period_type, schema.period_seconds, schema.billing_cycle_day)


def period_of(schema: MetricSchema, ts: int) -> tuple[int, int]:
    return periods.period_bounds(
        schema.period_type, ts, schema.period_seconds, schema.billing_cycle_day
    )


class PartitionModel:
    def __init__(self, partition: int, retention_days: int = 400) -> None:
        self.partition = partition
        self.retention_days = retention_days
        self.applied = 0
        self.idents = 0
        self._generation: dict[int, int] = {}  # ident -> catalog generation
        self.live: dict[str, tuple[int, MetricSchema]] = {}  # code -> (ident, schema)
        self._live_at: list[int] = [0]  # indexes of schema entries, with the map after each
        self._live_hist: list[dict[str, tuple[int, MetricSchema]]] = [{}]
        self.events: list[Ev] = []
        self._by: dict[tuple[int, int], list[Ev]] = {}  # (ident, account) -> events
        self._fired: dict[tuple[int, int, int], dict[str, int]] = {}  # (ident, acct, start)
        self._fired_log: dict[tuple[int, int, int], list[tuple[int, str]]] = {}
        self.alerts: list[tuple[int, StoredAlert]] = []  # (index, alert), cursor order
        self._alert_index: list[int] = []
        self._day_at: list[int] = [0]
        self._days: list[int | None] = [None]
        self.newest_day: int | None = None

    # ------------------------------------------------------------------ apply

    def apply(self, index: int, entry: Entry | None) -> None:
        """Entry ``index`` of the committed log (None: a leader's no-op)."""
        assert index == self.applied + 1, (index, self.applied)
        self.applied = index
        if isinstance(entry, SchemaEntry):
            self._schema(index, entry)
        elif isinstance(entry, BatchEntry):
            self._batch(index, entry)

    def _schema(self, index: int, entry: SchemaEntry) -> None:
        new: dict[str, tuple[int, MetricSchema]] = {}
        for lm in entry.metrics:
            code = lm.schema.code
            old = self.live.get(code)
            same = old is not None and self._generation[old[0]] == lm.generation
            if old is not None and same and _shape(old[1]) == _shape(lm.schema):
                new[code] = (old[0], lm.schema)
            else:
                self.idents += 1
                self._generation[self.idents] = lm.generation
                new[code] = (self.idents, lm.schema)
        self.live = new
        self._live_at.append(index)
        self._live_hist.append(dict(new))

    def _batch(self, index: int, entry: BatchEntry) -> None:
        day = entry.stamp_us // DAY
        if self.newest_day is None or day > self.newest_day:
            self.newest_day = day
            self._day_at.append(index)
            self._days.append(day)
        cutoff = self._cutoff(self.newest_day)
        for logged in entry.stored_events():
            code = logged.metric_code
            ident, schema = self.live[code]
            account = logged.account_id
            props = dict(logged.properties or {})
            ts = logged.timestamp_us
            period = period_of(schema, ts)
            cell = tuple(
                sorted(
                    (d.key, props[d.key])
                    for d in schema.filters
                    if props.get(d.key) in tuple(d.values)
                )
            )
            e = Ev(
                index=index,
                offset=self.partition * 2**48 + len(self.events),
                ident=ident,
                code=code,
                account=account,
                ts=ts,
                value=logged.value,
                op=logged.operation_type,
                props=props,
                event_id=logged.event_id,
                cell=cell,
                period=period,
                counted=period[1] > cutoff,
            )
            self.events.append(e)
            self._by.setdefault((ident, account), []).append(e)
            if e.counted:
                self._thresholds(index, e, schema, entry.stamp_us)

    def _cutoff(self, newest_day: int | None) -> int:
        if newest_day is None:
            return TS_MIN
        return max(TS_MIN, (newest_day - self.retention_days) * DAY)

    def _period_total(self, e: Ev, schema: MetricSchema) -> int:
        mine = [x for x in self._by[(e.ident, e.account)] if x.counted]
        if schema.agg_type == AggType.COUNT_UNIQUE:
            if schema.recurring:
                ordered = sorted(
                    (x for x in mine if x.period[0] <= e.period[0]),
                    key=lambda x: (x.period[0], x.offset),
                )
            else:
                ordered = [x for x in mine if x.period == e.period]
            sets: dict[Group, set[int]] = {}
            for x in ordered:
                _fold(sets, x, lambda cell: ())
            return len(sets.get((), ()))
        here = [x for x in mine if x.period == e.period]
        if schema.agg_type == AggType.COUNT:
            return len(here)
        if schema.agg_type == AggType.SUM:
            return sum(x.value for x in here)
        if schema.agg_type == AggType.MAX:
            return max(x.value for x in here)
        newest: Ev | None = None
        for x in here:
            newest = _latest(newest, x)
        assert newest is not None
        return newest.value

    def _thresholds(self, index: int, e: Ev, schema: MetricSchema, stamp_us: int) -> None:
        if not schema.thresholds:
            return
        total = self._period_total(e, schema)
        key = (e.ident, e.account, e.period[0])
        fired = self._fired.setdefault(key, {})
        for th in schema.thresholds:
            if th.recurring:
                multiple = total // th.value if total >= th.value else 0
                if multiple < 1 or multiple <= fired.get(th.code, 0):
                    continue
                fired[th.code] = multiple
            else:
                if total < th.value or th.code in fired:
                    continue
                fired[th.code] = 1
            self._fired_log.setdefault(key, []).append((index, th.code))
            alert = StoredAlert(
                account_id=e.account,
                metric_code=e.code,
                threshold_code=th.code,
                value_at_cross=total,
                triggered_at_us=stamp_us,
                cursor=len(self.alerts),
            )
            self.alerts.append((index, alert))
            self._alert_index.append(index)

    # ------------------------------------------------------------------ as of an index

    def live_at(self, at: int) -> dict[str, tuple[int, MetricSchema]]:
        return self._live_hist[bisect.bisect_right(self._live_at, at) - 1]

    def cutoff_at(self, at: int) -> int:
        return self._cutoff(self._days[bisect.bisect_right(self._day_at, at) - 1])

    def alerts_between(self, after: int, upto: int) -> list[StoredAlert]:
        """The alerts fired by entries ``after + 1 .. upto``, in cursor order."""
        lo = bisect.bisect_right(self._alert_index, after)
        hi = bisect.bisect_right(self._alert_index, upto)
        return [alert for _, alert in self.alerts[lo:hi]]

    def _fired_at(self, key: tuple[int, int, int], at: int) -> set[str]:
        return {code for index, code in self._fired_log.get(key, ()) if index <= at}

    # ------------------------------------------------------------------ reads

    def _metric(
        self, code: str, filters: Iterable[tuple[str, str]], group_by: Iterable[str], at: int
    ) -> tuple[int, MetricSchema]:
        found = self.live_at(at).get(code)
        if found is None:
            raise errors.UnknownMetricError(code)
        dims = {d.key: set(d.values) for d in found[1].filters}
        for key, value in filters:
            if key not in dims or value not in dims[key]:
                raise errors.InvalidRequestError(f"{key}={value}")
        for key in group_by:
            if key not in dims:
                raise errors.InvalidRequestError(key)
        return found

    def _groups(
        self,
        code: str,
        account: int,
        start: int,
        end: int,
        filters: tuple[tuple[str, str], ...],
        group_by: tuple[str, ...],
        at: int,
    ) -> tuple[dict[Group, AggValue], int]:
        ident, s = self._metric(code, filters, group_by, at)
        if start >= end:
            raise errors.InvalidRequestError("empty range")
        cutoff = self.cutoff_at(at)
        pieces = [
            (ps, pe, max(start, ps), min(end, pe))
            for ps, pe in periods.periods_covering(
                s.period_type, start, end, s.period_seconds, s.billing_cycle_day
            )
            if pe > cutoff
        ]
        flags = 0
        for ps, _, _, _ in pieces:
            fired = self._fired_at((ident, account, ps), at)
            for bit, th in enumerate(s.thresholds):
                if th.code in fired:
                    flags |= 1 << bit

        def match(cell: Group) -> Group | None:
            if not set(filters) <= set(cell):
                return None
            return tuple(p for p in cell if p[0] in group_by)

        mine = [e for e in self._by.get((ident, account), ()) if e.index <= at and e.counted]
        by_period: dict[int, list[Ev]] = {}
        for e in mine:
            by_period.setdefault(e.period[0], []).append(e)
        if s.agg_type == AggType.COUNT_UNIQUE:
            union = self._unique(mine, by_period, pieces, match, s.recurring)
            return {
                g: AggValue(count=len(m), alert_flags=flags) for g, m in union.items() if m
            }, flags
        inside: dict[Group, list[Ev]] = {}
        for ps, _, a, b in pieces:
            for e in by_period.get(ps, ()):
                group = match(e.cell)
                if a <= e.ts < b and group is not None:
                    inside.setdefault(group, []).append(e)
        carried: dict[Group, Ev] = {}
        if s.agg_type == AggType.LATEST and s.recurring and pieces:
            for e in mine:
                group = match(e.cell)
                if group is not None and e.ts < end:
                    carried[group] = _latest(carried.get(group), e)
        out: dict[Group, AggValue] = {}
        for group in set(inside) | set(carried):
            evs = inside.get(group, [])
            newest = carried.get(group)
            if newest is None:
                for e in evs:
                    newest = _latest(newest, e)
            out[group] = AggValue(
                sum=sum(e.value for e in evs),
                count=len(evs),
                max=max((e.value for e in evs), default=None),
                last_value=newest.value if newest else None,
                last_timestamp=periods.from_us(newest.ts) if newest else None,
                alert_flags=flags,
            )
        return out, flags

    def _unique(
        self,
        mine: list[Ev],
        by_period: dict[int, list[Ev]],
        pieces: list[tuple[int, int, int, int]],
        match: Match,
        recurring: bool,
    ) -> dict[Group, set[int]]:
        union: dict[Group, set[int]] = {}
        if not recurring:
            for ps, _, a, b in pieces:
                sets: dict[Group, set[int]] = {}
                for e in by_period.get(ps, ()):
                    if a <= e.ts < b:
                        _fold(sets, e, match)
                for group, members in sets.items():
                    union.setdefault(group, set()).update(members)
            return union
        # A piece's set: every earlier period replayed (time order, each in log order), then
        # the piece's period up to the piece's end.
        ordered = sorted(mine, key=lambda e: (e.period[0], e.offset))
        running: dict[Group, set[int]] = {}
        pos = 0
        for ps, _, _, b in pieces:
            while pos < len(ordered) and ordered[pos].period[0] < ps:
                _fold(running, ordered[pos], match)
                pos += 1
            sets = {g: set(m) for g, m in running.items()}
            for e in by_period.get(ps, ()):
                if e.ts < b:
                    _fold(sets, e, match)
            for group, members in sets.items():
                union.setdefault(group, set()).update(members)
        return union

    def query(
        self,
        code: str,
        account: int,
        start: int,
        end: int,
        filters: tuple[tuple[str, str], ...],
        at: int,
    ) -> AggValue:
        groups, flags = self._groups(code, account, start, end, filters, (), at)
        return groups.get((), AggValue(alert_flags=flags))

    def query_realtime(
        self, code: str, account: int, now: int, at: int
    ) -> tuple[AggValue, int, int]:
        _, schema = self._metric(code, (), (), at)
        start, end = period_of(schema, now)
        return self.query(code, account, start, end, (), at), start, end

    def breakdown(
        self,
        code: str,
        account: int,
        start: int,
        end: int,
        group_by: tuple[str, ...],
        filters: tuple[tuple[str, str], ...],
        at: int,
    ) -> tuple[tuple[Group, AggValue], ...]:
        groups, _ = self._groups(code, account, start, end, filters, group_by, at)
        return tuple(
            (g, v) for g, v in sorted(groups.items()) if v.count > 0 or v.last_value is not None
        )

    def list_events(
        self, account: int, since: int, until: int, after: int, limit: int, at: int
    ) -> tuple[tuple[StoredEvent, ...], int | None]:
        cutoff = self.cutoff_at(at)
        visible = [
            e
            for e in self.events
            if e.index <= at
            and e.counted
            and e.period[1] > cutoff
            and e.account == account
            and since <= e.ts < until
            and e.offset > after
        ]
        page = tuple(
            StoredEvent(
                account_id=e.account,
                metric_code=e.code,
                value=e.value,
                timestamp_us=e.ts,
                operation_type=e.op,
                properties=e.props,
                event_id=e.event_id,
                offset=e.offset,
            )
            for e in visible[:limit]
        )
        return page, (page[-1].offset if len(visible) > limit else None)

    def alerts_fired_by(self, at: int) -> int:
        """How many alerts the entries up to ``at`` fired: the next alert's cursor."""
        return bisect.bisect_right(self._alert_index, at)

    def list_alerts(
        self, account: int | None, after: int, limit: int, at: int
    ) -> tuple[tuple[StoredAlert, ...], int | None]:
        """``account`` None: every account (a live subscriber's catch-up)."""
        cutoff = self.cutoff_at(at)
        visible = [
            a
            for index, a in self.alerts
            if index <= at
            and account in (None, a.account_id)
            and a.cursor > after
            and a.triggered_at_us >= cutoff
        ]
        page = tuple(visible[:limit])
        return page, (page[-1].cursor if len(visible) > limit else None)
