"""The wire codec: every message whole, byte by byte and back to back; framing; the client side.

Tables first (h11 ``test_io.py`` style): each request and reply of ``wire_cases`` goes through
the real client and server codecs. Bad bodies and random input are in
``test_codec_bad_input.py``.
"""

from __future__ import annotations

import re
from array import array

import cbor2
import pytest
from cbor2 import CBORTag

from tests.wire_cases import (
    ALERT,
    OK,
    PUSHES,
    REPLIES,
    REQUEST_OF_KIND,
    REQUESTS,
    U64_MAX,
    client_waiting,
    drain,
    ident,
    same,
)
from unimeter import errors, limits
from unimeter.wire import bodies
from unimeter.wire import messages as m
from unimeter.wire.codec import (
    ANNOUNCED_LIMITS,
    BadRequest,
    ClientCodec,
    FrameDecoder,
    ServerCodec,
    announced_limits,
    encode_frame,
)


def test_tables_cover_every_message() -> None:
    assert {type(msg) for msg in REQUESTS} == set(m.REQUEST_OF.values())
    assert {type(msg) for _, _, msg in REPLIES} == {*m.REPLY_OF.values(), m.ErrorReply}
    assert {type(msg) for _, msg in PUSHES} == set(m.PUSH_OF.values())


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize("message", REQUESTS, ids=ident)
def test_request_whole(message: m.Request) -> None:
    server = ServerCodec()
    server.feed(ClientCodec().encode_request(7, message))
    same(server.next_frame(), m.RequestFrame(request_id=7, message=message))
    assert server.next_frame() is None


@pytest.mark.parametrize("message", REQUESTS, ids=ident)
def test_request_byte_by_byte(message: m.Request) -> None:
    frame = ClientCodec().encode_request(U64_MAX, message)
    server = ServerCodec()
    for i in range(len(frame) - 1):
        server.feed(frame[i : i + 1])
        assert server.next_frame() is None
    server.feed(frame[-1:])
    same(server.next_frame(), m.RequestFrame(request_id=U64_MAX, message=message))


@pytest.mark.parametrize("message", REQUESTS, ids=ident)
def test_request_back_to_back(message: m.Request) -> None:
    client = ClientCodec()
    follow = m.MetricGet(code="after")
    server = ServerCodec()
    server.feed(client.encode_request(1, message) + client.encode_request(2, follow))
    got = drain(server)
    assert len(got) == 2
    same(got[0], m.RequestFrame(request_id=1, message=message))
    same(got[1], m.RequestFrame(request_id=2, message=follow))


# --------------------------------------------------------------------------- replies


@pytest.mark.parametrize(("kind", "status", "message"), REPLIES, ids=str)
def test_reply_whole(kind: m.Kind, status: int, message: m.Reply) -> None:
    client = client_waiting(kind, 5)
    client.feed(ServerCodec().encode_response(5, status, message))
    same(
        client.next_frame(),
        m.ResponseFrame(request_id=5, status=status, kind=kind, message=message),
    )
    assert client.next_frame() is None
    assert client.in_flight == 0


@pytest.mark.parametrize(("kind", "status", "message"), REPLIES, ids=str)
def test_reply_byte_by_byte(kind: m.Kind, status: int, message: m.Reply) -> None:
    client = client_waiting(kind, 5)
    frame = ServerCodec().encode_response(5, status, message)
    for i in range(len(frame) - 1):
        client.feed(frame[i : i + 1])
        assert client.next_frame() is None
    client.feed(frame[-1:])
    same(
        client.next_frame(),
        m.ResponseFrame(request_id=5, status=status, kind=kind, message=message),
    )


