"""Bad and random input to the wire codec.

Bodies that break a rule must come back as ``BadRequest`` naming the field, with the connection
still usable; Hypothesis then feeds random bytes, random bodies and mutated frames, and the only
outcomes allowed are a decoded frame, a BadRequest, or ``ProtocolError`` (never an internal
error, never any other exception).
"""

from __future__ import annotations

from array import array
from typing import Any

import cbor2
import pytest
from cbor2 import CBORTag
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.wire_cases import (
    BREAKDOWN,
    HELLO,
    I64_MAX,
    I64_MIN,
    INGEST,
    LIST_ALERTS,
    LIST_EVENTS,
    QUERY,
    REQUESTS,
    SCHEMA,
    SUBSCRIBE,
    U64_MAX,
    client_waiting,
    same,
)
from unimeter import errors, limits
from unimeter.wire import bodies
from unimeter.wire import messages as m
from unimeter.wire.codec import BadRequest, ClientCodec, ServerCodec, encode_frame

FAST = settings(max_examples=200, deadline=None)


def body(message: m.Request, **changes: Any) -> dict[str, Any]:
    """The wire body of ``message`` with keys replaced (``...`` deletes the key)."""
    out = bodies.encode_body(message)
    for key, value in changes.items():
        if value is ...:
            del out[key]
        else:
            out[key] = value
    return out


def batch_body(**changes: Any) -> dict[str, Any]:
    """The body of the 4-event INGEST with keys of its batch map replaced."""
    out = body(INGEST)
    batch = cbor2.loads(out["b"])
    for key, value in changes.items():
        if value is ...:
            del batch[key]
        else:
            batch[key] = value
    out["b"] = cbor2.dumps(batch)
    return out


def u8s(*values: int) -> CBORTag:
    return CBORTag(64, bytes(values))


def u32s(*values: int) -> CBORTag:
    return CBORTag(70, b"".join(v.to_bytes(4, "little") for v in values))


def i64s(*values: int) -> CBORTag:
    return CBORTag(79, b"".join(v.to_bytes(8, "little", signed=True) for v in values))


K = m.Kind
CREATE = m.MetricCreate(schema=SCHEMA)
TOO_MANY = limits.events_per_batch_max + 1
PROPS_17 = {f"k{i}": "v" for i in range(17)}

