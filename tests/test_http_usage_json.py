"""``GET /v1/usage`` answers the same JSON through the read fast path and the general path.

The fast path (filtered or not) writes its answer from the aggregate's wire form
(``usage_row_json``); the general path decodes an ``AggReply`` and writes ``agg_value_json`` of
its value. For any aggregate the two bodies must be byte for byte the same -- including sums
past 64 bits, which JSON carries digit for digit (orjson refuses them: ``json_bytes``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.examples import examples
from unimeter.json_model import agg_value_json, json_bytes, time_text
from unimeter.model import AggValue
from unimeter.server.http.api import usage_row_json
from unimeter.server.http.params import Bounds
from unimeter.wire import messages as m
from unimeter.wire.bodies import decode_reply, encode_body

i64 = st.integers(-(2**63), 2**63 - 1)
values = st.builds(
    AggValue, sum=st.one_of(i64, st.integers(-(2**80), 2**80)), count=st.integers(0, 2**64 - 1),
    max=st.none() | i64, last_value=st.none() | i64,
    last_timestamp=st.none() | st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    alert_flags=st.integers(0, 255),
)  # fmt: skip


@settings(max_examples=examples(200), deadline=None)
@given(values, st.integers(0, 2**64 - 1))
def test_the_fast_answer_is_the_general_answer(value: AggValue, account: int) -> None:
    start, end = 1_764_547_200_000_000, 1_767_225_600_000_000
    bounds = Bounds(start, end, time_text(start), time_text(end))
    reply = m.AggReply(value=value, period_start_us=start, period_end_us=end)
    wire = cbor2.loads(cbor2.dumps(encode_body(reply)))["v"]  # what the fast path reads
    general = decode_reply(m.AggReply, encode_body(reply))
    assert isinstance(general, m.AggReply)
    expected = json_bytes({
        "account_id": account, "metric_code": "compute", "period_start": bounds.start_text,
        "period_end": bounds.end_text, "value": agg_value_json(general.value),
    })  # fmt: skip
    assert usage_row_json(account, "compute", bounds, wire) == expected


def test_a_sum_past_64_bits_keeps_every_digit() -> None:
    body = {"sum": 2**70 + 1, "count": 3}
    assert json_bytes(body) == b'{"sum":1180591620717411303425,"count":3}'
    assert json_bytes({"sum": 5}) == b'{"sum":5}'