@pytest.mark.parametrize(("kind", "status", "message"), REPLIES, ids=str)
def test_reply_back_to_back_out_of_order(kind: m.Kind, status: int, message: m.Reply) -> None:
    client = ClientCodec()
    client.encode_request(1, m.MetricGet(code="first"))
    client.encode_request(2, REQUEST_OF_KIND[kind])
    server = ServerCodec()
    first = server.encode_response(1, errors.Status.NOT_FOUND, m.ErrorReply(message="gone"))
    client.feed(server.encode_response(2, status, message) + first)
    got = drain(client)
    assert [frame.request_id for frame in got] == [2, 1]
    same(got[0].message, message)
    assert got[1].message == m.ErrorReply(message="gone") and got[1].kind is m.Kind.METRIC_GET


# --------------------------------------------------------------------------- pushes


@pytest.mark.parametrize(("sid", "message"), PUSHES, ids=str)
def test_push_whole_and_byte_by_byte(sid: int, message: m.Push) -> None:
    frame = ServerCodec().encode_push(sid, message)
    client = ClientCodec()
    client.feed(frame)
    assert client.next_event() == m.PushFrame(subscription_id=sid, message=message)
    assert client.next_event() is None
    for i in range(len(frame) - 1):
        client.feed(frame[i : i + 1])
        assert client.next_event() is None
    client.feed(frame[-1:])
    assert client.next_event() == m.PushFrame(subscription_id=sid, message=message)


def test_pushes_interleave_with_replies_in_frame_order() -> None:
    """A subscription's pushes may follow the reply that made it live in the same read."""
    client = client_waiting(m.Kind.SUBSCRIBE_ALERTS, 4)
    server = ServerCodec()
    live = m.Subscribed(alerts=(ALERT,), next_cursor=None, live_from=4)
    push = m.AlertsPush(partition=0, alerts=(ALERT,))
    client.feed(server.encode_response(4, OK, live) + server.encode_push(1, push))
    first, second = drain_events(client)
    assert isinstance(first, m.ResponseFrame) and first.message == live
    assert second == m.PushFrame(subscription_id=1, message=push)


def test_a_push_is_a_protocol_error_for_next_frame() -> None:
    """Code that never subscribes (peer links, benchmarks) keeps a reply-only loop."""
    client = ClientCodec()
    sid, push = PUSHES[0]
    client.feed(ServerCodec().encode_push(sid, push))
    with pytest.raises(errors.ProtocolError, match="never subscribed"):
        client.next_frame()


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ([-9, 1, {}], "unknown push kind -9"),
        ([-1, 1, {"p": 0}], "malformed ALERTS push: AlertsPush.alerts: missing"),
        ([-1, 1, {"p": 0, "al": [[1, 2]]}], "malformed ALERTS push: AlertsPush.alerts[0]"),
        ([-2, 1, {"p": 0, "st": -1, "msg": ""}], "malformed SUBSCRIPTION_END push"),
        ([-1, -1, {"p": 0, "al": []}], "request id -1 is outside"),
    ],
)
def test_malformed_pushes_are_protocol_errors(item: list[object], expected: str) -> None:
    client = ClientCodec()
    client.feed(encode_frame(item))
    with pytest.raises(errors.ProtocolError, match=re.escape(expected)):
        client.next_event()


def test_pushes_tolerate_unknown_keys() -> None:
    client = ClientCodec()
    client.feed(encode_frame([-1, 2, {"p": 1, "al": [], "new": [1, 2]}]))
    assert client.next_event() == m.PushFrame(
        subscription_id=2, message=m.AlertsPush(partition=1, alerts=())
    )


def drain_events(codec: ClientCodec) -> list[m.ResponseFrame | m.PushFrame]:
    out: list[m.ResponseFrame | m.PushFrame] = []
    while (frame := codec.next_event()) is not None:
        out.append(frame)
    return out


# --------------------------------------------------------------------------- framing


def test_oversized_prefix_is_refused_before_buffering() -> None:
    server = ServerCodec()
    server.feed(b"\xff\xff\xff\xff")
    with pytest.raises(errors.ProtocolError, match="exceeds frame_bytes_max"):
        server.next_frame()
    decoder = FrameDecoder()
    decoder.feed((limits.frame_bytes_max + 1).to_bytes(4, "big") + b"x" * 100_000)
    assert decoder.buffered_bytes == 0
    with pytest.raises(errors.ProtocolError):
        decoder.next_item()


