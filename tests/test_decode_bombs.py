"""Decode bombs: no frame within the size limit costs more than a small multiple of its size.

A bomb is a frame whose few bytes would build many Python objects (``[{}, {}, ...]`` is one
byte per dict). Each one goes through the server codec whole; the outcome may be a decoded
frame, a BadRequest or a ProtocolError, and either way the peak memory it took (tracemalloc,
one pass) and the time it took (another pass, without tracemalloc's overhead) must stay within
a multiple of its size. Hypothesis then builds random bombs from nested repeated shapes.

The pre-scan itself (``unimeter.wire.cborscan``) is checked against a naive oracle: for random
CBOR items it must return exactly the weight a recursive walk over the decoded object gives,
and refuse truncated items and trailing bytes.

Sizes are 256 KiB by default (the budget is per byte, so the ratios are those of a 4 MiB
frame); ``UNIMETER_SLOW=1`` uses the full frame limit.
"""

from __future__ import annotations

import functools
import itertools
import os
import struct
import time
import tracemalloc
from array import array
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.examples import examples
from unimeter import errors, limits
from unimeter.consensus.codec import encode_message
from unimeter.consensus.messages import AppendEntries, LogEntry
from unimeter.model import AggValue
from unimeter.peer import peer_frame
from unimeter.wire import cborscan
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec, ServerCodec

SLOW = os.environ.get("UNIMETER_SLOW") == "1"
PAYLOAD_BYTES = limits.frame_bytes_max - 64 if SLOW else 256 * 1024
# Peak memory per payload byte: real frames cost up to ~27 (events with many short properties),
# the budget allows ~36 (a unit is 8-9 bytes); without the pre-scan `[{}, ...]` costs ~72.
MEMORY_PER_BYTE_MAX = 40
MEMORY_SLACK_BYTES = 1 << 20
# Time per payload byte, as a multiple of decoding a real frame that is among the heaviest per
# byte (a no-op append for every partition, between nodes), measured in the same run so that a
# busy machine slows both; plus a slack for a scheduler hiccup on a small frame.
TIME_MULTIPLE_MAX = 4
TIME_SLACK_S = 0.005


def array_header(n: int) -> bytes:
    return b"\x9a" + struct.pack(">I", n)


def bomb(element: bytes, payload_bytes: int = PAYLOAD_BYTES, *, wrap: bool = True) -> bytes:
    """A request frame ``[1, 1, [element, element, ...]]`` of about ``payload_bytes``."""
    n = (payload_bytes - 16) // len(element)
    item = array_header(n) + element * n
    payload = (b"\x83\x01\x01" + item) if wrap else item
    return struct.pack(">I", len(payload)) + payload


ELEMENTS = {
    "empty maps": b"\xa0",
    "empty lists": b"\x80",
    "one-pair maps": b"\xa1\x60\x00",  # {"": 0}
    "small ints": b"\x00",
    "mid ints": b"\x19\x12\x34",
    "half floats": b"\xf9\x3c\x00",
    "two-char strings": b"\x62ab",
    "one-byte byte strings": b"\x41a",
    "nulls": b"\xf6",
    "tags": b"\xc1\x00",  # a raw tag around a zero
    "bignums": b"\xc2\x41\x01",
    "lists of one list": b"\x81\x80",
    "nested maps": b"\xa1\x61k\xa1\x61k\xa0",
}


def measure(frame: bytes) -> tuple[int, float, str]:
    """(peak bytes, seconds, outcome) of feeding ``frame`` to a fresh server codec."""

    def run() -> str:
        codec = ServerCodec()
        codec.feed(frame)
        try:
            out = codec.next_frame()
        except errors.ProtocolError as exc:
            return f"refused: {exc.message[:60]}"
        return type(out).__name__

    tracemalloc.start()
    try:
        outcome = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The best of three: a bomb is slow every time, a busy machine only now and then.
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return peak, best, outcome


@functools.cache
def reference_s_per_byte() -> float:
    frame = _peer_appends()
    _, seconds, outcome = measure(frame)
    assert outcome == "PeerFrame", outcome
    return seconds / len(frame)


