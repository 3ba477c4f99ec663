"""The node's INGEST read from the frame's bytes against what the generic decoders make of it.

``ingest_bytes.ingest_payload`` either reads a payload to the very (request id, message) that
decoding it with ``cbor2`` and the generic body and batch decoders makes -- the received batch
bytes kept -- or leaves it alone (None). Payloads a client writes, of every shape (plain,
timestamps, operations, properties, event ids, small and large, one- and two-byte metric
indexes) are read directly; random mutations of them (Hypothesis) and a table of broken ones
must never be read otherwise than the generic path reads them, or accepted where it refuses.
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
from unimeter.wire.codec import ClientCodec
from unimeter.wire.convert import BodyError
from unimeter.wire.frames import decode_item
from unimeter.wire.ingest_bytes import _batch_map, ingest_payload

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


_property = st.fixed_dictionaries(
    {},
    optional={
        "region": st.sampled_from(["eu", "us", "ap", "", "é"]),
        "endpoint": st.sampled_from(["/a", "/b", "/c"]),
        "k" * 32: st.text(max_size=8),
    },
)


@st.composite
def batches(draw: st.DrawFn) -> EventBatch:
    n = draw(st.integers(1, SMALL_BATCH_EVENTS_MAX + 2) | st.integers(300, 700))
    codes = draw(
        st.lists(st.sampled_from(CODES), min_size=1, max_size=4, unique=True)
        | st.just([f"c{i}" for i in range(300)])  # two-byte metric indexes
    )
    if n <= SMALL_BATCH_EVENTS_MAX + 2:
        index = np.array(draw(st.lists(st.integers(0, len(codes) - 1), min_size=n, max_size=n)))
        accounts = np.array(draw(st.lists(u64, min_size=n, max_size=n)), np.uint64)
        values = np.array(
            draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), np.int64
        )
    else:  # hundreds of events: columns from a drawn seed (drawing each event is slow)
        rng = np.random.default_rng(draw(st.integers(0, 2**32)))
        index = rng.integers(0, len(codes), n)
        accounts = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
        values = rng.integers(-(2**63), 2**63, n, dtype=np.int64, endpoint=False)
    with_stamps, with_ops, with_props, with_ids = draw(st.tuples(*[st.booleans()] * 4))
    props = None
    if with_props:
        one = draw(_property)
        props = [one if i % 3 else None for i in range(n)]
    ids = None
    if with_ids:
        tail = draw(st.text(max_size=3))  # (one draw per batch, as above)
        ids = [None if i % 5 == 4 else f"id-{i}-{tail}" for i in range(n)]
    return EventBatch(
        metric_codes=codes,
        metric_index=index.astype(np.uint16 if len(codes) > 255 else np.uint8),
        account_ids=accounts,
        values=values,
        timestamps=np.arange(n, dtype=np.int64) + 1_765_000_000_000_000 if with_stamps else None,
        operation_types=np.zeros(n, np.uint8) if with_ops else None,
        properties=props,
        event_ids=ids,
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
    if partition >= limits.partitions_max:
        assert direct is None  # left to the CBOR decoders, which name the problem
        return
    assert direct is not None
    assert same(direct, (rid, generic(payload)))
    assert direct[1] == message
    if batch.metric_codes and len(batch) <= SMALL_BATCH_EVENTS_MAX:
        assert same(direct, before(payload)) or before(payload) is None


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


def _full() -> bytes:
    """A payload with every optional column: timestamps, operations, properties, event ids."""
    batch = EventBatch(
        metric_codes=["api_calls", "seats"],
        metric_index=np.array([0, 1, 0], np.uint8),
        account_ids=np.array([7, 2**40, 9], np.uint64),
        values=np.array([1, 2, 3], np.int64),
        timestamps=np.array([1_765_000_000_000_000] * 3, np.int64),
        operation_types=np.array([0, 1, 0], np.uint8),
        properties=[{"region": "eu", "endpoint": "/a"}, None, {"region": "us"}],
        event_ids=["e-1", None, "e-3"],
    )
    message = m.Ingest(partition=2, producer_id=5, seq=6, sync=False, catalog_version=4,
                       batch=batch)  # fmt: skip
    return written(9, message)


def _full_with(old: bytes, new: bytes) -> bytes:
    """``_full()`` with one run of its batch's bytes replaced (the batch is under 256 bytes)."""
    payload = _full()
    at = payload.rindex(b"\x61b\x58") + 2
    raw = payload[at + 2 :]
    assert old in raw, old
    raw = raw.replace(old, new, 1)
    return payload[:at] + head(2, len(raw)) + raw