def test_prefix_split_across_feeds_is_vetted_when_complete() -> None:
    decoder = FrameDecoder(frame_bytes_max=64)
    decoder.feed(b"\x00\x00")
    assert decoder.next_item() is None
    decoder.feed(b"\x00\x41" + b"x" * 1000)  # 65 bytes announced
    assert decoder.buffered_bytes == 0
    with pytest.raises(errors.ProtocolError, match="65 bytes"):
        decoder.next_item()


def test_next_prefix_is_vetted_before_its_bytes_are_kept() -> None:
    decoder = FrameDecoder(frame_bytes_max=64)
    decoder.feed(encode_frame(1) + b"\x00\x00")
    assert decoder.next_item() == 1
    decoder.feed(b"\xff\xff" + b"x" * 1000)
    assert decoder.buffered_bytes == 0  # refused: nothing of that frame is kept
    with pytest.raises(errors.ProtocolError):
        decoder.next_item()


def test_frame_bytes_max_is_inclusive() -> None:
    payload = cbor2.dumps(["x" * 61])  # array head, text head (2 bytes), 61 characters
    assert len(payload) == 64
    decoder = FrameDecoder(frame_bytes_max=64)
    decoder.feed(len(payload).to_bytes(4, "big") + payload)
    assert decoder.next_item() == ["x" * 61]


def test_zero_length_frame_is_a_protocol_error() -> None:
    server = ServerCodec()
    server.feed(b"\x00\x00\x00\x00")
    with pytest.raises(errors.ProtocolError, match="empty frame"):
        server.next_frame()


@pytest.mark.parametrize("codec", [ServerCodec, ClientCodec], ids=ident)
def test_protocol_error_is_sticky(codec: type[ServerCodec | ClientCodec]) -> None:
    side = codec()
    side.feed(encode_frame([1, 2]))
    with pytest.raises(errors.ProtocolError):
        side.next_frame()
    side.feed(encode_frame([int(m.Kind.METRIC_LIST), 1, {}]))
    with pytest.raises(errors.ProtocolError, match="array of 3"):
        side.next_frame()


def test_frame_after_a_partial_one_is_kept() -> None:
    client = ClientCodec()
    a = client.encode_request(1, m.MetricList())
    b = client.encode_request(2, m.ClusterStatus())
    server = ServerCodec()
    server.feed(a + b[:3])
    assert [f.request_id for f in drain(server)] == [1]
    server.feed(b[3:])
    assert [f.request_id for f in drain(server)] == [2]


_HEAD = bytes.fromhex("830901")  # [9, 1, ...: an array of 3, kind QUERY, request id 1
_HUGE = b"\x00\x00\x00\x0f\xff\xff\xff\xff"

# fmt: off
PROTOCOL_ERRORS: list[tuple[str, bytes]] = [
    ("not an array", cbor2.dumps({"a": 1})),
    ("two items", cbor2.dumps([9, 1])),
    ("four items", cbor2.dumps([9, 1, {}, 0])),
    ("text kind", cbor2.dumps(["query", 1, {}])),
    ("bool kind", cbor2.dumps([True, 1, {}])),
    ("float id", cbor2.dumps([9, 1.0, {}])),
    ("negative id", cbor2.dumps([9, -1, {}])),
    ("bignum id", cbor2.dumps([9, 2**64, {}])),
    ("trailing bytes", cbor2.dumps([9, 1, {}]) + b"\x00"),
    ("truncated item", cbor2.dumps([9, 1, {"a": 1}])[:-1]),
    ("break byte", b"\xff"),
    ("indefinite array", b"\x9f\x09\x01\xa0\xff"),
    ("indefinite text", _HEAD + b"\x7f\x61a\xff"),
    ("deep nesting", _HEAD + b"\x81" * 40 + b"\x00"),
    ("duplicate keys", _HEAD + b"\xa2\x61a\x01\x61a\x02"),
    ("integer map key", cbor2.dumps([9, 1, {1: 2}])),
    ("bad utf-8", _HEAD + b"\x61\xff"),
    ("huge declared array", _HEAD + b"\x9b" + _HUGE),
    ("huge declared map", _HEAD + b"\xbb" + _HUGE),
    ("huge declared bytes", _HEAD + b"\x5b" + _HUGE),
]
# fmt: on


