"""The node's INGEST read from the frame's bytes against what it read before (the CBOR item).

``ingest_bytes.ingest_payload`` either reads a payload to the very (request id, message) that
decoding it with ``cbor2`` and ``fast.ingest`` makes -- the generic decoder's message, the
received batch bytes kept -- or leaves it alone (None). Payloads a client writes (every shape:
the ones it takes and the ones it leaves), and random mutations of them (Hypothesis): it must
never accept what the generic path refuses or reads otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.support.examples import examples
from unimeter import limits
from unimeter.client.batch_bytes import head
from unimeter.wire import fast
from unimeter.wire import messages as m
from unimeter.wire.batch import SMALL_BATCH_EVENTS_MAX, EventBatch
from unimeter.wire.bodies import decode_request
from unimeter.wire.cborscan import needs_check
from unimeter.wire.codec import ClientCodec
from unimeter.wire.convert import BodyError
from unimeter.wire.frames import decode_item
from unimeter.wire.ingest_bytes import ingest_payload

SETTINGS = settings(max_examples=examples(150), deadline=None)
u64 = st.integers(0, 2**64 - 1)
CODES = ["api_calls", "seats", "m.2", "a" * 30, "b"]


def written(rid: int, message: m.Ingest) -> bytes:
    """The frame's payload as a client writes it (no length prefix)."""
    return ClientCodec().encode_request(rid, message)[4:]


def before(payload: bytes) -> tuple[int, m.Ingest] | None:
    """What the node made of a payload before: its CBOR item, then ``fast.ingest``."""
    try:
        item = decode_item(payload)
    except ValueError:
        return None
    if type(item) is not list or len(item) != 3 or item[0] != fast.KIND_INGEST:
        return None
    message = fast.ingest(item[2])
    return None if message is None else (item[1], message)


def generic(payload: bytes) -> m.Request | None:
    """The generic decoder's message (None where it refuses)."""
    try:
        return decode_request(m.Kind.INGEST, decode_item(payload)[2])
    except (BodyError, ValueError):
        return None


def same(a: tuple[int, m.Ingest] | None, b: tuple[int, Any] | None) -> bool:
    """Equal ids and messages, the batches keeping the same received bytes."""
    if a is None or b is None:
        return a is b
    return a == b and a[1].batch.raw == b[1].batch.raw


@st.composite
def batches(draw: st.DrawFn) -> EventBatch:
    n = draw(st.integers(1, SMALL_BATCH_EVENTS_MAX + 2))
    codes = draw(st.lists(st.sampled_from(CODES), min_size=1, max_size=4, unique=True))
    index = draw(st.lists(st.integers(0, len(codes) - 1), min_size=n, max_size=n))
    with_stamps, with_ops, with_ids = draw(st.tuples(*[st.booleans()] * 3))
    return EventBatch(
        metric_codes=codes,
        metric_index=np.array(index, np.uint8),
        account_ids=np.array(draw(st.lists(u64, min_size=n, max_size=n)), np.uint64),
        values=np.array(
            draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), np.int64
        ),
        timestamps=np.arange(n, dtype=np.int64) + 1_765_000_000_000_000 if with_stamps else None,
        operation_types=np.zeros(n, np.uint8) if with_ops else None,
        event_ids=[f"id-{i}" for i in range(n)] if with_ids else None,
    )


def many_codes() -> EventBatch:
    codes = [f"c{i}" for i in range(24)]  # a code table of 24: a two-byte array head
    return EventBatch(
        metric_codes=codes,
        metric_index=np.arange(24, dtype=np.uint8),
        account_ids=np.arange(24, dtype=np.uint64),
        values=np.ones(24, np.int64),
    )


@SETTINGS
@given(
    u64,
    st.integers(0, 7) | st.sampled_from([limits.partitions_max - 1, limits.partitions_max]),
    u64, u64, st.booleans(), u64, batches(),
)  # fmt: skip
@example(2**64 - 1, 0, 2**64 - 1, 2**64 - 1, True, 2**64 - 1, many_codes())
def test_a_payload_a_client_writes_reads_as_before(
    rid: int, partition: int, pid: int, seq: int, sync: bool, cv: int, batch: EventBatch
) -> None:
    message = m.Ingest(
        partition=partition, producer_id=pid, seq=seq, sync=sync, catalog_version=cv, batch=batch
    )
    payload = written(rid, message)
    direct = ingest_payload(payload)
    plain = batch.timestamps is None and batch.operation_types is None and batch.event_ids is None
    raw = decode_item(payload)[2]["b"]
    small = (
        len(batch.account_ids) <= SMALL_BATCH_EVENTS_MAX
        and len(batch.metric_codes) < 24
        and not needs_check(len(raw))
        and partition < limits.partitions_max
    )
    if plain and small:
        assert direct is not None
        assert same(direct, before(payload))
        assert direct[1] == generic(payload)
    else:
        assert direct is None  # left to the CBOR decoders, as before


