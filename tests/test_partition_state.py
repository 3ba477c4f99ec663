"""PartitionState against the naive model (tests/partition_model.py), plus one test per rule.

The state machine drives random schemas (every aggregation and period type, dimensions,
thresholds, recurrence, updates, new generations and deletions) and random batches that obey
the leader's contract, and compares every read, lookup and apply result with the model, on the
live state and on states restored from snapshots along the way.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.partition_model import SEEN, Model
from unimeter import errors, periods
from unimeter.actors.entries import BatchEntry, LiveMetric, SchemaEntry
from unimeter.actors.partition_state import ApplyResult, PartitionState, Seen
from unimeter.model import (
    AggType,
    AlertThreshold,
    DimensionFilter,
    MetricSchema,
    OperationType,
    PeriodType,
)
from unimeter.wire.messages import EventBatch

H = 6 * 3600 * 1_000_000  # the grid most generated times sit on
DAY = periods.US_PER_DAY
T0 = periods.to_us(datetime(2024, 1, 27, tzinfo=UTC))
CODES = ("m0", "m1")
ACCOUNTS = (1, 2)
DIMS = {"region": ("eu", "us", "ap"), "tier": ("free", "pro")}
PROP_CHOICES = {"region": ("eu", "us", "ap", "mars"), "tier": ("free", "pro", "gold"), "x": ("1",)}
Draw = Callable[..., Any]  # st.DrawFn or DataObject.draw
ADD, REMOVE, NONE = int(OperationType.ADD), int(OperationType.REMOVE), int(OperationType.NONE)


class E(NamedTuple):
    metric: str
    account: int
    value: int
    ts: int
    op: int = 0
    props: dict[str, str] | None = None
    event_id: str | None = None


def live(code: str, generation: int = 1, **kwargs: Any) -> LiveMetric:
    return LiveMetric(generation=generation, schema=MetricSchema(code=code, **kwargs).normalized())


def schema_entry(version: int, *metrics: LiveMetric) -> SchemaEntry:
    return SchemaEntry(
        catalog_version=version, metrics=tuple(sorted(metrics, key=lambda m: m.schema.code))
    )


def batch_entry(
    stamp: int, events: list[E], producer: tuple[int, int] = (0, 0), duplicates: int = 0
) -> BatchEntry:
    codes = tuple(sorted({e.metric for e in events}))
    batch = EventBatch(
        metric_codes=codes,
        metric_index=array("B", [codes.index(e.metric) for e in events]),
        account_ids=array("Q", [e.account for e in events]),
        values=array("q", [e.value for e in events]),
        timestamps=array("q", [e.ts for e in events]),
        operation_types=array("B", [e.op for e in events]) if any(e.op for e in events) else None,
        properties=tuple(e.props for e in events) if any(e.props for e in events) else None,
        event_ids=tuple(e.event_id for e in events) if any(e.event_id for e in events) else None,
    )
    return BatchEntry(
        producer_id=producer[0],
        seq=producer[1],
        stamp_us=stamp,
        batch=batch,
        n_duplicates=duplicates,
        n_rejected=0,
        rejected=(),
    )


def outcome(call: Callable[..., Any], *args: Any) -> Any:
    """A read's answer, or the type of the error it raised, so both sides compare with ==."""
    try:
        result = call(*args)
    except errors.UnimeterError as exc:
        return type(exc)
    return SEEN if isinstance(result, Seen) else result


# --------------------------------------------------------------------------- strategies


@st.composite
def schemas(draw: st.DrawFn, code: str) -> MetricSchema:
    agg = draw(st.sampled_from(AggType))
    period = draw(st.sampled_from(PeriodType))
    keys = draw(st.lists(st.sampled_from(sorted(DIMS)), unique=True, max_size=2))
    filters = tuple(
        DimensionFilter(k, tuple(draw(st.lists(st.sampled_from(DIMS[k]), min_size=1, unique=True))))
        for k in keys
    )
    low = 1 if agg in (AggType.COUNT, AggType.COUNT_UNIQUE) else -5
    thresholds = tuple(
        AlertThreshold(f"t{i}", v, r and v > 0)
        for i, v, r in draw(
            st.lists(
                st.tuples(st.integers(0, 3), st.integers(low, 12), st.booleans()),
                max_size=3,
                unique_by=lambda t: t[0],
            )
        )
    )
    return MetricSchema(
        code=code,
        agg_type=agg,
        period_type=period,
        billing_cycle_day=draw(st.sampled_from([1, 15, 28])),
        period_seconds=draw(st.sampled_from([6 * 3600, 2 * 86400, 10 * 86400])),
        recurring=draw(st.booleans()),
        filters=filters,
        thresholds=thresholds,
    ).normalized()


