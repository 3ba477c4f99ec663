"""The read fast path's pieces against the general path they stand in for.

- ``wire/fast.py``: a body either decodes to the same fields the generic decoder gives, or is
  left to it (None) -- never accepted where the generic decoder refuses. Tables, then random
  bodies (Hypothesis).
- The reply template: ``whole_period_wire`` is the wire form of ``whole_period``'s AggValue,
  and ``ServerCodec.encode_ok`` of it is byte for byte the frame ``encode_response`` makes.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.partition_helpers import T0, batch_entry, ev, live, schema_entry
from unimeter import errors
from unimeter.model import AggType, AlertThreshold, PeriodType
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
            q.catalog_version)  # fmt: skip


GOOD = {"p": 1, "a": 42, "m": "api_calls", "s": 10, "e": 20}
QUERY_CASES: list[tuple[dict[str, Any], bool]] = [
    (GOOD, True),
    ({**GOOD, "min": 7, "cv": 3}, True),
    ({**GOOD, "f": [["region", "eu"]]}, False),  # filters: left to the generic decoder
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
_bodies = st.dictionaries(
    st.sampled_from(["p", "a", "m", "s", "e", "min", "cv", "f", "x"]), _values
)


@settings(max_examples=400, deadline=None)
@given(_bodies)
def test_random_query_bodies_never_take_the_fast_path_wrongly(body: dict[str, Any]) -> None:
    got = fast.query(body)
    if got is not None:
        want = generic(m.Kind.QUERY, body)
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