# fmt: off
BAD_BODIES: list[tuple[str, m.Kind, object, str]] = [
    ("negative account", K.QUERY, body(QUERY, a=-3),
     "Query.account_id: expected an integer in [0, 2**64), got -3"),
    ("account over u64", K.QUERY, body(QUERY, a=CBORTag(2, b"\x01" + bytes(8))),
     "Query.account_id: expected an integer in [0, 2**64), got tag 2"),
    ("bool partition", K.QUERY, body(QUERY, p=True), "Query.partition: expected an integer"),
    ("partition too big", K.QUERY, body(QUERY, p=limits.partitions_max),
     "Query.partition: expected an integer in [0, 4096), got 4096"),
    ("missing metric", K.QUERY, body(QUERY, m=...), "Query.metric_code: missing (key 'm')"),
    ("bad metric code", K.QUERY, body(QUERY, m="no spaces"), "Query.metric_code: metric code"),
    ("empty range", K.QUERY, body(QUERY, s=10, e=10), "Query.end_us: must be after"),
    ("unknown key", K.QUERY, body(QUERY, zz=1), "Query: unknown key 'zz'"),
    ("body not a map", K.QUERY, [1, 2], "Query: the body must be a map, got an array of 2"),
    ("null for a defaulted int", K.QUERY, body(QUERY, min=None), "Query.min_index"),
    ("too many filters", K.QUERY, body(QUERY, f=[["k", "v"]] * 5),
     "Query.filters: at most 4 entries, got 5"),
    ("filter key twice", K.QUERY, body(QUERY, f=[["k", "a"], ["k", "b"]]),
     "Query.filters: a key appears twice"),
    ("filter value too long", K.QUERY, body(QUERY, f=[["k", "v" * 65]]),
     "Query.filters[0][1]: expected a string of 0-64 bytes"),
    ("filter not a pair", K.QUERY, body(QUERY, f=[["k"]]), "Query.filters[0]: expected"),
    ("group_by twice", K.QUERY_BREAKDOWN, body(BREAKDOWN, g=["a", "a"]),
     "QueryBreakdown.group_by: an entry appears twice"),
    ("group_by missing", K.QUERY_BREAKDOWN, body(BREAKDOWN, g=...),
     "QueryBreakdown.group_by: missing"),
    ("events limit 0", K.LIST_EVENTS, body(LIST_EVENTS, l=0),
     "ListEvents.limit: expected an integer in [1, 1000], got 0"),
    ("alerts limit too big", K.LIST_ALERTS, body(LIST_ALERTS, l=1001),
     "ListAlerts.limit: expected an integer in [1, 1000], got 1001"),
    ("cursor below -1", K.LIST_ALERTS, body(LIST_ALERTS, ac=-2), "ListAlerts.after_cursor"),
    ("subscription id missing", K.SUBSCRIBE_ALERTS, body(SUBSCRIBE, s=...),
     "SubscribeAlerts.subscription_id: missing (key 's')"),
    ("subscription id negative", K.SUBSCRIBE_ALERTS, body(SUBSCRIBE, s=-1),
     "SubscribeAlerts.subscription_id: expected an integer in [0, 2**64), got -1"),
    ("subscription account negative", K.SUBSCRIBE_ALERTS, body(SUBSCRIBE, a=-3),
     "SubscribeAlerts.account_id: expected an integer in [0, 2**64), got -3"),
    ("subscription cursor below -1", K.SUBSCRIBE_ALERTS, body(SUBSCRIBE, ac=-2),
     "SubscribeAlerts.after_cursor: expected an integer in [-1, 2**63), got -2"),
    ("subscription page of 0", K.SUBSCRIBE_ALERTS, body(SUBSCRIBE, l=0),
     "SubscribeAlerts.limit: expected an integer in [1, 1000], got 0"),
    ("subscription partition missing", K.SUBSCRIBE_ALERTS, body(SUBSCRIBE, p=...),
     "SubscribeAlerts.partition: missing (key 'p')"),
    ("subscription unknown key", K.SUBSCRIBE_ALERTS, body(SUBSCRIBE, m="api_calls"),
     "SubscribeAlerts: unknown key 'm'"),
    ("unsubscribe id as text", K.UNSUBSCRIBE_ALERTS, {"s": "1"},
     "UnsubscribeAlerts.subscription_id: expected an integer in [0, 2**64), got '1'"),
    ("client name too long", K.HELLO, body(HELLO, n="é" * 513),
     "Hello.client_name: expected a string of 0-1024 bytes"),
    ("token not text", K.HELLO, body(HELLO, t=b"secret"),
     "Hello.token: expected a string, got a byte string of 6 bytes"),
    ("bad schema", K.METRIC_CREATE, body(CREATE, s={"code": "x", "agg": 99}),
     "MetricCreate.schema: malformed metric schema"),
    ("schema with a list as key", K.METRIC_CREATE,
     body(CREATE, s={"code": "x", "agg": 0, "dims": [[["k"], ["v"]]]}), "MetricCreate.schema:"),
    ("schema not a map", K.METRIC_UPDATE, {"s": "x"}, "MetricUpdate.schema: expected a map"),
    ("sync not bool", K.INGEST, batch_body() | {"sy": 1}, "Ingest.sync: expected true or"),
    ("batch not bytes", K.INGEST, batch_body() | {"b": []},
     "Ingest.batch: expected a byte string holding the batch map"),
    ("batch bytes not a map", K.INGEST, batch_body() | {"b": cbor2.dumps([1])},
     "Ingest.batch: expected a map"),
    ("batch bytes not CBOR", K.INGEST, batch_body() | {"b": b"\xff\x00"},
     "Ingest.batch: invalid CBOR"),
    ("batch unknown key", K.INGEST, batch_body(q=1), "Ingest.batch: unknown key 'q'"),
    ("batch missing values", K.INGEST, batch_body(v=...), "Ingest.batch.values: missing"),
    ("values too short", K.INGEST, batch_body(v=i64s(1, 2, 3)),
     "Ingest.batch.values: 24 bytes, expected 32 for 4 events"),
    ("ragged account ids", K.INGEST, batch_body(a=CBORTag(71, bytes(12))),
     "Ingest.batch.account_ids: 12 bytes is not a whole number of 8-byte items"),
    ("account ids wrong tag", K.INGEST, batch_body(a=i64s(1, 2, 3, 4)),
     "Ingest.batch.account_ids: expected a typed array (tag 71"),
    ("account ids as a list", K.INGEST, batch_body(a=[1, 2, 3, 4]),
     "Ingest.batch.account_ids: expected a typed array"),
    ("typed array over text", K.INGEST, batch_body(v=CBORTag(79, "x" * 32)),
     "Ingest.batch.values: expected a typed array"),
    ("timestamps wrong length", K.INGEST, batch_body(t=i64s(1)),
     "Ingest.batch.timestamps: 8 bytes, expected 32"),
    ("metric index out of range", K.INGEST, batch_body(mi=CBORTag(64, bytes([0, 1, 2, 0]))),
     "Ingest.batch.metric_index: index 2 but only 2 metric codes"),
    ("uint16 index out of range", K.INGEST, batch_body(mi=CBORTag(69, bytes(6) + b"\x00\x01")),
     "Ingest.batch.metric_index: index 256 but only 2 metric codes"),
    ("metric index wrong tag", K.INGEST, batch_body(mi=CBORTag(71, bytes(32))),
     "Ingest.batch.metric_index: expected a typed array (tag 64 or tag 69"),
    ("operation type 3", K.INGEST, batch_body(o=CBORTag(64, bytes([0, 3, 0, 0]))),
     "Ingest.batch.operation_types: 3 is not an operation type"),
    ("bad code in table", K.INGEST, batch_body(m=["api_calls", "bad code"]),
     "Ingest.batch.metric_codes[1]: metric code must be"),
    ("code listed twice", K.INGEST, batch_body(m=["api_calls", "api_calls"]),
     "Ingest.batch.metric_codes: a metric code is listed twice"),
    ("property entry not a triple", K.INGEST, batch_body(p=[["k", ["v"]]]),
     "Ingest.batch.properties[0]: expected [key, values, index]"),
    ("property index too short", K.INGEST, batch_body(p=[["k", ["v"], u8s(1, 0)]]),
     "Ingest.batch.properties[0].index: 2 bytes, expected 4 for 4 events"),
    ("property index beyond its table", K.INGEST, batch_body(p=[["k", ["v"], u8s(0, 2, 0, 0)]]),
     "Ingest.batch.properties[0].index: index 2 but only 1 values"),
    ("too many properties", K.INGEST,
     batch_body(p=[[f"k{i}", ["v"], u8s(0, 1, 0, 0)] for i in range(17)]),
     "Ingest.batch.properties: event 1 has 17 properties, at most 16"),
    ("property value too long", K.INGEST, batch_body(p=[["k", ["é" * 33], u8s(0, 0, 1, 0)]]),
     "Ingest.batch.properties[0].values[0]: expected text of at most 64 bytes"),
    ("property key too long", K.INGEST, batch_body(p=[["€" * 11, ["v"], u8s(0, 0, 1, 0)]]),
     "Ingest.batch.properties[0]: property key must be text of 1-32 bytes"),
    ("empty property key", K.INGEST, batch_body(p=[["", ["v"], u8s(1, 0, 0, 0)]]),
     "Ingest.batch.properties[0]: property key must be text of 1-32 bytes"),
    ("property key twice", K.INGEST,
     batch_body(p=[["k", ["v"], u8s(1, 0, 0, 0)], ["k", ["w"], u8s(0, 1, 0, 0)]]),
     "Ingest.batch.properties[1]: property key 'k' is not text or is listed twice"),
    ("property value not text", K.INGEST, batch_body(p=[["k", [1], u8s(0, 0, 0, 1)]]),
     "Ingest.batch.properties[0].values[0]: expected text"),
    ("properties not an array", K.INGEST, batch_body(p={"k": "v"}),
     "Ingest.batch.properties: expected an array"),
    ("event id too long", K.INGEST, batch_body(e=b"x" * 65, eo=u32s(0, 0, 65, 65, 65)),
     "Ingest.batch.event_ids[1]: an event id is 1-64 bytes (0 for none), got 65"),
    ("event id offsets going back", K.INGEST, batch_body(e=b"abcde", eo=u32s(0, 5, 3, 5, 5)),
     "Ingest.batch.event_ids[1]: an event id is 1-64 bytes (0 for none), got -2"),
    ("event id offsets not covering the ids", K.INGEST,
     batch_body(e=b"abc", eo=u32s(0, 1, 2, 2, 2)),
     "Ingest.batch.event_id_offsets: must start at 0 and end at 3"),
    ("event id offsets too short", K.INGEST, batch_body(e=b"abc", eo=u32s(0, 3)),
     "Ingest.batch.event_id_offsets: 8 bytes, expected 20 for 5 events"),
    ("event ids not UTF-8", K.INGEST, batch_body(e=b"\xff\xfe", eo=u32s(0, 2, 2, 2, 2)),
     "Ingest.batch.event_ids: not valid UTF-8"),
    ("event id cut inside a character", K.INGEST,
     batch_body(e="éé".encode(), eo=u32s(0, 1, 4, 4, 4)),
     "Ingest.batch.event_ids[1]: does not start on a UTF-8 character"),
    ("event ids without offsets", K.INGEST, batch_body(eo=...),
     "Ingest.batch.event_ids: keys 'e' and 'eo' come together"),
    ("event ids not bytes", K.INGEST, batch_body(e=["a", None, None, None]),
     "Ingest.batch.event_ids: expected a byte string"),
    # The event count is checked before any other column is looked at.
    ("too many events", K.INGEST, batch_body(a=CBORTag(71, bytes(8 * TOO_MANY)), v=i64s(1), m=[5]),
     f"Ingest.batch: {TOO_MANY} events, at most {limits.events_per_batch_max} per batch"),
]
# fmt: on