def mutable_update(draw: Draw, schema: MetricSchema) -> MetricSchema:
    """Same code, aggregation and period: new dimensions, thresholds, recurrence."""
    other = draw(schemas(schema.code))
    return MetricSchema(
        code=schema.code,
        agg_type=schema.agg_type,
        period_type=schema.period_type,
        billing_cycle_day=schema.billing_cycle_day,
        period_seconds=schema.period_seconds,
        recurring=other.recurring,
        filters=other.filters,
        thresholds=other.thresholds,
    ).normalized()


def ranges(draw: Draw, model: Model, code: str) -> tuple[int, int]:
    """A query range; most start or end right at, before or after a stored event or at a
    period bound, where off-by-one mistakes live."""
    metric = model.live.get(code)
    stamps = [e.ts for e in model.events if e.metric is metric] if metric else []
    if not stamps or draw(st.integers(0, 4)) == 0:
        start = T0 + draw(st.integers(-20, 80)) * H + draw(st.sampled_from([0, 0, 1]))
        return start, start + draw(st.integers(1, 60)) * H + draw(st.sampled_from([0, -1, 1]))
    assert metric is not None
    anchor = draw(st.sampled_from(stamps))
    p_start, p_end = metric.period(anchor)
    points = [
        anchor - 1,
        anchor,
        anchor + 1,
        p_start,
        p_end,
        anchor - H,
        anchor + DAY,
        draw(st.sampled_from(stamps)),
        draw(st.sampled_from(stamps)) + 1,
    ]
    start, end = sorted(
        draw(st.lists(st.sampled_from(points), min_size=2, max_size=2, unique=True))
    )
    return start, end


def filters_for(draw: Draw, model: Model, code: str) -> tuple[tuple[str, str], ...]:
    metric = model.live.get(code)
    declared = [(d.key, v) for d in metric.schema.filters for v in d.values] if metric else []
    pool = [*declared, ("region", "mars")] if draw(st.integers(0, 9)) == 0 else declared
    return tuple(draw(st.lists(st.sampled_from(pool), max_size=2, unique=True))) if pool else ()


