"""The read fast path's pieces against the general path they stand in for.

- ``wire/fast.py``: a body either decodes to the same fields the generic decoder gives, or is
  left to it (None) -- never accepted where the generic decoder refuses. Tables, then random
  bodies (Hypothesis).
- The reply template: ``whole_period_wire`` is the wire form of ``whole_period``'s AggValue,
  and ``ServerCodec.encode_ok`` of it is byte for byte the frame ``encode_response`` makes.
- Filtered whole periods: on random states with dimension cells, whenever ``whole_period_wire``
  answers a filtered query, its reply frame is byte for byte the general path's (``query``,
  ``AggReply``, ``encode_response``); the filters it leaves to the general path are the ones
  that path refuses or reads otherwise.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.partition_helpers import ADD, DAY, REMOVE, T0, E, batch_entry, ev, live, schema_entry
from unimeter import errors
from unimeter.model import AggType, AlertThreshold, DimensionFilter, PeriodType
from unimeter.state.partition_state import PartitionState
from unimeter.state.reads import whole_period, whole_period_wire
from unimeter.wire import fast
from unimeter.wire import messages as m
from unimeter.wire.bodies import AGG_VALUE, decode_request
from unimeter.wire.codec import ServerCodec
from unimeter.wire.convert import BodyError


def generic(kind: m.Kind, body: Any) -> m.Request | None:
    try:
        return decode_request(kind, body)
    except BodyError:
        return None


def query_fields(q: m.Query) -> tuple[int, ...] | tuple[Any, ...]:
    return (q.partition, q.account_id, q.metric_code, q.start_us, q.end_us, q.min_index,
            q.catalog_version, q.filters)  # fmt: skip


GOOD = {"p": 1, "a": 42, "m": "api_calls", "s": 10, "e": 20}
QUERY_CASES: list[tuple[dict[str, Any], bool]] = [
    (GOOD, True),
    ({**GOOD, "min": 7, "cv": 3}, True),
    ({**GOOD, "f": [["region", "eu"]]}, True),
    ({**GOOD, "f": []}, True),  # no filters
    ({**GOOD, "f": [["region", "eu"], ["tier", ""]], "cv": 2}, True),
    ({**GOOD, "f": [["k" * 32, "v" * 64]]}, True),  # both at their size limits
    ({**GOOD, "f": [["é" * 16, "é" * 32]]}, True),  # limits in UTF-8 bytes, not characters
    ({**GOOD, "f": [[k, "x"] for k in "abcd"]}, True),  # as many as a metric has dimensions
    ({**GOOD, "f": [[k, "x"] for k in "abcde"]}, False),
    ({**GOOD, "f": [["k" * 33, "v"]]}, False),
    ({**GOOD, "f": [["é" * 17, "v"]]}, False),
    ({**GOOD, "f": [["k", "v" * 65]]}, False),
    ({**GOOD, "f": [["k", "é" * 33]]}, False),
    ({**GOOD, "f": [["", "v"]]}, False),  # an empty key
    ({**GOOD, "f": [["\ud800", "v"]]}, False),  # no UTF-8 form: the generic decoder's to judge
    ({**GOOD, "f": [["k", "\ud800"]]}, False),
    ({**GOOD, "f": [["region", "eu"], ["region", "us"]]}, False),  # a key twice
    ({**GOOD, "f": [["region", "eu"], ["region", "eu"]]}, False),
    ({**GOOD, "f": None}, False),  # no null default: the generic decoder refuses it
    ({**GOOD, "f": 3}, False),
    ({**GOOD, "f": "region"}, False),
    ({**GOOD, "f": {"region": "eu"}}, False),
    ({**GOOD, "f": ["region", "eu"]}, False),
    ({**GOOD, "f": [["region"]]}, False),
    ({**GOOD, "f": [["region", "eu", "x"]]}, False),
    ({**GOOD, "f": [[1, "eu"]]}, False),
    ({**GOOD, "f": [["region", 1]]}, False),
    ({**GOOD, "f": [["region", None]]}, False),
    ({**GOOD, "f": [["region", "eu"]], "e": 10}, False),
    ({**GOOD, "e": 10}, False),  # empty range: refused by the generic decoder
    ({**GOOD, "a": -1}, False),
    ({**GOOD, "a": 2**64}, False),
    ({**GOOD, "p": True}, False),
    ({**GOOD, "m": "bad code!"}, False),
    ({**GOOD, "m": 5}, False),
    ({**GOOD, "m": ["x"]}, False),
    ({**GOOD, "zz": 1}, False),
    ({k: v for k, v in GOOD.items() if k != "s"}, False),
    ({**GOOD, "min": None}, False),  # null for a default: the generic decoder takes it
    ([1, 2], False),
]


@pytest.mark.parametrize(("body", "fast_path"), QUERY_CASES)
def test_query_bodies_decode_as_the_generic_decoder_says(body: Any, fast_path: bool) -> None:
    got = fast.query(body)
    assert (got is not None) == fast_path
    if got is not None:
        want = generic(m.Kind.QUERY, body)
        assert isinstance(want, m.Query) and query_fields(want) == got


_values = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from(["api_calls", "x", "", "bad code", "é" * 70]),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
_texts = st.one_of(
    st.sampled_from(["region", "eu", "", "k" * 32, "k" * 33, "é" * 16, "é" * 17, "v" * 65]),
    st.text(max_size=40),
)
_filter_lists = st.lists(
    st.one_of(
        st.lists(_texts, min_size=2, max_size=2),
        st.lists(st.one_of(_texts, st.integers(), st.none()), max_size=3),
    ),
    max_size=6,
)
_values = st.one_of(_values, _filter_lists)
_bodies = st.dictionaries(
    st.sampled_from(["p", "a", "m", "s", "e", "min", "cv", "f", "x"]), _values
)
# Mostly well-formed filtered bodies, so that both answers are drawn often.
_filtered_bodies = st.builds(
    lambda body, filters, extra: {**body, "f": filters, **extra},
    st.just(GOOD),
    _filter_lists,
    st.dictionaries(st.sampled_from(["min", "cv", "e"]), st.integers(-1, 30), max_size=1),
)


@settings(max_examples=400, deadline=None)
@given(_bodies)
def test_random_query_bodies_never_take_the_fast_path_wrongly(body: dict[str, Any]) -> None:
    got = fast.query(body)
    if got is not None:
        want = generic(m.Kind.QUERY, body)
        assert isinstance(want, m.Query) and query_fields(want) == got


@settings(max_examples=400, deadline=None)
@given(_filtered_bodies)
def test_random_filters_take_the_fast_path_exactly_when_the_generic_decoder_accepts_them(
    body: dict[str, Any],
) -> None:
    got = fast.query(body)
    try:
        want: m.Request | None = decode_request(m.Kind.QUERY, body)
    except (BodyError, UnicodeEncodeError):  # (text with no UTF-8 form fails in the encoder)
        want = None
    if got is None:
        # Left to the generic decoder: only ever because it refuses the body.
        assert want is None
    else:
        assert isinstance(want, m.Query) and query_fields(want) == got


@settings(max_examples=400, deadline=None)
@given(_bodies)
def test_random_realtime_bodies_never_take_the_fast_path_wrongly(body: dict[str, Any]) -> None:
    got = fast.query_realtime(body)
    if got is not None:
        want = generic(m.Kind.QUERY_REALTIME, body)
        assert isinstance(want, m.QueryRealtime)
        assert (want.partition, want.account_id, want.metric_code, want.catalog_version) == got


def _state() -> PartitionState:
    state = PartitionState(0)
    metrics = [
        live("sum", agg_type=AggType.SUM, period_type=PeriodType.DAY),
        live(
            "max",
            agg_type=AggType.MAX,
            period_type=PeriodType.DAY,
            thresholds=(AlertThreshold(code="t", value=50),),
        ),
        live("uniq", agg_type=AggType.COUNT_UNIQUE, period_type=PeriodType.DAY),
        live("latest", agg_type=AggType.LATEST, period_type=PeriodType.DAY, recurring=True),
    ]
    state.apply(1, schema_entry(1, *metrics))
    events = [
        ev("sum", 7, account=1),
        ev("sum", 2**62, account=1),
        ev("sum", 2**62, account=1),  # beyond int64: the sum is exact
        ev("sum", -5, account=2),
        ev("max", 60, account=1),
        ev("uniq", 3, account=1),
        ev("latest", 9, account=1),
    ]
    state.apply(2, batch_entry(T0 + 1000, events))
    return state


@pytest.mark.parametrize("code", ["sum", "max", "uniq", "latest", "unknown"])
@pytest.mark.parametrize("account", [1, 2, 3, 2**64 - 1])
def test_the_reply_template_is_the_wire_form_of_the_whole_period_read(
    code: str, account: int
) -> None:
    state = _state()
    start = T0 - T0 % 86_400_000_000
    for lo, hi in ((start, start + 86_400_000_000), (start, start + 1)):
        wire = whole_period_wire(state, code, account, lo, hi)
        inst = state.live.get(code)
        value = whole_period(state, inst, account, lo, hi) if inst is not None else None
        if value is None:
            assert wire is None
            continue
        assert wire == AGG_VALUE.encode(value)
        codec = ServerCodec()
        body = {"v": wire, "ps": lo, "pe": hi}
        reply = m.AggReply(value=value, period_start_us=lo, period_end_us=hi)
        assert codec.encode_ok(77, body) == codec.encode_response(77, errors.Status.OK, reply)
        assert codec.reply_of(m.Kind.QUERY, body) == reply


# --------------------------------------------------------------------------- filtered periods

DIMS = (DimensionFilter("region", ("eu", "us")), DimensionFilter("tier", ("free", "pro")))
PROPS = {"region": ("eu", "us", "ap"), "tier": ("free", "pro", "gold"), "x": ("1",)}
FILTERED_CODES = ("sum", "count", "max", "latest", "uniq", "rsum", "rlatest", "runiq")
FILTERS: list[tuple[tuple[str, str], ...]] = [
    (("region", "eu"),),
    (("region", "us"),),
    (("tier", "pro"),),
    (("region", "eu"), ("tier", "free")),
    (("tier", "free"), ("region", "us")),
    (("region", "ap"),),  # not a declared value: an error on the general path
    (("x", "1"),),  # not a dimension: an error too
    (),
]


def _filtered_metrics(thresholds: bool) -> list[Any]:
    alert = (AlertThreshold(code="t", value=3),) if thresholds else ()
    day = PeriodType.DAY
    return [
        live("sum", agg_type=AggType.SUM, period_type=day, filters=DIMS, thresholds=alert),
        live("count", agg_type=AggType.COUNT, period_type=day, filters=DIMS, thresholds=alert),
        live("max", agg_type=AggType.MAX, period_type=day, filters=DIMS),
        live("latest", agg_type=AggType.LATEST, period_type=day, filters=DIMS[:1]),
        live("uniq", agg_type=AggType.COUNT_UNIQUE, period_type=day, filters=DIMS),
        live("rsum", agg_type=AggType.SUM, period_type=day, filters=DIMS, recurring=True),
        live("rlatest", agg_type=AggType.LATEST, period_type=day, filters=DIMS, recurring=True),
        live("runiq", agg_type=AggType.COUNT_UNIQUE, period_type=day, filters=DIMS,
             recurring=True),
    ]  # fmt: skip


_props = st.fixed_dictionaries(
    {}, optional={key: st.sampled_from(values) for key, values in PROPS.items()}
)
_events = st.lists(
    st.builds(
        E,
        st.sampled_from(FILTERED_CODES),
        st.sampled_from([1, 1, 2**64 - 1]),
        st.one_of(st.integers(-3, 9), st.just(2**62)),  # 2**62 twice: a bignum sum
        st.integers(0, 15).map(lambda h: T0 + h * 3 * 3600 * 1_000_000),  # two days
        st.sampled_from([0, 0, ADD, REMOVE]),
        st.one_of(st.none(), _props),
        event_id=st.none(),
    ),
    min_size=1,
    max_size=60,
)


def _filtered_state(thresholds: bool, batches: list[list[E]]) -> PartitionState:
    state = PartitionState(0)
    state.apply(1, schema_entry(1, *_filtered_metrics(thresholds)))
    index = 1
    for batch in batches:
        # As the leader admits them: operations on COUNT_UNIQUE only, its values not negative.
        events = [
            e._replace(value=abs(e.value) % 8) if e.metric.endswith("uniq") else e._replace(op=0)
            for e in batch
        ]
        if events:
            index += 1
            state.apply(index, batch_entry(T0 + 4 * DAY + index, events))
    return state


def _general_frame(state: PartitionState, code: str, account: int, lo: int, hi: int,
                   filters: tuple[tuple[str, str], ...]) -> bytes | None:  # fmt: skip
    try:
        value = state.query(code, account, lo, hi, filters)
    except errors.UnimeterError:
        return None
    reply = m.AggReply(value=value, period_start_us=lo, period_end_us=hi)
    return ServerCodec().encode_response(77, errors.Status.OK, reply)


def _check_whole_periods(state: PartitionState) -> int:
    """Every (metric, account, stored period, filters): the fast answer, where there is one, is
    the general path's frame. Returns how many filtered reads the fast path answered."""
    answered = 0
    for code in (*FILTERED_CODES, "unknown"):
        inst = state.live.get(code)
        spans = [(lo, end) for lo, (end, _) in inst.periods.items()] if inst else [(T0, T0 + DAY)]
        for account in (1, 3, 2**64 - 1):
            for lo, hi in spans:
                for filters in FILTERS:
                    wire = whole_period_wire(state, code, account, lo, hi, filters)
                    general = _general_frame(state, code, account, lo, hi, filters)
                    if wire is None:
                        carries = inst is not None and inst.carries
                        plain = filters in FILTERS[:5] and not carries
                        assert general is None or not plain, (code, filters)
                        continue
                    assert general is not None, (code, filters)
                    body = {"v": wire, "ps": lo, "pe": hi}
                    assert ServerCodec().encode_ok(77, body) == general, (code, filters)
                    answered += bool(filters)
    return answered


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.lists(_events, min_size=1, max_size=3))
def test_a_filtered_whole_period_answers_what_the_general_path_answers(
    thresholds: bool, batches: list[list[E]]
) -> None:
    _check_whole_periods(_filtered_state(thresholds, batches))