def _good() -> bytes:
    batch = EventBatch(
        metric_codes=["api_calls", "seats"],
        metric_index=np.array([0, 1, 1], np.uint8),
        account_ids=np.array([7, 2**40, 9], np.uint64),
        values=np.array([1, -2, 2**62], np.int64),
    )
    message = m.Ingest(
        partition=1, producer_id=2, seq=300, sync=True, catalog_version=4, batch=batch
    )
    return written(70_000, message)


def _split(payload: bytes) -> tuple[bytes, bytes]:
    """(everything before the batch's byte string head, the batch's bytes)."""
    at = payload.rindex(b"\x61b\x58") + 2  # the batch is under 256 bytes here
    return payload[:at], payload[at + 2 :]


def _with_batch(edit: Any) -> bytes:
    """``_good()`` with its batch bytes replaced by ``edit(batch bytes)``."""
    prefix, raw = _split(_good())
    raw = edit(raw)
    return prefix + head(2, len(raw)) + raw


def _index_at(raw: bytes) -> int:
    return raw.index(b"\x62mi\xd8\x40\x43") + 6


BROKEN: list[tuple[str, bytes]] = [
    ("an index past the codes", _with_batch(lambda r: r[: _index_at(r)] + b"\x00\x02\x01"
                                            + r[_index_at(r) + 3 :])),
    ("bytes after the batch map", _with_batch(lambda r: r + b"\x00")),
    ("a values column one event short", _with_batch(
        lambda r: r[: r.index(b"\x61v\xd8\x4f") + 4] + b"\x50" + r[-16:])),
    ("a code of a space", _with_batch(lambda r: r.replace(b"seats", b"se ts"))),
    ("a code of a byte past ASCII", _with_batch(lambda r: r.replace(b"seats", b"se\xe9ts"))),
    ("a code listed twice", _with_batch(lambda r: r.replace(b"\x65seats", b"\x69api_calls"))),
    ("two-byte indexes", _with_batch(lambda r: r.replace(b"\xd8\x40", b"\xd8\x45"))),
    ("sync as an integer", _good().replace(b"\x62sy\xf5", b"\x62sy\x01")),
    ("a map of seven keys", _good().replace(b"\xa6\x61p", b"\xa7\x61p")),
    ("a partition past the limit", written(1, m.Ingest(
        partition=limits.partitions_max, producer_id=2, seq=3, sync=False, catalog_version=4,
        batch=EventBatch(metric_codes=["api_calls"], metric_index=np.zeros(1, np.uint8),
                         account_ids=np.ones(1, np.uint64), values=np.ones(1, np.int64))))),
]  # fmt: skip


def test_the_good_payload_is_read_directly() -> None:
    direct = ingest_payload(_good())
    assert direct is not None and same(direct, before(_good()))


def test_broken_payloads_are_left_to_the_cbor_decoders() -> None:
    for name, payload in BROKEN:
        assert payload != _good(), name
        assert ingest_payload(payload) is None, name
        assert before(payload) is None, name  # (the direct path before took none of them)


@SETTINGS
@given(st.binary(min_size=0, max_size=4), st.integers(0, len(_good())), st.integers(0, 3))
def test_mutated_payloads_are_read_as_before_or_left_alone(patch: bytes, at: int, cut: int) -> None:
    payload = bytearray(_good())
    payload[at : at + cut] = patch  # replaced, inserted or deleted bytes
    mutated = bytes(payload)
    direct = ingest_payload(mutated)
    if direct is not None:
        assert same(direct, before(mutated))
        assert direct[1] == generic(mutated)


@SETTINGS
@given(st.integers(1, len(_good()) - 1))
def test_a_truncated_payload_is_left_alone(size: int) -> None:
    assert ingest_payload(_good()[:size]) is None