class PartitionMachine(RuleBasedStateMachine):
    @initialize(
        retention=st.sampled_from([2, 5, 400]),
        window=st.sampled_from([1, 3, 35]),
        first=st.tuples(*(schemas(code) for code in CODES)),
    )
    def setup(self, retention: int, window: int, first: tuple[MetricSchema, ...]) -> None:
        self.model = Model(5, retention, window)
        self.states = [PartitionState(5, retention_days=retention, dedup_window_days=window)]
        self.index = 0
        self.stamp = T0
        self.generations = dict.fromkeys(CODES, 1)
        self.apply(schema_entry(1, *(LiveMetric(generation=1, schema=s) for s in first)))

    def apply(self, entry: SchemaEntry | BatchEntry) -> None:
        self.index += 1
        first, last, alerts = self.model.apply(self.index, entry)
        for state in self.states:
            result = state.apply(self.index, entry)
            assert (result.first_offset, result.last_offset) == (first, last)
            assert list(result.alerts) == alerts

    @rule(data=st.data(), really=st.integers(0, 2))
    def change_schema(self, data: st.DataObject, really: int) -> None:
        if not really:
            return  # schema changes are rarer than the other steps, so data can pile up
        metrics = []
        for code in CODES:
            current = self.model.live.get(code)
            action = data.draw(st.sampled_from(["keep", "keep", "update", "update", "new", "drop"]))
            if action == "drop" or (current is None and action == "keep"):
                continue
            if current is not None and action in ("keep", "update"):
                schema = current.schema
                if action == "update":
                    schema = mutable_update(data.draw, schema)
                metrics.append(LiveMetric(generation=current.generation, schema=schema))
            else:
                self.generations[code] = self.model.catalog_version + 1
                schema = data.draw(schemas(code))
                metrics.append(LiveMetric(generation=self.generations[code], schema=schema))
        self.apply(schema_entry(self.model.catalog_version + 1, *metrics))

    @rule(data=st.data())
    def ingest(self, data: st.DataObject) -> None:
        self.stamp += data.draw(st.integers(-4, 12)) * H + data.draw(st.integers(0, 3))
        retention = self.model.retention_days
        events: list[E] = []
        codes = sorted(self.model.live)
        for _ in range(data.draw(st.integers(0, 10)) if codes else 0):
            code = data.draw(st.sampled_from(codes))
            account = data.draw(st.sampled_from(ACCOUNTS))
            unique = self.model.live[code].schema.agg_type == AggType.COUNT_UNIQUE
            back = data.draw(st.integers(0, 4 * min(retention, 8)) | st.integers(0, 2))
            ts = self.stamp - back * H + data.draw(st.integers(0, 1))
            event_id = data.draw(st.sampled_from([None, None, "a", "b", "c", "d"]))
            if event_id is not None and (
                self.model.event_id_seen(code, account, event_id)
                or any(
                    (e.metric, e.account, e.event_id) == (code, account, event_id) for e in events
                )
            ):
                event_id = None
            props = data.draw(
                st.dictionaries(
                    st.sampled_from(sorted(PROP_CHOICES)),
                    st.sampled_from(["eu", "us", "ap", "mars", "free", "pro", "1"]),
                    max_size=3,
                )
            )
            events.append(
                E(
                    code,
                    account,
                    data.draw(st.integers(0, 6) if unique else st.integers(-5, 20)),
                    ts,
                    data.draw(st.sampled_from([ADD, ADD, NONE, REMOVE])),
                    props or None,
                    event_id,
                )
            )
        pid = data.draw(st.sampled_from([0, 0, 1, 2]))
        seq = data.draw(st.integers(1, 8))
        if pid and self.model.producer_outcome(pid, seq) is not None:
            pid = 0
        self.apply(batch_entry(self.stamp, events, (pid, seq), data.draw(st.integers(0, 2))))

    @rule()
    def snapshot_round_trip(self) -> None:
        restored = PartitionState.from_snapshot(self.states[0].snapshot())
        self.states = [*self.states, restored][-3:]

    def check(self, method: str, *args: Any) -> None:
        """Call a read on the model and on every state: same answer or same error type."""
        expected = outcome(getattr(self.model, method), *args)
        for state in self.states:
            assert outcome(getattr(state, method), *args) == expected, (method, args)

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        for code in CODES:
            account = data.draw(st.sampled_from(ACCOUNTS))
            for _ in range(2):
                start, end = ranges(data.draw, self.model, code)
                filters = filters_for(data.draw, self.model, code)
                self.check("query", code, account, start, end, filters)
            start, end = ranges(data.draw, self.model, code)
            filters = filters_for(data.draw, self.model, code)
            group_by = tuple(data.draw(st.lists(st.sampled_from(["region", "tier"]), unique=True)))
            self.check("breakdown", code, account, start, end, group_by, filters)
            now = self.stamp + data.draw(st.integers(-8, 2)) * H
            self.check("query_realtime", code, account, now)

    @rule(data=st.data(), account=st.sampled_from(ACCOUNTS), limit=st.integers(1, 4))
    def read_pages(self, data: st.DataObject, account: int, limit: int) -> None:
        since, until = ranges(data.draw, self.model, data.draw(st.sampled_from(CODES)))
        if data.draw(st.booleans()):
            since, until = 0, 2**62
        cursor: int | None = -1
        while cursor is not None:
            after = cursor
            page = self.model.list_events(account, since, until, after, limit)
            for state in self.states:
                assert state.list_events(account, since, until, after, limit) == page
            cursor = page[1]
        cursor = -1
        while cursor is not None:
            after = cursor
            alerts = self.model.list_alerts(account, after, limit)
            for state in self.states:
                assert state.list_alerts(account, after, limit) == alerts
            cursor = alerts[1]

    @invariant()
    def reads_around_recent_events_agree(self) -> None:
        """Queries bounded exactly at, just before and after the newest events of each metric,
        and at their periods' bounds, where edge and tie mistakes show."""
        for code in CODES:
            metric = self.model.live.get(code)
            if metric is None:
                continue
            recent = [e for e in self.model.events if e.metric is metric][-3:]
            points = {T0 - 30 * DAY, self.stamp + DAY}
            for e in recent:
                points |= {e.ts, e.ts + 1, *metric.period(e.ts)}
            ordered = sorted(points)
            pairs = set(itertools.pairwise(ordered))
            pairs |= {(a, b) for a, b in zip(ordered, ordered[2:], strict=False)}
            pairs |= {(ordered[0], p) for p in ordered[1:]}
            first_pair = [(d.key, d.values[0]) for d in metric.schema.filters][:1]
            for account in ACCOUNTS:
                for start, end in sorted(pairs):
                    self.check("query", code, account, start, end)
                    if first_pair:
                        self.check("query", code, account, start, end, tuple(first_pair))
                keys = tuple(d.key for d in metric.schema.filters)
                self.check("breakdown", code, account, ordered[0], ordered[-1], keys)

    @invariant()
    def lookups_agree(self) -> None:
        for state in self.states:
            assert state.applied_index == self.model.applied_index
            assert state.catalog_version == self.model.catalog_version
            for code in CODES:
                assert state.metric(code) == self.model.metric(code)
                for account in ACCOUNTS[:2]:
                    for eid in "abcd":
                        seen = self.model.event_id_seen(code, account, eid)
                        assert state.event_id_seen(code, account, eid) == seen
            for pid in (1, 2):
                for seq in range(1, 9):
                    expected = self.model.producer_outcome(pid, seq)
                    assert outcome(state.producer_outcome, pid, seq) == expected


PartitionMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_partition_state_matches_model = PartitionMachine.TestCase


# --------------------------------------------------------------------------- one test per rule


class Partition:
    """A PartitionState with a log cursor, for readable examples."""

    def __init__(self, *metrics: LiveMetric, retention_days: int = 400, window: int = 35) -> None:
        self.state = PartitionState(2, retention_days=retention_days, dedup_window_days=window)
        self.index = 0
        self.version = 0
        if metrics:
            self.schema(*metrics)

    def schema(self, *metrics: LiveMetric) -> None:
        self.version += 1
        self.index += 1
        self.state.apply(self.index, schema_entry(self.version, *metrics))

    def ingest(
        self, *events: E, stamp: int = T0 + 40 * DAY, producer: tuple[int, int] = (0, 0)
    ) -> ApplyResult:
        self.index += 1
        return self.state.apply(self.index, batch_entry(stamp, list(events), producer))


def ev(metric: str, value: int = 1, at: int = 0, **kwargs: Any) -> E:
    """An event for account 1 at T0 + at microseconds."""
    return E(metric, kwargs.pop("account", 1), value, T0 + at, **kwargs)


FAR = (T0 - 400 * DAY, T0 + 400 * DAY)  # a range that covers every example's periods


def test_offsets_are_partition_high_bits_plus_a_count_of_stored_events() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT))
    first = p.ingest(ev("c"), ev("c"))
    second = p.ingest(ev("c"))
    assert (first.first_offset, first.last_offset) == (2 << 48, (2 << 48) + 1)
    assert (second.first_offset, second.last_offset) == ((2 << 48) + 2, (2 << 48) + 2)
    assert p.ingest().first_offset is None


def test_apply_takes_log_indexes_in_order() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT))
    with pytest.raises(AssertionError):
        p.state.apply(5, batch_entry(T0, []))


def test_every_non_unique_aggregate_keeps_count_sum_max_and_latest() -> None:
    for agg in (AggType.COUNT, AggType.SUM, AggType.MAX, AggType.LATEST):
        p = Partition(live("m", agg_type=agg))
        p.ingest(ev("m", 5, at=2), ev("m", 9, at=1), ev("m", -3, at=3))
        value = p.state.query("m", 1, *FAR)
        assert (value.count, value.sum, value.max, value.last_value) == (3, 11, 9, -3)
        assert value.last_timestamp == periods.from_us(T0 + 3)


def test_sums_are_exact_beyond_64_bits() -> None:
    p = Partition(live("s", agg_type=AggType.SUM))
    p.ingest(*[ev("s", 2**63 - 1) for _ in range(4)])
    assert p.state.query("s", 1, *FAR).sum == 4 * (2**63 - 1)


def test_latest_ties_on_timestamp_go_to_the_later_event_in_the_log() -> None:
    p = Partition(live("l", agg_type=AggType.LATEST))
    p.ingest(ev("l", 1, at=7), ev("l", 2, at=7))
    p.ingest(ev("l", 3, at=7), ev("l", 4, at=6))
    assert p.state.query("l", 1, *FAR).last_value == 3