def test_filtered_whole_periods_are_answered_from_the_cell_rows() -> None:
    """An example that takes every branch: cells kept and not, a row without cells, two cells
    under one filter (their sums, max, latest, unique union), thresholds fired."""
    eu_free, eu_pro, us = (
        {"region": "eu", "tier": "free"},
        {"region": "eu", "tier": "pro"},
        {"region": "us"},
    )
    events: list[E] = []
    for code in ("sum", "count", "max", "latest", "uniq"):
        events += [
            ev(code, 5, at=1, account=1, props=eu_free),
            ev(code, 7, at=2, account=1, props=eu_pro),
            ev(code, 5, at=3, account=1, props=us),
            ev(code, 2**62, at=4, account=1, props=eu_pro),
            ev(code, 2**62, at=0, account=1, props=eu_free),
            ev(code, 9, at=5, account=1),  # the empty cell
            ev(code, 4, at=6, account=2),  # account 2's row has no cells
        ]
    state = _filtered_state(True, [events])
    assert _check_whole_periods(state) > 0
    # Sums whose limbs grew large live in ``big_sums`` (``RowStore.settle``, after 2**28
    # events): move every row's there, as settling would, and read again.
    rows = state.tables.rows
    for row in range(rows.size):
        rows.big_sums[row] = rows.total_sum(row)
        rows.cols["sum_lo"][row] = rows.cols["sum_hi"][row] = 0
    assert _check_whole_periods(state) > 0
    start = T0 - T0 % DAY
    assert whole_period_wire(state, "sum", 1, start, start + DAY, (("region", "eu"),)) == [
        2**63 + 12, 4, 2**62, 2**62, T0 + 4, 1
    ]  # fmt: skip
    assert whole_period_wire(state, "uniq", 1, start, start + DAY, (("region", "eu"),)) == [
        0, 3, None, None, None, 0
    ]  # fmt: skip
    assert whole_period_wire(state, "sum", 2, start, start + DAY, (("region", "eu"),)) == [
        0, 0, None, None, None, 1
    ]  # fmt: skip
    assert whole_period_wire(state, "sum", 1, start, start + DAY, (("region", "ap"),)) is None
