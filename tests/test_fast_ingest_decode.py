"""The node's direct decoder of small INGESTs against the generic decoder it stands in for.

``fast.ingest`` (and ``batch.decode_small_batch`` under it) either decodes a body to the very
message the generic decoder makes of it, or leaves it to the generic decoder (None) -- never
accepting what the generic decoder refuses. Bodies a client writes (every column shape the
small path takes, and the ones it leaves alone), hand-broken ones from a table, and random
mutations (Hypothesis). The INGEST reply the node writes without the field table is byte for
byte the generic one. The node takes this path for every small plain INGEST, so every node
and simulator test that ingests a few events runs through it.
"""

from __future__ import annotations

from typing import Any

import cbor2
import numpy as np
import pytest
from cbor2 import CBORTag
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.examples import examples
from unimeter.wire import fast
from unimeter.wire import messages as m
from unimeter.wire.batch import (
    SMALL_BATCH_EVENTS_MAX,
    TAG_SINT64_LE,
    TAG_UINT8,
    TAG_UINT16_LE,
    TAG_UINT64_LE,
    EventBatch,
)
from unimeter.wire.bodies import decode_request, encode_body
from unimeter.wire.cborscan import needs_check
from unimeter.wire.codec import ServerCodec
from unimeter.wire.convert import BodyError
from unimeter.wire.frames import decode_item, encode_frame

SETTINGS = settings(max_examples=examples(200), deadline=None)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)


def generic(body: Any) -> m.Request | None:
    try:
        return decode_request(m.Kind.INGEST, body)
    except BodyError:
        return None


def received(message: m.Ingest) -> dict[str, Any]:
    """The INGEST body as the node receives it (through the bytes: tags stay raw tags)."""
    body: dict[str, Any] = decode_item(cbor2.dumps(encode_body(message)))
    return body


def same(a: m.Request | None, b: m.Request | None) -> bool:
    """Equal messages whose batches also keep the received bytes (the WAL record reuses them)."""
    if not isinstance(a, m.Ingest) or not isinstance(b, m.Ingest):
        return a == b
    return a == b and a.batch.raw == b.batch.raw


@st.composite
def batches(draw: st.DrawFn) -> EventBatch:
    n = draw(st.integers(1, SMALL_BATCH_EVENTS_MAX + 3))
    codes = draw(st.lists(st.sampled_from(["api_calls", "seats", "m.2"]), min_size=1,
                          max_size=3, unique=True))  # fmt: skip
    index = draw(st.lists(st.integers(0, len(codes) - 1), min_size=n, max_size=n))
    with_stamps, with_ops, with_props, with_ids = draw(st.tuples(*[st.booleans()] * 4))
    return EventBatch(
        metric_codes=codes,
        metric_index=np.array(index, np.uint8),
        account_ids=np.array(
            draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)), np.uint64
        ),
        values=np.array(
            draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), np.int64
        ),
        timestamps=np.arange(n, dtype=np.int64) + 1_765_000_000_000_000 if with_stamps else None,
        operation_types=np.array([i % 3 for i in range(n)], np.uint8) if with_ops else None,
        properties=[{"region": "eu"}] * n if with_props else None,
        event_ids=[f"id-{i}" for i in range(n)] if with_ids else None,
    )


@SETTINGS
@given(st.integers(0, 4095), u64, u64, st.booleans(), u64, batches())
def test_an_ingest_a_client_writes_decodes_as_the_generic_decoder_decodes_it(
    partition: int, pid: int, seq: int, sync: bool, cv: int, batch: EventBatch
) -> None:
    message = m.Ingest(
        partition=partition, producer_id=pid, seq=seq, sync=sync, catalog_version=cv, batch=batch
    )
    body = received(message)
    decoded = fast.ingest(body)
    plain = batch.properties is None and batch.event_ids is None
    small = len(batch.account_ids) <= SMALL_BATCH_EVENTS_MAX and not needs_check(len(body["b"]))
    if plain and small:
        assert decoded is not None
        assert same(decoded, generic(body))
    else:
        assert decoded is None  # left to the generic decoder


def _good() -> dict[str, Any]:
    batch = EventBatch(
        metric_codes=["api_calls", "seats"],
        metric_index=np.array([0, 1], np.uint8),
        account_ids=np.array([7, 8], np.uint64),
        values=np.array([1, 2], np.int64),
    )
    message = m.Ingest(partition=1, producer_id=2, seq=3, sync=True, catalog_version=4, batch=batch)
    return received(message)