def test_calendar_periods_start_on_the_billing_cycle_day() -> None:
    p = Partition(
        live("c", agg_type=AggType.COUNT, period_type=PeriodType.CALENDAR, billing_cycle_day=15)
    )
    p.ingest(ev("c", at=-DAY), ev("c", at=30 * DAY))  # Jan 26 and Feb 26 2024
    value, start, end = p.state.query_realtime("c", 1, T0)
    assert (periods.from_us(start), periods.from_us(end)) == (
        datetime(2024, 1, 15, tzinfo=UTC),
        datetime(2024, 2, 15, tzinfo=UTC),
    )
    assert value.count == 1


def test_partial_periods_are_computed_from_their_events() -> None:
    p = Partition(live("c", agg_type=AggType.SUM, period_type=PeriodType.DAY))
    p.ingest(ev("c", 1, at=H), ev("c", 10, at=2 * H), ev("c", 100, at=DAY + H))
    assert p.state.query("c", 1, T0 + H + 1, T0 + DAY + H + 1).sum == 110
    assert p.state.query("c", 1, T0, T0 + 2 * DAY).sum == 111  # two whole days
    assert p.state.query("c", 1, T0 + 2 * H, T0 + 2 * H + 1).sum == 10


def test_a_filter_on_one_key_counts_events_that_carry_more_keys() -> None:
    dims = (DimensionFilter("region", ("eu", "us")), DimensionFilter("provider", ("aws", "gcp")))
    p = Partition(live("c", agg_type=AggType.COUNT, filters=dims))
    p.ingest(
        ev("c", props={"region": "eu", "provider": "aws"}),
        ev("c", props={"region": "eu"}),
        ev("c", props={"region": "us", "provider": "aws"}),
        ev("c", props={"region": "eu", "provider": "azure"}),  # azure is not declared
    )
    assert p.state.query("c", 1, *FAR, (("region", "eu"),)).count == 3
    assert p.state.query("c", 1, *FAR, (("region", "eu"), ("provider", "aws"))).count == 1
    assert p.state.query("c", 1, *FAR).count == 4


def test_filters_and_group_by_must_name_declared_keys_and_values() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT, filters=(DimensionFilter("r", ("eu",)),)))
    for bad in ((("zone", "eu"),), (("r", "us"),)):
        with pytest.raises(errors.InvalidRequestError, match=r"zone|'us'"):
            p.state.query("c", 1, *FAR, bad)
    with pytest.raises(errors.InvalidRequestError, match="zone"):
        p.state.breakdown("c", 1, *FAR, ("zone",))
    with pytest.raises(errors.UnknownMetricError):
        p.state.query("nope", 1, *FAR)


def test_breakdown_groups_by_the_keys_events_carry() -> None:
    dims = (DimensionFilter("region", ("eu", "us")), DimensionFilter("tier", ("free", "pro")))
    p = Partition(live("s", agg_type=AggType.SUM, filters=dims))
    p.ingest(
        ev("s", 1, props={"region": "eu", "tier": "pro"}),
        ev("s", 2, props={"region": "eu"}),
        ev("s", 4, props={"tier": "free"}),
    )
    cells = dict(p.state.breakdown("s", 1, *FAR, ("region",)))
    assert {k: v.sum for k, v in cells.items()} == {(("region", "eu"),): 3, (): 4}
    cells = dict(p.state.breakdown("s", 1, *FAR, ("region", "tier"), (("region", "eu"),)))
    assert {k: v.sum for k, v in cells.items()} == {
        (("region", "eu"),): 2,
        (("region", "eu"), ("tier", "pro")): 1,
    }


def test_dimension_changes_apply_to_later_events_only() -> None:
    before = live("c", agg_type=AggType.COUNT)
    p = Partition(before)
    p.ingest(ev("c", props={"region": "eu"}))
    p.schema(live("c", agg_type=AggType.COUNT, filters=(DimensionFilter("region", ("eu",)),)))
    p.ingest(ev("c", props={"region": "eu"}))
    assert p.state.query("c", 1, *FAR).count == 2  # the aggregate stays
    assert p.state.query("c", 1, *FAR, (("region", "eu"),)).count == 1


