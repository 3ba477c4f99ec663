"""``wire/fast_read.py`` against the generic codec it stands in for.

- ``read_body`` builds the very body map (keys, order, values) ``encode_body`` builds for an
  unfiltered Query and a QueryRealtime, so the frames are byte for byte the same.
- ``agg_reply`` either reads a reply body as the generic decoder reads it, or leaves it to the
  generic decoder (None) -- never accepts what the generic decoder refuses, whether the body is
  one the node writes or a hand-made one.
- ``ClientCodec`` gives the same frames through either path, late replies included.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.codec_checks import check_late_and_stray_replies, frame_of
from tests.support.examples import examples
from unimeter import errors
from unimeter.model import AggValue
from unimeter.wire import messages as m
from unimeter.wire.bodies import decode_reply, encode_body
from unimeter.wire.codec import ClientCodec
from unimeter.wire.convert import BodyError
from unimeter.wire.fast_read import agg_reply, read_body
from unimeter.wire.frames import decode_item, encode_frame

SETTINGS = settings(max_examples=examples(300), deadline=None)
u64 = st.one_of(st.integers(0, 30), st.sampled_from([23, 24, 2**32, 2**64 - 1]),
                st.integers(0, 2**64 - 1))  # fmt: skip
i64 = st.one_of(st.integers(-30, 30), st.integers(-(2**63), 2**63 - 1))
codes = st.sampled_from(["api_calls", "seats", "compute.seconds"])
filters = st.one_of(st.just(()), st.just((("region", "eu"),)))

queries = st.builds(
    m.Query, partition=st.integers(0, 4095), account_id=u64, metric_code=codes, start_us=i64,
    end_us=i64, filters=filters, min_index=u64, catalog_version=u64,
)  # fmt: skip
realtime_queries = st.builds(
    m.QueryRealtime, partition=st.integers(0, 4095), account_id=u64, metric_code=codes,
    catalog_version=u64,
)  # fmt: skip


@SETTINGS
@given(u64, st.one_of(queries, realtime_queries))
def test_a_read_frame_is_the_generic_frame(request_id: int, message: m.Request) -> None:
    body = read_body(message)
    generic = encode_body(message)
    if isinstance(message, m.Query) and message.filters:
        assert body is None  # filters take the generic path
        return
    assert body is not None
    assert list(body.items()) == list(generic.items())  # same keys in the same order
    kind = int(message.KIND)
    assert encode_frame([kind, request_id, body]) == encode_frame([kind, request_id, generic])


def test_other_requests_are_left_to_the_generic_encoder() -> None:
    assert read_body(m.MetricList()) is None
    assert read_body(m.MetricGet(code="api_calls")) is None


def generic(body: Any) -> m.AggReply | None:
    """What the generic path makes of an OK AggReply body; None if it refuses it."""
    try:
        reply = decode_reply(m.AggReply, body)
    except BodyError:
        return None
    assert isinstance(reply, m.AggReply)
    return reply


stamps = st.none() | st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
values = st.builds(
    AggValue,
    sum=st.one_of(i64, st.integers(-(2**80), 2**80), st.sampled_from(
        [2**63, 2**64 - 1, 2**64, -(2**63) - 1, -(2**64), -(2**64) - 1])),
    count=u64,
    max=st.none() | i64, last_value=st.none() | i64, last_timestamp=stamps,
    alert_flags=st.integers(0, 255),
)  # fmt: skip
replies = st.builds(m.AggReply, value=values, period_start_us=i64, period_end_us=i64)


@SETTINGS
@given(replies)
def test_a_reply_the_node_writes_reads_as_the_generic_decoder_reads_it(reply: m.AggReply) -> None:
    # Through the bytes, as the client receives it (bignum tags stay raw tags there).
    body = decode_item(cbor2.dumps(encode_body(reply)))
    fast = agg_reply(body)
    if not -(2**64) <= reply.value.sum < 2**64:
        assert fast is None  # a bignum (a tagged sum) takes the generic path
    else:  # a CBOR integer (major type 0 or 1), 64 bits or not
        assert fast == reply == generic(body)


anything = st.one_of(
    i64, st.integers(2**63, 2**64 + 5), st.integers(-(2**64), -(2**63) - 1), st.none(),
    st.booleans(), st.text(max_size=2), st.floats(allow_nan=False), st.just(256),
    st.just(-1), st.just([]),
)  # fmt: skip


@SETTINGS
@given(
    st.lists(anything, min_size=5, max_size=7),
    st.dictionaries(st.sampled_from(["ps", "pe", "x", "v"]), anything, max_size=4),
    st.booleans(),
)
def test_a_hand_made_reply_is_read_only_as_the_generic_decoder_reads_it(
    value: list[Any], others: dict[str, Any], with_value: bool
) -> None:
    body = dict(others)
    if with_value:
        body["v"] = value
    fast = agg_reply(body)
    if fast is not None:
        assert fast == generic(body)


def test_each_refused_field_is_left_to_the_generic_decoder() -> None:
    good: dict[str, Any] = {"v": [5, 2, 4, 1, 1_765_000_000_000_000, 3], "ps": 0, "pe": 10}
    assert agg_reply(good) == generic(good) is not None
    for position, bad in [(0, True), (1, -1), (2, 2**63), (3, "1"), (4, 2**70), (5, 256)]:
        value = list(good["v"])
        value[position] = bad
        body = {**good, "v": value}
        assert agg_reply(body) is None, (position, bad)
    assert agg_reply({**good, "extra": 1}) is None  # the generic decoder ignores it: its call
    assert agg_reply({"v": good["v"], "ps": 0}) is None
    assert generic({"v": good["v"], "ps": 0}) is None


def test_the_codec_answers_reads_through_the_fast_path_as_through_the_generic_one() -> None:
    codec = ClientCodec()
    query = m.Query(partition=0, account_id=7, metric_code="api_calls", start_us=0, end_us=10)
    codec.encode_request(1, query)
    codec.encode_request(2, m.QueryRealtime(partition=0, account_id=7, metric_code="api_calls"))
    codec.encode_request(3, query)
    plain = m.AggReply(value=AggValue(sum=3, count=1), period_start_us=0, period_end_us=10)
    big = m.AggReply(value=AggValue(sum=2**70, count=1), period_start_us=0, period_end_us=10)
    codec.feed(frame_of(cbor2.dumps([0, 1, encode_body(plain)])))
    codec.feed(frame_of(cbor2.dumps([0, 2, encode_body(big)])))
    assert codec.next_frame() == m.ResponseFrame(
        request_id=1, status=0, kind=m.Kind.QUERY, message=plain
    )
    assert codec.next_frame() == m.ResponseFrame(
        request_id=2, status=0, kind=m.Kind.QUERY_REALTIME, message=big
    )
    check_late_and_stray_replies(codec, 3, encode_body(plain))


def test_an_aggregate_body_answering_another_kind_takes_the_generic_path() -> None:
    codec = ClientCodec()
    codec.encode_request(5, m.MetricList())
    plain = m.AggReply(value=AggValue(), period_start_us=0, period_end_us=10)
    codec.feed(frame_of(cbor2.dumps([0, 5, encode_body(plain)])))
    with pytest.raises(errors.ProtocolError, match="malformed METRIC_LIST reply"):
        codec.next_frame()