@pytest.mark.parametrize(("name", "payload"), PROTOCOL_ERRORS, ids=[n for n, _ in PROTOCOL_ERRORS])
def test_bad_frames_are_protocol_errors(name: str, payload: bytes) -> None:
    frame = len(payload).to_bytes(4, "big") + payload
    server = ServerCodec()
    server.feed(frame)
    with pytest.raises(errors.ProtocolError):
        server.next_frame()
    client = client_waiting(m.Kind.QUERY, 1)
    client.feed(frame)
    with pytest.raises(errors.ProtocolError):
        client.next_frame()


def test_peer_frames_pass_their_items_through() -> None:
    """Node-to-node Raft traffic: the consensus layer decodes the items, not this codec."""
    server = ServerCodec()
    server.feed(encode_frame([int(m.Kind.PEER), 0, [[1, 2], {"x": 3}]]))
    server.feed(encode_frame([int(m.Kind.PEER), 0, {"not": "a list"}]))
    assert server.next_frame() == m.PeerFrame(items=[[1, 2], {"x": 3}])
    refused = server.next_frame()
    assert isinstance(refused, BadRequest) and refused.kind == m.Kind.PEER


# --------------------------------------------------------------------------- client side


def test_reply_to_an_unknown_request_is_a_protocol_error() -> None:
    client = client_waiting(m.Kind.QUERY, 1)
    client.feed(ServerCodec().encode_response(2, OK, m.Deleted(catalog_version=1)))
    with pytest.raises(errors.ProtocolError, match="request id 2, which is not in flight"):
        client.next_frame()


def test_forgotten_request_reply_is_dropped_once() -> None:
    client = ClientCodec()
    client.encode_request(1, m.MetricList())
    client.encode_request(2, m.MetricDelete(code="x"))
    client.forget(1)
    with pytest.raises(ValueError, match="still awaiting"):
        client.encode_request(1, m.MetricList())  # its late reply could be taken for the new one
    server = ServerCodec()
    late = server.encode_response(1, OK, m.SchemaList(schemas=(), catalog_version=0))
    client.feed(late + server.encode_response(2, OK, m.Deleted(catalog_version=3)))
    assert [(f.request_id, f.message) for f in drain(client)] == [(2, m.Deleted(catalog_version=3))]
    client.encode_request(1, m.MetricList())  # the id is free again once its reply came
    client.feed(late)
    assert drain(client)[0].message == m.SchemaList(schemas=(), catalog_version=0)


def test_forgotten_ids_are_bounded() -> None:
    client = ClientCodec()
    for request_id in range(limits.in_flight_requests_per_connection_max + 10):
        client.encode_request(request_id, m.MetricList())
        client.forget(request_id)
    client.encode_request(0, m.MetricList())  # the oldest forgotten ids were let go
    assert client.in_flight == 1


def test_request_id_rules() -> None:
    client = ClientCodec()
    client.encode_request(0, m.MetricList())
    for bad in (0, -1, 2**64):
        with pytest.raises(ValueError):
            client.encode_request(bad, m.MetricList())
    assert client.in_flight == 1


def test_oversized_request_is_refused_locally_and_not_remembered() -> None:
    client = ClientCodec(frame_bytes_max=64)
    with pytest.raises(errors.InvalidRequestError, match="exceeds frame_bytes_max=64"):
        client.encode_request(1, m.Hello(version=1, client_name="x" * 100))
    assert client.in_flight == 0