def test_a_new_generation_is_a_new_metric_and_a_deleted_one_is_unknown() -> None:
    p = Partition(live("c", 1, agg_type=AggType.COUNT))
    p.ingest(ev("c", at=1), ev("c", at=2))
    p.schema(live("c", 2, agg_type=AggType.COUNT))
    assert p.state.query("c", 1, T0, T0 + 2).count == 0  # not even through an edge
    p.ingest(ev("c", at=1))
    assert p.state.query("c", 1, *FAR).count == 1
    p.schema()
    with pytest.raises(errors.UnknownMetricError):
        p.state.query("c", 1, *FAR)
    assert p.state.metric("c") is None
    events, _ = p.state.list_events(1, *FAR, -1, 10)
    assert [e.metric_code for e in events] == ["c", "c", "c"]  # raw events stay listable


def test_unique_counts_the_set_of_values_after_adds_and_removes() -> None:
    p = Partition(live("u", agg_type=AggType.COUNT_UNIQUE))
    p.ingest(ev("u", 7, op=ADD), ev("u", 8), ev("u", 7, op=ADD), ev("u", 8, op=REMOVE))
    value = p.state.query("u", 1, *FAR)
    assert (value.count, value.sum, value.max, value.last_value) == (1, 0, None, None)


def test_a_remove_takes_the_value_out_of_every_cell() -> None:
    dims = (DimensionFilter("r", ("eu", "us")),)
    p = Partition(live("u", agg_type=AggType.COUNT_UNIQUE, filters=dims))
    p.ingest(
        ev("u", 1, props={"r": "eu"}),
        ev("u", 1, props={"r": "us"}),
        ev("u", 1, op=REMOVE),
        ev("u", 1, props={"r": "us"}),
    )
    assert dict(p.state.breakdown("u", 1, *FAR, ("r",)))[(("r", "us"),)].count == 1
    assert p.state.query("u", 1, *FAR, (("r", "eu"),)).count == 0


def test_unique_over_several_periods_is_the_size_of_the_union() -> None:
    p = Partition(live("u", agg_type=AggType.COUNT_UNIQUE, period_type=PeriodType.DAY))
    p.ingest(ev("u", 1), ev("u", 2), ev("u", 2, at=DAY), ev("u", 3, at=DAY))
    assert p.state.query("u", 1, T0, T0 + 2 * DAY).count == 3


def test_recurring_unique_sets_carry_forward_and_late_events_flow_forward() -> None:
    p = Partition(
        live("seats", agg_type=AggType.COUNT_UNIQUE, period_type=PeriodType.DAY, recurring=True)
    )
    p.ingest(ev("seats", 1), ev("seats", 2), ev("seats", 2, at=DAY + H, op=REMOVE))

    def day(n: int) -> int:
        return p.state.query("seats", 1, T0 + n * DAY, T0 + (n + 1) * DAY).count

    assert [day(0), day(1), day(5)] == [2, 1, 1]
    p.ingest(ev("seats", 9, at=H))  # late, for day 0
    assert [day(0), day(1), day(5)] == [3, 2, 2]
    # An edge of a recurring period is the set as of the edge's end.
    assert p.state.query("seats", 1, T0 + DAY + 1, T0 + DAY + 2).count == 3  # before the remove
    assert p.state.query("seats", 1, T0 + DAY + H, T0 + DAY + H + 1).count == 2


def test_recurring_latest_carries_into_periods_without_events() -> None:
    p = Partition(live("bal", agg_type=AggType.LATEST, period_type=PeriodType.DAY, recurring=True))
    p.ingest(ev("bal", 50, at=H))
    value = p.state.query("bal", 1, T0 + 3 * DAY, T0 + 4 * DAY)
    assert (value.count, value.last_value) == (0, 50)
    assert p.state.query("bal", 1, T0 + H + 1, T0 + DAY).last_value == 50  # looks back in-period


def test_a_threshold_fires_once_per_period_when_first_reached() -> None:
    p = Partition(
        live(
            "c",
            agg_type=AggType.COUNT,
            period_type=PeriodType.DAY,
            thresholds=(AlertThreshold("t", 2),),
        )
    )
    assert p.ingest(ev("c")).alerts == ()
    fired = p.ingest(ev("c"), ev("c"), ev("c", at=DAY), ev("c", at=DAY), stamp=T0 + 5).alerts
    assert [(a.value_at_cross, a.triggered_at_us, a.cursor) for a in fired] == [
        (2, T0 + 5, 0),
        (2, T0 + 5, 1),
    ]
    assert p.state.query("c", 1, T0, T0 + DAY).alert_flags == 1