@pytest.mark.parametrize(
    ("name", "kind", "bad_body", "expected"), BAD_BODIES, ids=[row[0] for row in BAD_BODIES]
)
def test_bad_body_is_a_bad_request_naming_the_field(
    name: str, kind: m.Kind, bad_body: object, expected: str
) -> None:
    server = ServerCodec()
    server.feed(encode_frame([int(kind), 77, bad_body]) + ClientCodec().encode_request(78, QUERY))
    got = server.next_frame()
    assert isinstance(got, BadRequest), got
    assert (got.request_id, got.kind) == (77, int(kind))
    assert got.message.startswith(expected), got.message
    # The connection carries on: the next request decodes normally.
    same(server.next_frame(), m.RequestFrame(request_id=78, message=QUERY))


def test_unknown_kind_is_a_bad_request() -> None:
    server = ServerCodec()
    server.feed(encode_frame([99, 5, {}]) + encode_frame([-1, 6, {}]))
    assert server.next_frame() == BadRequest(
        request_id=5, kind=99, message="unknown request kind 99"
    )
    assert server.next_frame() == BadRequest(
        request_id=6, kind=-1, message="unknown request kind -1"
    )


def test_unicode_lengths_are_counted_in_utf8_bytes() -> None:
    server = ServerCodec()
    server.feed(encode_frame([int(K.QUERY), 1, body(QUERY, f=[["é" * 16, "€" * 21]])]))
    assert isinstance(server.next_frame(), m.RequestFrame)  # 32 and 63 bytes: just fit
    server.feed(encode_frame([int(K.QUERY), 2, body(QUERY, f=[["é" * 17, "v"]])]))
    got = server.next_frame()
    assert isinstance(got, BadRequest) and got.message.startswith("Query.filters[0][0]:")