def test_protocol_status_from_the_server_is_fatal() -> None:
    client = client_waiting(m.Kind.QUERY, 1)
    client.feed(
        ServerCodec().encode_response(0, errors.Status.PROTOCOL, m.ErrorReply(message="junk"))
    )
    with pytest.raises(errors.ProtocolError, match="junk"):
        client.next_frame()


# fmt: off
MALFORMED_REPLIES: list[tuple[int, object, str]] = [
    (OK, {"v": [0, 0, None, None, None, 0], "ps": 0}, "AggReply.period_end_us: missing"),
    (OK, {"v": [0, -1, None, None, None, 0], "ps": 0, "pe": 1}, "AggReply.value.count"),
    (OK, {"v": [0, 0], "ps": 0, "pe": 1}, "AggReply.value: expected a AggValue as an array"),
    (OK, {"v": [0, 0, None, None, 2**63, 0], "ps": 0, "pe": 1}, "AggReply.value.last_timestamp"),
    (OK, {"v": [CBORTag(2, bytes(33)), 0, None, None, None, 0], "ps": 0, "pe": 1},
     "AggReply.value.sum"),
    (OK, [], "AggReply: the body must be a map"),
    (errors.Status.NOT_LEADER, {"ld": "x"}, "ErrorReply.message: missing"),
    (2**32, {"msg": "x"}, "status 4294967296"),
]
# fmt: on


@pytest.mark.parametrize(("status", "reply_body", "expected"), MALFORMED_REPLIES)
def test_malformed_reply_is_a_protocol_error(
    status: int, reply_body: object, expected: str
) -> None:
    client = client_waiting(m.Kind.QUERY, 4)
    client.feed(encode_frame([status, 4, reply_body]))
    with pytest.raises(errors.ProtocolError) as caught:
        client.next_frame()
    assert expected in caught.value.message


def test_replies_tolerate_unknown_keys() -> None:
    client = client_waiting(m.Kind.METRIC_DELETE, 4)
    client.feed(encode_frame([0, 4, {"cv": 3, "added_later": [1, 2]}]))
    got = client.next_frame()
    assert got is not None and got.message == m.Deleted(catalog_version=3)


def test_encode_response_checks_status_and_size() -> None:
    server = ServerCodec(frame_bytes_max=64)
    with pytest.raises(ValueError):
        server.encode_response(1, OK, m.ErrorReply(message="x"))
    with pytest.raises(ValueError):
        server.encode_response(1, errors.Status.NOT_FOUND, m.Deleted(catalog_version=1))
    with pytest.raises(errors.ServerError, match="exceeds frame_bytes_max=64"):
        server.encode_response(1, errors.Status.INTERNAL, m.ErrorReply(message="x" * 100))


def test_announced_limits_match_the_limits_module() -> None:
    announced = announced_limits(frame_bytes_max=1 << 20)
    assert set(announced) == set(ANNOUNCED_LIMITS)
    assert announced["frame_bytes_max"] == 1 << 20
    assert announced["events_per_batch_max"] == limits.events_per_batch_max


# --------------------------------------------------------------------------- wire format


def test_typed_arrays_are_little_endian_rfc8746() -> None:
    batch = m.EventBatch(
        metric_codes=("a",),
        metric_index=array("B", [0]),
        account_ids=array("Q", [1]),
        values=array("q", [-2]),
        timestamps=array("q", [m.NO_TIMESTAMP]),
    )
    encoded = bodies.encode_body(
        m.Ingest(partition=0, producer_id=0, seq=1, sync=False, catalog_version=0, batch=batch)
    )["b"]
    assert isinstance(encoded, bytes)  # the batch map travels as one byte string
    wire = cbor2.loads(encoded)
    assert wire["a"] == CBORTag(71, bytes.fromhex("0100000000000000"))
    assert wire["v"] == CBORTag(79, bytes.fromhex("feffffffffffffff"))
    assert wire["t"] == CBORTag(79, bytes.fromhex("0000000000000080"))
    assert wire["mi"] == CBORTag(64, b"\x00")
    assert set(wire) == {"m", "mi", "a", "v", "t"}  # absent columns are omitted