def assert_cheap(frame: bytes, label: str) -> str:
    peak, seconds, outcome = measure(frame)
    size = len(frame)
    assert peak <= MEMORY_PER_BYTE_MAX * size + MEMORY_SLACK_BYTES, (
        f"{label}: {peak / size:.1f} bytes of memory per frame byte ({outcome})"
    )
    reference = reference_s_per_byte()
    assert seconds <= TIME_MULTIPLE_MAX * reference * size + TIME_SLACK_S, (
        f"{label}: {seconds * 1e9 / size:.0f} ns per frame byte ({outcome}), a real heavy "
        f"frame {reference * 1e9:.0f}"
    )
    return outcome


@pytest.mark.parametrize("name", sorted(ELEMENTS))
def test_a_bomb_costs_a_small_multiple_of_its_size(name: str) -> None:
    assert_cheap(bomb(ELEMENTS[name]), name)


def test_the_worst_shapes_are_refused_before_decoding() -> None:
    for name in ("empty maps", "empty lists", "one-pair maps", "lists of one list", "tags"):
        outcome = assert_cheap(bomb(ELEMENTS[name]), name)
        assert outcome.startswith("refused: frame payload: CBOR item too complex"), (name, outcome)


def test_deep_nesting_is_refused_before_decoding() -> None:
    deep = b"\x81" * 100_000 + b"\x00"
    frame = struct.pack(">I", len(deep)) + deep
    assert assert_cheap(frame, "deep").startswith("refused: frame payload: CBOR nesting deeper")


# ---------------------------------------------------------------------- random bombs

_shapes: st.SearchStrategy[bytes] = st.recursive(
    st.sampled_from(sorted(ELEMENTS.values())),
    lambda inner: st.builds(
        lambda parts, n: bytes([0x80 | len(parts[:n])]) + b"".join(parts[:n]),
        st.lists(inner, min_size=1, max_size=5),
        st.integers(1, 5),
    ),
    max_leaves=6,
)