def test_interpreted_cbor_tags_stay_inert() -> None:
    """A regex, a date or a shared reference is just an unexpected value, never evaluated."""
    for tag, value in ((35, "(a+)+$"), (1, 0), (0, "2024-01-01T00:00:00Z"), (29, 0), (258, [1])):
        server = ServerCodec()
        server.feed(encode_frame([int(K.METRIC_GET), 3, {"c": CBORTag(tag, value)}]))
        got = server.next_frame()
        assert isinstance(got, BadRequest) and got.message.startswith("MetricGet.code:")


# --------------------------------------------------------------------------- random input

_WIRE_KEYS = sorted(
    {
        f.key
        for spec in [*bodies.REQUESTS.values(), *bodies.REPLIES.values(), *bodies.PUSHES.values()]
        for f in spec.fields
    }
    | {"m", "mi", "a", "v", "t", "o", "p", "e", "eo", "code", "agg", "dims", "thresholds"}
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.sampled_from([0, 1, -1, 2**63, U64_MAX, I64_MIN])
    | st.text(max_size=8)
    | st.binary(max_size=24)
    | st.floats(allow_nan=False)
    | st.builds(CBORTag, st.sampled_from([2, 3, 64, 69, 71, 79, 1, 35]), st.binary(max_size=24))
)
CBOR_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(_WIRE_KEYS) | st.text(max_size=3), inner, max_size=6)
    ),
    max_leaves=10,
)
Outcome = m.RequestFrame | BadRequest | m.ResponseFrame | errors.ProtocolError


def outcomes(codec: ServerCodec | ClientCodec, data: bytes) -> list[Outcome]:
    """Everything the codec yields for ``data``: frames, then possibly one ProtocolError."""
    codec.feed(data)
    got: list[Outcome] = []
    try:
        while (frame := codec.next_frame()) is not None:
            got.append(frame)
    except errors.ProtocolError as exc:
        assert "internal error" not in exc.message, exc.message
        got.append(exc)
    return got


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_only_decode_or_raise_protocol_error(data: bytes) -> None:
    outcomes(ServerCodec(), data)
    outcomes(client_waiting(K.QUERY, 1), data)