FULL_BROKEN: list[tuple[str, bytes]] = [
    ("a property index past its values", _full_with(b"\xd8\x40\x43\x01\x00\x02",
                                                     b"\xd8\x40\x43\x01\x00\x07")),
    ("a property value not UTF-8", _full_with(b"\x62eu", b"\x62\xffu")),
    ("an operation type past the last", _full_with(b"\x61o\xd8\x40\x43\x00\x01",
                                                    b"\x61o\xd8\x40\x43\x00\x09")),
    ("event id offsets past the ids", _full_with(b"\x62eo\xd8\x46\x50\x00\x00\x00\x00\x03",
                                                  b"\x62eo\xd8\x46\x50\x00\x00\x00\x00\x09")),
    ("an unknown key", _full_with(b"\x61o\xd8", b"\x61q\xd8")),
    ("a key twice", _full_with(b"\x61t\xd8", b"\x61v\xd8")),
    ("an indefinite-length code array", _full_with(b"\x61m\x82", b"\x61m\x9f")),
    ("a timestamps column of the wrong tag", _full_with(b"\x61t\xd8\x4f", b"\x61t\xd8\x47")),
]  # fmt: skip


def test_the_good_payloads_are_read_directly() -> None:
    direct = ingest_payload(_good())
    assert direct is not None and same(direct, before(_good()))
    full = ingest_payload(_full())
    assert full is not None and same(full, (9, generic(_full())))
    assert list(full[1].batch.event_ids or ()) == ["e-1", None, "e-3"]


def test_broken_payloads_are_left_to_the_cbor_decoders() -> None:
    for name, payload in BROKEN + FULL_BROKEN:
        assert payload not in (_good(), _full()), name
        assert ingest_payload(payload) is None, name
        assert generic(payload) is None, name  # the generic path refuses them too


def test_a_batch_of_many_tiny_items_is_left_to_the_guard() -> None:
    # A property value table of 60,000 empty texts for one event: one byte each, too many
    # items for what the reader may build before the column checks (which refuse it).
    values = b"\x99" + (60_000).to_bytes(2, "big") + b"\x60" * 60_000

    def edit(raw: bytes) -> bytes:
        tail = b"\x61p\x81\x83\x61k" + values + b"\xd8\x40\x43\x00\x00\x00"
        return b"\xa5" + raw[1:] + tail

    payload = _with_batch(edit)
    assert ingest_payload(payload) is None
    assert generic(payload) is None
    raw = decode_item(payload)[2]["b"]
    assert _batch_map(raw) is None  # refused by the walk itself: its weight passes the budget


@SETTINGS
@given(
    st.sampled_from([_good, _full]),
    st.binary(min_size=0, max_size=4),
    st.integers(0, 400),
    st.integers(0, 3),
)
def test_mutated_payloads_are_read_as_before_or_left_alone(
    good: Any, patch: bytes, at: int, cut: int
) -> None:
    payload = bytearray(good())
    at = at % (len(payload) + 1)
    payload[at : at + cut] = patch  # replaced, inserted or deleted bytes
    mutated = bytes(payload)
    direct = ingest_payload(mutated)
    if direct is not None:
        assert direct[1] == generic(mutated)
        assert same(direct, (direct[0], generic(mutated)))
        assert direct[0] == decode_item(mutated)[1]


@SETTINGS
@given(st.sampled_from([_good, _full]), st.integers(1, 1_000))
def test_a_truncated_payload_is_left_alone(good: Any, size: int) -> None:
    payload = good()
    assert ingest_payload(payload[: size % len(payload)]) is None


def _plain_of(n: int) -> bytes:
    batch = EventBatch(
        metric_codes=["api_calls", "seats"],
        metric_index=(np.arange(n) % 2).astype(np.uint8),
        account_ids=np.arange(n, dtype=np.uint64),
        values=np.ones(n, np.int64),
    )
    message = m.Ingest(partition=0, producer_id=1, seq=2, sync=False, catalog_version=3,
                       batch=batch)  # fmt: skip
    return written(4, message)


def test_a_plain_batch_at_the_event_limit_is_read_and_one_past_it_refused() -> None:
    at_limit = _plain_of(limits.events_per_batch_max)  # columns of four-byte lengths
    direct = ingest_payload(at_limit)
    assert direct is not None and same(direct, (4, generic(at_limit)))
    past = _plain_of(limits.events_per_batch_max + 1)
    assert ingest_payload(past) is None
    assert generic(past) is None