@settings(max_examples=examples(20), deadline=None)
@given(shape=_shapes, size=st.sampled_from([4096, 65536, PAYLOAD_BYTES // 2]))
def test_random_bombs_cost_a_small_multiple_of_their_size(shape: bytes, size: int) -> None:
    assert_cheap(bomb(shape, max(size, 16 + len(shape))), f"shape {shape[:16].hex()}")


# ---------------------------------------------------------------------- the scan itself


def oracle_weight(item: Any) -> int:
    """The documented weights, by a recursive walk over the decoded object."""
    if isinstance(item, (list, tuple)):  # arrays inside tags decode as tuples
        return 1 + cborscan.ARRAY_WEIGHT + sum(oracle_weight(x) for x in item)
    if isinstance(item, (dict, cbor2.frozendict)):  # maps inside tags decode as frozendicts
        pairs = sum(oracle_weight(k) + oracle_weight(v) for k, v in item.items())
        filled = cborscan.FILLED_MAP_WEIGHT if item else 0
        return 1 + cborscan.MAP_WEIGHT + filled + cborscan.PAIR_WEIGHT * len(item) + pairs
    if isinstance(item, cbor2.CBORTag):
        return 1 + cborscan.TAG_WEIGHT + oracle_weight(item.value)
    if isinstance(item, (str, bytes)):
        size = len(item.encode() if isinstance(item, str) else item)
        return 1 + (cborscan.STRING_WEIGHT if size > 1 else 0)
    if isinstance(item, float) or (type(item) is int and (item > 255 or item < -256)):
        return 1 + cborscan.NUMBER_WEIGHT  # (cbor2 writes floats in 2+ bytes: never shared)
    return 1


_items: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.binary(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=30)
        | st.dictionaries(st.text(max_size=8), inner, max_size=8)
        | st.builds(cbor2.CBORTag, st.integers(30000, 40000), inner)
    ),
    max_leaves=60,
)


@settings(max_examples=150, deadline=None)
@given(item=_items)
def test_the_scan_weighs_exactly_like_the_oracle(item: Any) -> None:
    data = cbor2.dumps(item)
    expected = oracle_weight(cbor2.loads(data))
    assert cborscan.check_item(data, items_max=10**9) == expected
    assert cborscan.check_item(bytearray(data), items_max=10**9) == expected
    assert cborscan.check_item(memoryview(data), items_max=10**9) == expected
    with pytest.raises(ValueError, match="too complex"):
        cborscan.check_item(data, items_max=expected - 1)
    with pytest.raises(ValueError, match="bytes after"):
        cborscan.check_item(data + b"\x00", items_max=10**9)
    for cut in {0, len(data) // 2, len(data) - 1}:
        with pytest.raises(ValueError, match=r"truncated|bytes remain"):
            cborscan.check_item(data[:cut], items_max=10**9)


def test_indefinite_and_reserved_headers_are_refused() -> None:
    for data in (b"\x9f\x00\xff", b"\x5f\x41a\xff", b"\x1c", b"\x9f"):
        with pytest.raises(ValueError, match=r"indefinite|reserved"):
            cborscan.check_item(data, items_max=100)


def _ingest(properties: dict[str, str], *, ids: bool, events: int = 500) -> bytes:
    batch = m.EventBatch(
        metric_codes=("calls", "gb"), metric_index=array("B", [i % 2 for i in range(events)]),
        account_ids=array("Q", range(events)), values=array("q", [1] * events),
        timestamps=array("q", [1_750_000_000_000_000 + i for i in range(events)]) if ids else None,
        properties=tuple(dict(properties) for _ in range(events)),
        event_ids=tuple(f"evt-{i:016x}" for i in range(events)) if ids else None,
    )  # fmt: skip
    ingest = m.Ingest(partition=0, producer_id=1, seq=1, sync=True, catalog_version=1, batch=batch)
    return ClientCodec().encode_request(1, ingest)


def _ingest_frame() -> bytes:
    return _ingest({"region": "eu", "tier": "pro"}, ids=True)


def _ingest_short_properties() -> bytes:
    # The heaviest Ingest per byte: the most properties, each a two-letter key and value.
    return _ingest(
        {f"k{i:x}": f"v{i:x}" for i in range(limits.properties_per_event_max)}, ids=False
    )


def _reply_frame(message: m.Reply) -> bytes:
    return ServerCodec().encode_response(1, 0, message)


def _events_page() -> bytes:
    events = tuple(
        m.StoredEvent(account_id=1, metric_code="c", value=1, timestamp_us=1_750_000_000_000_000,
                      operation_type=0, properties={"a": "b"}, event_id="e", offset=i)
        for i in range(limits.list_page_events_max)
    )  # fmt: skip
    return _reply_frame(m.EventsPage(events=events, next_offset=None))


def _breakdown() -> bytes:
    # The heaviest reply per byte: every cell of 4 dimensions of 8 one-character values.
    keys = [[(k, v) for v in "abcdefgh"] for k in "wxyz"]
    cells = tuple((cell, AggValue()) for cell in itertools.product(*keys))
    return _reply_frame(m.BreakdownReply(cells=cells))


def _peer_appends() -> bytes:
    # A new leader's first append (a no-op) for each of many partitions, in one peer frame.
    entry = (LogEntry(term=3, index=6, data=b""),)
    items = [
        cbor2.dumps(encode_message(p, AppendEntries(
            src=1, dst=2, term=3, prev_index=5, prev_term=2, entries=entry, leader_commit=5)))
        for p in range(limits.partitions_max)
    ]  # fmt: skip
    return peer_frame(items)


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("ingest", _ingest_frame),
        ("ingest, 16 short properties per event", _ingest_short_properties),
        ("peer appends", _peer_appends),
        ("events page", _events_page),
        ("breakdown", _breakdown),
    ],
)
def test_real_frames_stay_well_within_the_budget(name: str, build: Callable[[], bytes]) -> None:
    payload = build()[4:]
    weight = cborscan.check_item(payload, items_max=10**9)
    budget = cborscan.budget_for(len(payload))
    assert weight <= 0.85 * budget, f"{name}: weight {weight} of budget {budget}"