@FAST
@given(st.binary(min_size=1, max_size=300))
def test_random_payload_in_a_valid_frame(payload: bytes) -> None:
    framed = len(payload).to_bytes(4, "big") + payload
    outcomes(ServerCodec(), framed)
    outcomes(client_waiting(K.INGEST, 1), framed)


@FAST
@given(st.sampled_from(sorted(m.REQUEST_OF)), CBOR_VALUES)
def test_random_request_bodies_are_decoded_or_refused(kind: m.Kind, random_body: object) -> None:
    [got] = outcomes(ServerCodec(), encode_frame([int(kind), 9, random_body]))
    assert isinstance(got, m.RequestFrame | BadRequest)
    if isinstance(got, m.RequestFrame):  # whatever is accepted must survive a round trip
        [again] = outcomes(ServerCodec(), ClientCodec().encode_request(9, got.message))
        same(again, got)


@FAST
@given(st.sampled_from(sorted(m.REPLY_OF)), st.sampled_from([0, 0, 1, 2, 99]), CBOR_VALUES)
def test_random_reply_bodies_are_decoded_or_fatal(
    kind: m.Kind, status: int, random_body: object
) -> None:
    [got] = outcomes(client_waiting(kind, 9), encode_frame([status, 9, random_body]))
    assert isinstance(got, m.ResponseFrame | errors.ProtocolError)


@FAST
@given(st.sampled_from(sorted(m.PUSH_OF)), CBOR_VALUES)
def test_random_push_bodies_are_decoded_or_fatal(kind: m.PushKind, random_body: object) -> None:
    client = ClientCodec()
    client.feed(encode_frame([int(kind), 9, random_body]))
    try:
        got = client.next_event()
    except errors.ProtocolError as exc:
        assert "internal error" not in exc.message, exc.message
        return
    assert isinstance(got, m.PushFrame) and got.subscription_id == 9


@FAST
@given(st.sampled_from(REQUESTS), st.data())
def test_mutated_request_frames(message: m.Request, data: st.DataObject) -> None:
    frame = bytearray(ClientCodec().encode_request(3, message))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(4, len(frame) - 1))  # keep the prefix: exercise the payload
        frame[at] = data.draw(st.integers(0, 255))
    for got in outcomes(ServerCodec(), bytes(frame)):
        assert isinstance(got, m.RequestFrame | BadRequest | errors.ProtocolError)


_I64S = st.integers(I64_MIN, I64_MAX)
_TEXT = st.text(min_size=1, max_size=8)


@st.composite
def batches(draw: st.DrawFn) -> m.EventBatch:
    n = draw(st.integers(0, 12))
    codes = draw(
        st.lists(
            st.from_regex(r"[a-z0-9_.:\-]{1,8}", fullmatch=True),
            min_size=1 if n else 0,
            max_size=4,
            unique=True,
        )
    )

    def column(values: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(values, min_size=n, max_size=n))

    def maybe(values: st.SearchStrategy[Any]) -> list[Any] | None:
        return column(values) if draw(st.booleans()) else None

    stamps, ops = maybe(_I64S), maybe(st.integers(0, 2))
    props = maybe(st.none() | st.dictionaries(_TEXT, st.text(max_size=8), max_size=3))
    event_ids = maybe(st.none() | _TEXT)
    return m.EventBatch(
        metric_codes=tuple(codes),
        metric_index=array(
            draw(st.sampled_from("BH")), column(st.integers(0, len(codes) - 1)) if codes else []
        ),
        account_ids=array("Q", column(st.integers(0, U64_MAX))),
        values=array("q", column(_I64S)),
        timestamps=None if stamps is None else array("q", stamps),
        operation_types=None if ops is None else array("B", ops),
        properties=None if props is None else tuple(props),
        event_ids=None if event_ids is None else tuple(event_ids),
    )


@settings(max_examples=100, deadline=None)
@given(batches())
def test_batches_round_trip(batch: m.EventBatch) -> None:
    message = m.Ingest(partition=1, producer_id=2, seq=3, sync=True, catalog_version=4, batch=batch)
    [got] = outcomes(ServerCodec(), ClientCodec().encode_request(1, message))
    same(got, m.RequestFrame(request_id=1, message=message))


def test_a_batch_that_would_build_far_more_than_its_bytes_is_refused() -> None:
    """The batch map is a byte string inside the frame: its own contents are weighed too."""
    bomb = cbor2.dumps({"p": [[]] * 200_000})  # ~200 KB that would build 200,000 lists
    server = ServerCodec()
    server.feed(encode_frame([int(K.INGEST), 5, batch_body() | {"b": bomb}]))
    got = server.next_frame()
    assert isinstance(got, BadRequest)
    assert got.message.startswith("Ingest.batch: CBOR item too complex"), got.message