def _with_batch(**columns: Any) -> dict[str, Any]:
    body = _good()
    inner = decode_item(body["b"])
    inner.update(columns)
    inner = {k: v for k, v in inner.items() if v is not None}
    return {**body, "b": cbor2.dumps(inner)}


def _tag(tag: int, raw: bytes) -> CBORTag:
    return CBORTag(tag, raw)


EMPTY_COLUMNS = {
    "a": _tag(TAG_UINT64_LE, b""), "mi": _tag(TAG_UINT8, b""), "v": _tag(TAG_SINT64_LE, b"")
}  # fmt: skip
BROKEN: list[tuple[str, dict[str, Any]]] = [
    ("a negative seq", {**_good(), "seq": -1}),
    ("a producer past u64", {**_good(), "pid": 2**64}),
    ("a partition past the limit", {**_good(), "p": 1 << 20}),
    ("sync as an integer", {**_good(), "sy": 1}),
    ("a missing catalog version", {k: v for k, v in _good().items() if k != "cv"}),
    ("an extra key", {**_good(), "x": 1}),
    ("a batch that is not bytes", {**_good(), "b": "text"}),
    ("a batch of bad CBOR", {**_good(), "b": b"\xff\x00"}),
    ("bytes after the batch map", {**_good(), "b": _good()["b"] + b"\x00"}),
    ("an index past the codes", _with_batch(mi=_tag(TAG_UINT8, b"\x00\x02"))),
    ("an index column too short", _with_batch(mi=_tag(TAG_UINT8, b"\x00"))),
    ("two-byte indexes", _with_batch(mi=_tag(TAG_UINT16_LE, b"\x00\x00\x01\x00"))),
    ("values of the wrong tag", _with_batch(v=_tag(TAG_UINT64_LE, bytes(16)))),
    ("accounts not whole", _with_batch(a=_tag(TAG_UINT64_LE, bytes(15)))),
    (
        "no events",
        _with_batch(
            a=_tag(TAG_UINT64_LE, b""), mi=_tag(TAG_UINT8, b""), v=_tag(TAG_SINT64_LE, b"")
        ),
    ),
    ("a code listed twice", _with_batch(m=["api_calls", "api_calls"])),
    ("a bad code", _with_batch(m=["api_calls", "Bad Code"])),
    ("codes not a list", _with_batch(m="api_calls")),
    ("an operation past REMOVE", _with_batch(o=_tag(TAG_UINT8, b"\x00\x03"))),
    ("timestamps too short", _with_batch(t=_tag(TAG_SINT64_LE, bytes(8)))),
    ("an unknown batch key", _with_batch(zz=1)),
]


def test_broken_bodies_are_left_to_the_generic_decoder() -> None:
    assert same(fast.ingest(_good()), generic(_good()))
    assert fast.ingest(_good()) is not None
    for name, body in BROKEN:
        assert fast.ingest(body) is None, name


@SETTINGS
@given(st.sampled_from(sorted(_good())), st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2**64 + 5), st.text(max_size=3),
    st.binary(max_size=8), st.lists(st.integers(0, 3), max_size=2),
))  # fmt: skip
def test_random_field_values_never_take_the_fast_path_wrongly(key: str, value: Any) -> None:
    body = {**_good(), key: value}
    decoded = fast.ingest(body)
    if decoded is not None:
        assert same(decoded, generic(body))


@SETTINGS
@given(st.binary(min_size=1, max_size=4), st.integers(0, 45))
def test_random_batch_bytes_never_take_the_fast_path_wrongly(patch: bytes, at: int) -> None:
    raw = bytearray(_good()["b"])
    raw[at : at + len(patch)] = patch
    body = {**_good(), "b": bytes(raw)}
    decoded = fast.ingest(body)
    if decoded is not None:
        assert same(decoded, generic(body))


ingest_replies = st.builds(
    m.IngestReply, n_stored=u64, n_duplicates=u64, n_rejected=u64,
    rejected=st.one_of(st.just(()), st.just(((0, "unknown_metric"),))),
    last_offset=st.none() | u64, log_index=u64,
)  # fmt: skip


@SETTINGS
@given(u64, ingest_replies)
def test_an_ingest_reply_frame_is_the_generic_frame(request_id: int, reply: m.IngestReply) -> None:
    """The node writes an INGEST reply without rejections without the field table: the very
    bytes the generic encoder writes."""
    generic_frame = encode_frame([0, request_id, encode_body(reply)])
    assert ServerCodec().encode_response(request_id, 0, reply) == generic_frame
    with pytest.raises(ValueError, match="cannot carry"):
        ServerCodec().encode_response(request_id, 8, reply)
