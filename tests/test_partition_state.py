"""PartitionState against the naive model (tests/partition_model.py).

The state machine drives random schemas (every aggregation and period type, dimensions,
thresholds, recurrence, updates, new generations and deletions) and random batches that obey
the leader's contract, and compares every read, lookup and apply result with the model, on the
live state and on states restored from snapshots along the way. A restored state must also hold
exactly what its original held (``tests/state_structure.py``), re-encode to the same bytes, and
stay equal to the live state, internals included, through every later entry. A replayed
state, which gets every entry as a restart's log replay does (its log record's bytes, decoded),
must hold byte for byte what the live state holds (its snapshot) after every entry. Examples of
each rule, one test per rule, are in tests/test_partition_state_rules.py.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.partition_helpers import ADD, DAY, NONE, REMOVE, T0, E, H, batch_entry, schema_entry
from tests.partition_model import SEEN, Model
from tests.state_structure import structure
from tests.support.examples import examples
from unimeter import errors
from unimeter.model import AggType, AlertThreshold, DimensionFilter, MetricSchema, PeriodType
from unimeter.state.entries import BatchEntry, LiveMetric, SchemaEntry
from unimeter.state.partition_state import PartitionState, Seen
from unimeter.state.reads import whole_period_wire
from unimeter.state.records import decode_entry, encode_entry
from unimeter.wire.codec import ServerCodec
from unimeter.wire.messages import AggReply

CODES = ("m0", "m1")
ACCOUNTS = (1, 2**64 - 1)  # the largest account id does not fit an int64 column
# Now and then a value so large that two of them sum past int64 (bignum columns).
BIG = 2**62
DIMS = {"region": ("eu", "us", "ap"), "tier": ("free", "pro")}
PROP_CHOICES = {"region": ("eu", "us", "ap", "mars"), "tier": ("free", "pro", "gold"), "x": ("1",)}
Draw = Callable[..., Any]  # st.DrawFn or DataObject.draw


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
        # Small chunks seal, sort and merge into runs within a test's few dozen events; a
        # chunk of 256 stays open while range reads index it in runs of 4 rows and more.
        chunk_events=st.sampled_from([1, 3, 7, 256, 65536]),
    )
    def setup(
        self, retention: int, window: int, first: tuple[MetricSchema, ...], chunk_events: int
    ) -> None:
        self.model = Model(5, retention, window)
        self.states = [
            PartitionState(
                5, retention_days=retention, dedup_window_days=window, chunk_events=chunk_events
            )
        ]
        # Applies what a restart replays: each entry decoded from its log record.
        self.replayed = PartitionState(
            5, retention_days=retention, dedup_window_days=window, chunk_events=chunk_events
        )
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
        replayed = self.replayed.apply(self.index, decode_entry(encode_entry(entry)))
        assert list(replayed.alerts) == alerts

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
        # Half the batches take the state's lean path: no properties or ids, and only metrics
        # that are neither COUNT_UNIQUE nor dimensioned.
        plain = data.draw(st.booleans())
        # Some plain batches carry no timestamps: every event takes the entry's stamp (the
        # fold's one-stamp path; a few events take its scalar form).
        stamped = plain and data.draw(st.booleans())
        if plain:
            codes = [
                c
                for c in codes
                if self.model.live[c].schema.agg_type != AggType.COUNT_UNIQUE
                and not self.model.live[c].schema.filters
            ]
        for _ in range(data.draw(st.integers(0, 10)) if codes else 0):
            code = data.draw(st.sampled_from(codes))
            account = data.draw(st.sampled_from(ACCOUNTS))
            unique = self.model.live[code].schema.agg_type == AggType.COUNT_UNIQUE
            back = data.draw(st.integers(0, 4 * min(retention, 8)) | st.integers(0, 2))
            ts = self.stamp if stamped else self.stamp - back * H + data.draw(st.integers(0, 1))
            event_id = None if plain else data.draw(st.sampled_from([None, None, "a", "b", "c"]))
            if event_id is not None and (
                self.model.event_id_seen(code, account, event_id)
                or any(
                    (e.metric, e.account, e.event_id) == (code, account, event_id) for e in events
                )
            ):
                event_id = None
            props = (
                {}
                if plain
                else data.draw(
                    st.dictionaries(
                        st.sampled_from(sorted(PROP_CHOICES)),
                        st.sampled_from(["eu", "us", "ap", "mars", "free", "pro", "1"]),
                        max_size=3,
                    )
                )
            )
            events.append(
                E(
                    code,
                    account,
                    data.draw(
                        st.integers(0, 6)
                        if unique
                        else st.integers(-5, 21).map(lambda v: BIG if v == 21 else v)
                    ),
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
        duplicates = data.draw(st.integers(0, 2))
        self.apply(batch_entry(self.stamp, events, (pid, seq), duplicates, stamped))

    @rule()
    def snapshot_round_trip(self) -> None:
        """Restore the newest state (itself perhaps restored); keep the live state and the two
        newest restored ones."""
        newest = self.states[-1]
        data = newest.snapshot()
        restored = PartitionState.from_snapshot(data)
        assert structure(restored) == structure(newest)
        assert restored.snapshot() == data
        self.states = [self.states[0], *self.states[1:][-1:], restored]

    @invariant()
    def restored_states_hold_what_the_live_one_holds(self) -> None:
        expected = structure(self.states[0])
        for state in self.states[1:]:
            assert structure(state) == expected

    @invariant()
    def the_replayed_state_is_the_live_one(self) -> None:
        assert self.replayed.snapshot() == self.states[0].snapshot()

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

    @rule(data=st.data())
    def read_a_stored_period_as_the_fast_path_does(self, data: st.DataObject) -> None:
        """Where the read fast path answers a query of one stored period, filtered or not
        (``whole_period_wire``), its reply frame is the general path's, and the model's."""
        code = data.draw(st.sampled_from(CODES))
        inst = self.states[0].live.get(code)
        if inst is None or not inst.periods:
            return
        account = data.draw(st.sampled_from(ACCOUNTS))
        start = data.draw(st.sampled_from(sorted(inst.periods)))
        end = inst.periods[start][0]
        filters = filters_for(data.draw, self.model, code)
        expected = outcome(self.model.query, code, account, start, end, filters)
        codec = ServerCodec()
        for state in self.states:
            wire = whole_period_wire(state, code, account, start, end, filters)
            if wire is None:
                continue
            assert not isinstance(expected, type), (code, filters, expected)  # (an error's type)
            reply = AggReply(value=expected, period_start_us=start, period_end_us=end)
            frame = codec.encode_ok(1, {"v": wire, "ps": start, "pe": end})
            assert frame == codec.encode_response(1, errors.Status.OK, reply), (code, filters)
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
        for subscribed in (account, None):  # a live subscriber's catch-up pages
            cursor = -1
            while cursor is not None:
                after = cursor
                alerts = self.model.list_alerts(subscribed, after, limit)
                expected = (*alerts, len(self.model.alerts))
                for state in self.states:
                    assert state.alerts_catch_up(subscribed, after, limit) == expected
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
    max_examples=int(os.environ.get("UNIMETER_STATE_EXAMPLES", str(examples(40)))),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_partition_state_matches_model = PartitionMachine.TestCase