# The worked examples of docs/protocol.md, byte for byte.
DOC_HELLO = "0000000e830101a2617602616e6464656d6f"
DOC_INGEST = (
    "00000090830802a6617005637069641b11223344556677886373657101627379f5626376036162586ba7616d"
    "81696170695f63616c6c73626d69d8404200006161d847502a00000000000000070000000000000061"
    "76d84f500100000000000000a0252600000000006170818366726567696f6e81626575d840420100616542"
    "653162656fd8464c000000000200000002000000"
)
DOC_INGEST_REPLY = "00000019830002a5626e7302626e6400626e7200626c6f1829626c6911"
DOC_QUERY = (
    "00000032830903a66170056161182a616d696170695f63616c6c7361731b00060dd71021200061651b000610"
    "46ad35c000636d696e11"
)
DOC_NOT_LEADER = "00000024830203a2636d73676a6e6f74206c6561646572626c646d31302e302e302e323a37303031"
DOC_SUBSCRIBE = "00000012831004a46170056173016161182a62616302"
DOC_SUBSCRIBED = "0000000c830004a262616c80626c6603"
DOC_ALERTS_PUSH = (
    "00000029832001a261700562616c8186182a696170695f63616c6c7364736f667418641b00060dd71021200003"
)
DOC_SUBSCRIPTION_END = "00000014832101a361700562737401636d736764736c6f77"


def test_documented_examples() -> None:
    client = ClientCodec()
    assert client.encode_request(1, m.Hello(version=2, client_name="demo")).hex() == DOC_HELLO
    batch = m.EventBatch(
        metric_codes=("api_calls",),
        metric_index=array("B", [0, 0]),
        account_ids=array("Q", [42, 7]),
        values=array("q", [1, 2_500_000]),
        properties=({"region": "eu"}, None),
        event_ids=("e1", None),
    )
    ingest = m.Ingest(
        partition=5,
        producer_id=0x1122334455667788,
        seq=1,
        sync=True,
        catalog_version=3,
        batch=batch,
    )
    assert client.encode_request(2, ingest).hex() == DOC_INGEST
    query = m.Query(
        partition=5,
        account_id=42,
        metric_code="api_calls",
        start_us=1_704_067_200_000_000,
        end_us=1_706_745_600_000_000,
        min_index=17,
    )
    assert client.encode_request(3, query).hex() == DOC_QUERY
    client.feed(bytes.fromhex(DOC_INGEST_REPLY + DOC_NOT_LEADER))
    first, second = drain(client)
    assert first.message == m.IngestReply(
        n_stored=2, n_duplicates=0, n_rejected=0, rejected=(), last_offset=41, log_index=17
    )
    assert second.status == errors.Status.NOT_LEADER
    assert second.message == m.ErrorReply(message="not leader", leader="10.0.0.2:7001")


def test_documented_subscription_examples() -> None:
    client = ClientCodec()
    subscribe = m.SubscribeAlerts(partition=5, subscription_id=1, account_id=42, after_cursor=2)
    assert client.encode_request(4, subscribe).hex() == DOC_SUBSCRIBE
    client.feed(bytes.fromhex(DOC_SUBSCRIBED + DOC_ALERTS_PUSH + DOC_SUBSCRIPTION_END))
    reply, push, end = drain_events(client)
    assert isinstance(reply, m.ResponseFrame)
    assert reply.message == m.Subscribed(alerts=(), next_cursor=None, live_from=3)
    alert = m.StoredAlert(
        account_id=42,
        metric_code="api_calls",
        threshold_code="soft",
        value_at_cross=100,
        triggered_at_us=1_704_067_200_000_000,
        cursor=3,
    )
    assert push == m.PushFrame(
        subscription_id=1, message=m.AlertsPush(partition=5, alerts=(alert,))
    )
    assert end == m.PushFrame(
        subscription_id=1,
        message=m.SubscriptionEnd(partition=5, status=errors.Status.BACKPRESSURE, message="slow"),
    )