def test_a_recurring_threshold_fires_at_every_new_multiple_once_per_event() -> None:
    p = Partition(
        live("s", agg_type=AggType.SUM, thresholds=(AlertThreshold("every10", 10, recurring=True),))
    )
    fired = p.ingest(ev("s", 4), ev("s", 7), ev("s", 25), ev("s", -30), ev("s", 15)).alerts
    assert [a.value_at_cross for a in fired] == [11, 36]  # 36 jumps to 3x10: one record


def test_reordering_thresholds_keeps_fired_state_and_moves_flag_bits() -> None:
    a, b = AlertThreshold("a", 1), AlertThreshold("b", 100)
    p = Partition(live("c", agg_type=AggType.COUNT, thresholds=(a, b)))
    p.ingest(ev("c"))
    assert p.state.query("c", 1, *FAR).alert_flags == 0b01
    p.schema(live("c", agg_type=AggType.COUNT, thresholds=(b, a)))
    assert p.ingest(ev("c")).alerts == ()  # "a" does not fire again
    assert p.state.query("c", 1, *FAR).alert_flags == 0b10


def test_alerts_list_per_account_in_cursor_order_with_paging() -> None:
    p = Partition(
        live(
            "c",
            agg_type=AggType.COUNT,
            period_type=PeriodType.DAY,
            thresholds=(AlertThreshold("t", 1),),
        )
    )
    p.ingest(*[ev("c", at=n * DAY, account=1 + n % 2) for n in range(5)])
    page, cursor = p.state.list_alerts(1, -1, 2)
    assert [x.cursor for x in page] == [0, 2] and cursor == 2
    page, cursor = p.state.list_alerts(1, cursor, 2)
    assert [x.cursor for x in page] == [4] and cursor is None


def test_event_ids_are_remembered_for_the_window_of_stamp_days() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT), window=2)
    p.ingest(ev("c", event_id="x"), stamp=T0)
    assert p.state.event_id_seen("c", 1, "x")
    assert not p.state.event_id_seen("c", 2, "x") and not p.state.event_id_seen("d", 1, "x")
    p.ingest(stamp=T0 + DAY)
    assert p.state.event_id_seen("c", 1, "x")
    p.ingest(stamp=T0 + 2 * DAY)
    assert not p.state.event_id_seen("c", 1, "x")


def test_a_batch_repeating_a_stored_event_id_is_a_leader_bug() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT))
    p.ingest(ev("c", event_id="x"))
    with pytest.raises(AssertionError, match="already stored"):
        p.ingest(ev("c", event_id="x"))


def test_producer_outcomes_are_exact_while_cached_then_seen() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT))
    result = p.ingest(ev("c"), producer=(7, 3))
    reply = p.state.producer_outcome(7, 3)
    assert reply is not None and not isinstance(reply, Seen)
    assert (reply.n_stored, reply.last_offset, reply.log_index) == (1, result.last_offset, 2)
    assert p.state.producer_outcome(7, 2) is None  # out of order: 2 was never applied
    for seq in range(100, 164):
        p.ingest(producer=(7, seq))
    assert isinstance(p.state.producer_outcome(7, 3), Seen)
    assert p.state.producer_outcome(7, 163) is not None


def test_retention_drops_whole_periods_with_their_events_and_alerts() -> None:
    p = Partition(
        live(
            "c",
            agg_type=AggType.COUNT,
            period_type=PeriodType.DAY,
            thresholds=(AlertThreshold("t", 1),),
        ),
        retention_days=3,
    )
    p.ingest(ev("c", at=H), stamp=T0 + H)
    p.ingest(ev("c", at=DAY + H), stamp=T0 + DAY + H)
    p.ingest(stamp=T0 + 4 * DAY)  # cutoff: T0 + 1 day, so day 0 ends at the cutoff
    assert p.state.query("c", 1, T0, T0 + 2 * DAY).count == 1
    assert [e.timestamp_us for e in p.state.list_events(1, *FAR, -1, 9)[0]] == [T0 + DAY + H]
    assert [a.cursor for a in p.state.list_alerts(1, -1, 9)[0]] == [1]  # 0 was before cutoff
    assert p.ingest(ev("c", at=2 * H), stamp=T0 + 4 * DAY).first_offset  # expired on arrival:
    assert p.state.query("c", 1, *FAR).count == 1  # stored (it has an offset), counted nowhere


