"""``wire/fast_ingest.py`` against the generic codec it stands in for.

- ``ingest_frame`` writes byte for byte the frame ``encode_frame`` writes for the same INGEST.
- ``ingest_reply`` either reads a payload as the generic decoder reads it, or leaves it to the
  generic decoder (None) -- never accepts what the generic decoder refuses, whether the payload
  is a reply the node writes, a hand-made map, or random bytes.
- ``ClientCodec`` gives the same frames through either path, late replies included.
"""

from __future__ import annotations

from typing import Any

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.codec_checks import check_late_and_stray_replies, frame_of
from unimeter import errors
from unimeter.wire import messages as m
from unimeter.wire.batch import EventBatch
from unimeter.wire.bodies import decode_reply, encode_body
from unimeter.wire.codec import ClientCodec
from unimeter.wire.convert import BodyError
from unimeter.wire.fast_ingest import ingest_frame, ingest_reply
from unimeter.wire.frames import decode_item, encode_frame

SETTINGS = settings(max_examples=300, deadline=None)
u64 = st.one_of(
    st.integers(0, 30),
    st.sampled_from([23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)


def batch_of(n: int) -> EventBatch:
    return EventBatch(
        metric_codes=["api_calls"],
        metric_index=np.zeros(n, np.uint8),
        account_ids=np.arange(n, dtype=np.uint64),
        values=np.ones(n, np.int64),
    )


@SETTINGS
@given(u64, st.integers(0, 4095), u64, u64, st.booleans(), u64, st.integers(1, 40))
def test_an_ingest_frame_is_the_generic_frame(
    request_id: int, partition: int, pid: int, seq: int, sync: bool, cv: int, n: int
) -> None:
    message = m.Ingest(
        partition=partition,
        producer_id=pid,
        seq=seq,
        sync=sync,
        catalog_version=cv,
        batch=batch_of(n),
    )
    generic = encode_frame([int(m.Kind.INGEST), request_id, encode_body(message)])
    assert ingest_frame(request_id, message) == generic


def test_a_batch_past_the_one_byte_length_heads_is_framed_alike() -> None:
    for n in (2, 3, 40, 9000):  # byte strings of under 256, 65536 and more bytes
        message = m.Ingest(
            partition=1, producer_id=2, seq=3, sync=True, catalog_version=4, batch=batch_of(n)
        )
        generic = encode_frame([int(m.Kind.INGEST), 7, encode_body(message)])
        assert ingest_frame(7, message) == generic


def test_fields_of_unexpected_types_are_left_to_the_generic_encoder() -> None:
    base = dict(partition=1, producer_id=2, seq=3, sync=False, catalog_version=4)
    for field, bad in [("seq", -1), ("producer_id", 2**64), ("sync", 1), ("partition", True)]:
        message = m.Ingest(**{**base, field: bad}, batch=batch_of(2))  # type: ignore[arg-type]
        assert ingest_frame(1, message) is None
    good = m.Ingest(**base, batch=batch_of(2))  # type: ignore[arg-type]
    assert ingest_frame(-1, good) is None


def generic_reply(payload: bytes) -> tuple[int, m.IngestReply] | None:
    """What the generic path makes of an OK INGEST reply payload; None if it refuses it."""
    try:
        item = decode_item(payload)
    except ValueError:
        return None
    if type(item) is not list or len(item) != 3 or item[0] != 0 or type(item[0]) is not int:
        return None
    if type(item[1]) is not int or not 0 <= item[1] < 2**64:
        return None
    try:
        reply = decode_reply(m.IngestReply, item[2])
    except BodyError:
        return None
    assert isinstance(reply, m.IngestReply)
    return item[1], reply


replies = st.builds(
    m.IngestReply,
    n_stored=u64,
    n_duplicates=u64,
    n_rejected=u64,
    rejected=st.one_of(st.just(()), st.lists(st.tuples(u64, st.text(max_size=5)), max_size=2)
                       .map(tuple)),
    last_offset=st.none() | u64,
    log_index=u64,
)  # fmt: skip


@SETTINGS
@given(u64, replies)
def test_a_reply_the_node_writes_reads_as_the_generic_decoder_reads_it(
    request_id: int, reply: m.IngestReply
) -> None:
    payload = cbor2.dumps([0, request_id, encode_body(reply)])
    fast = ingest_reply(payload)
    if reply.rejected:
        assert fast is None  # rejections take the generic path
    else:
        assert fast == (request_id, reply) == generic_reply(payload)


values = st.one_of(u64, st.integers(-5, -1), st.none(), st.text(max_size=3), st.booleans())
reply_keys = st.sampled_from(["ns", "nd", "nr", "lo", "li", "rj", "x", "n"])


@SETTINGS
@given(
    st.one_of(st.just(0), st.integers(0, 30)),
    u64,
    st.lists(st.tuples(reply_keys, values), max_size=7),
    st.binary(max_size=2),
)
def test_a_hand_made_reply_is_read_only_as_the_generic_decoder_reads_it(
    status: int, request_id: int, pairs: list[tuple[str, Any]], tail: bytes
) -> None:
    # Built by hand to allow repeated keys, which the generic decoder refuses.
    body = bytes([0xA0 + len(pairs)]) + b"".join(
        cbor2.dumps(key) + cbor2.dumps(value) for key, value in pairs
    )
    payload = b"\x83" + cbor2.dumps(status) + cbor2.dumps(request_id) + body + tail
    fast = ingest_reply(payload)
    if fast is not None:
        assert fast == generic_reply(payload)


@SETTINGS
@given(st.binary(max_size=40))
def test_random_bytes_are_read_only_as_the_generic_decoder_reads_them(payload: bytes) -> None:
    fast = ingest_reply(payload)
    if fast is not None:
        assert fast == generic_reply(payload)


def test_non_minimal_integers_read_as_cbor_reads_them() -> None:
    payload = b"\x83\x00\x19\x00\x07\xa4bns\x1a\x00\x00\x00\x05bnd\x00bnr\x18\x01bli\x1b" + (
        9
    ).to_bytes(8, "big")
    assert ingest_reply(payload) == generic_reply(payload)
    assert ingest_reply(payload) is not None


def test_the_codec_answers_an_ingest_through_the_fast_path_as_through_the_generic_one() -> None:
    codec = ClientCodec()
    message = m.Ingest(
        partition=0, producer_id=1, seq=1, sync=False, catalog_version=0, batch=batch_of(3)
    )
    for request_id in (1, 2, 3):
        codec.encode_request(request_id, message)
    plain = m.IngestReply(
        n_stored=3, n_duplicates=0, n_rejected=0, rejected=(), last_offset=9, log_index=4
    )
    rejecting = m.IngestReply(
        n_stored=2, n_duplicates=0, n_rejected=1, rejected=((1, "no"),), last_offset=9,
        log_index=4,
    )  # fmt: skip
    codec.feed(frame_of(cbor2.dumps([0, 1, encode_body(plain)])))
    codec.feed(frame_of(cbor2.dumps([0, 2, encode_body(rejecting)])))
    first, second = codec.next_frame(), codec.next_frame()
    assert first == m.ResponseFrame(request_id=1, status=0, kind=m.Kind.INGEST, message=plain)
    assert second == m.ResponseFrame(request_id=2, status=0, kind=m.Kind.INGEST, message=rejecting)
    check_late_and_stray_replies(codec, 3, encode_body(plain))


def test_a_plain_reply_to_a_request_of_another_kind_takes_the_generic_path() -> None:
    codec = ClientCodec()
    codec.encode_request(5, m.MetricList())
    body = {"ns": 1, "nd": 0, "nr": 0, "li": 2}
    codec.feed(frame_of(cbor2.dumps([0, 5, body])))
    with pytest.raises(errors.ProtocolError, match="malformed METRIC_LIST reply"):
        codec.next_frame()