def test_list_events_pages_in_offset_order_over_every_metric() -> None:
    p = Partition(
        live("a", agg_type=AggType.COUNT, period_type=PeriodType.DAY),
        live("b", agg_type=AggType.SUM),
    )
    p.ingest(
        ev("a", at=DAY),
        ev("b", 5, at=0, props={"k": "v"}, event_id="i"),
        ev("a", at=0),
        ev("a", at=0, account=2),
    )
    page, cursor = p.state.list_events(1, T0, T0 + 2 * DAY, -1, 2)
    assert [(e.metric_code, e.offset & 0xFFFF) for e in page] == [("a", 0), ("b", 1)]
    assert (page[1].properties, page[1].event_id) == ({"k": "v"}, "i")
    page, cursor = p.state.list_events(1, T0, T0 + 2 * DAY, cursor, 2)  # type: ignore[arg-type]
    assert [e.offset & 0xFFFF for e in page] == [2] and cursor is None
    assert len(p.state.list_events(1, T0, T0 + 1, -1, 10)[0]) == 2  # [since, until)


def test_a_restored_snapshot_answers_and_applies_identically() -> None:
    p = Partition(
        live(
            "u",
            agg_type=AggType.COUNT_UNIQUE,
            recurring=True,
            filters=(DimensionFilter("r", ("eu",)),),
            thresholds=(AlertThreshold("t", 2, recurring=True),),
        ),
        live("s", agg_type=AggType.SUM),
    )
    p.ingest(
        ev("u", 1, props={"r": "eu"}, event_id="e"),
        ev("u", 2),
        ev("s", 2**70 // 2**10),
        producer=(4, 1),
    )
    twin = PartitionState.from_snapshot(p.state.snapshot())
    assert twin.snapshot() == PartitionState.from_snapshot(twin.snapshot()).snapshot()
    entry = batch_entry(T0 + 41 * DAY, [ev("u", 3), ev("u", 4, op=REMOVE)])
    assert twin.apply(3, entry) == p.state.apply(3, entry)
    for state in (p.state, twin):
        assert state.query("u", 1, *FAR, (("r", "eu"),)).count == 1
        assert state.query("u", 1, *FAR).count == 3
    assert twin.list_events(1, *FAR, -1, 9) == p.state.list_events(1, *FAR, -1, 9)
    assert twin.producer_outcome(4, 1) == p.state.producer_outcome(4, 1)
    assert twin.event_id_seen("u", 1, "e")


def test_a_shape_change_under_the_same_generation_starts_a_new_metric() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT, period_type=PeriodType.DAY))
    p.ingest(ev("c"))
    p.schema(live("c", agg_type=AggType.COUNT, period_type=PeriodType.WEEK))
    assert p.state.query("c", 1, *FAR).count == 0


def test_property_maps_of_expired_events_are_collected() -> None:
    dims = (DimensionFilter("r", ("eu",)),)
    p = Partition(
        live("c", agg_type=AggType.COUNT, filters=dims, period_type=PeriodType.DAY),
        retention_days=2,
    )
    p.ingest(*[ev("c", props={"r": "eu", "n": str(n)}) for n in range(5000)], stamp=T0)
    p.ingest(ev("c", at=2 * DAY + 1, props={"r": "eu", "keep": "me"}), stamp=T0 + 2 * DAY)
    p.ingest(ev("c", at=3 * DAY, props={"r": "eu"}), stamp=T0 + 3 * DAY)  # day 0 expires
    assert len(p.state._props.maps) < 10  # the 5000 maps of day 0 are gone
    p.ingest(ev("c", at=3 * DAY + 1, props={"r": "eu", "keep": "me"}), stamp=T0 + 3 * DAY)
    events, _ = p.state.list_events(1, *FAR, -1, 10)
    assert [e.properties for e in events] == [
        {"r": "eu", "keep": "me"},
        {"r": "eu"},
        {"r": "eu", "keep": "me"},
    ]
    assert p.state.query("c", 1, *FAR, (("r", "eu"),)).count == 3
