"""Log records: every entry round-trips; anything else raises RecordError and nothing else."""

from __future__ import annotations

from array import array

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.wire_cases import (
    SCHEMA,
    SCHEMA_MIN,
    U64_MAX,
    empty_batch,
    full_batch,
    minimal_batch,
    same_typecodes,
)
from unimeter import limits
from unimeter.state.entries import BatchEntry, BatchPart, Entry, LiveMetric, SchemaEntry
from unimeter.state.hashing import batch_id_keys
from unimeter.state.records import RecordError, decode_entry, encode_entry
from unimeter.wire import messages as m
from unimeter.wire.bodies import encode_body
from unimeter.wire.frames import decode_item

FAST = settings(max_examples=200, deadline=None)


def part(batch: m.EventBatch, **kwargs: object) -> BatchPart:
    fields: dict[str, object] = {
        "producer_id": 0, "seq": 0, "batch": batch, "dropped": None, "n_duplicates": 0,
        "rejected": (), "id_hashes": batch_id_keys(batch),
    }  # fmt: skip
    fields.update(kwargs)
    return BatchPart(**fields)  # type: ignore[arg-type]


# fmt: off
ENTRIES: list[Entry] = [
    SchemaEntry(catalog_version=0, metrics=()),
    SchemaEntry(catalog_version=U64_MAX, metrics=(
        LiveMetric(generation=3, schema=SCHEMA), LiveMetric(generation=9, schema=SCHEMA_MIN))),
    BatchEntry(stamp_us=1_700_000_000_000_000, parts=(
        part(full_batch(), producer_id=U64_MAX, seq=1, n_duplicates=2,
             dropped=np.array([1, 3], np.uint32), rejected=((1, "unknown_metric"),),
             id_hashes=np.array([7, 2**64 - 1], np.uint64)),
    )),
    BatchEntry(stamp_us=-1, parts=(part(minimal_batch()),)),
    BatchEntry(stamp_us=0, parts=(
        part(empty_batch(), producer_id=7, seq=U64_MAX, n_duplicates=3),
        part(minimal_batch(), producer_id=7, seq=U64_MAX - 1),
        part(full_batch(), producer_id=8, seq=1),
    )),
    BatchEntry(stamp_us=5, parts=()),
]
# fmt: on


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: type(e).__name__)
def test_entries_round_trip(entry: Entry) -> None:
    got = decode_entry(encode_entry(entry))
    assert got == entry
    if isinstance(entry, BatchEntry):
        assert isinstance(got, BatchEntry)
        for mine, theirs in zip(got.parts, entry.parts, strict=True):
            same_typecodes(mine.batch, theirs.batch)


def test_batch_bytes_are_the_wire_bytes() -> None:
    """The record carries exactly the bytes the INGEST request carried: no re-encoding."""
    entry = ENTRIES[2]
    assert isinstance(entry, BatchEntry)
    record = decode_item(encode_entry(entry))
    ingest = m.Ingest(
        partition=0, producer_id=1, seq=1, sync=True, catalog_version=0,
        batch=entry.parts[0].batch,
    )  # fmt: skip
    assert record[2][0][2] == encode_body(ingest)["b"]


def test_replay_ignores_todays_wire_limits() -> None:
    """An entry written under looser limits must still replay."""
    n = limits.events_per_batch_max + 1
    batch = m.EventBatch(
        metric_codes=("api_calls",),
        metric_index=array("B", bytes(n)),
        account_ids=array("Q", range(n)),
        values=array("q", [1] * n),
        properties=({"k" * 40: "v" * 100},) + (None,) * (n - 1),
    )
    entry = BatchEntry(stamp_us=0, parts=(part(batch, producer_id=1, seq=1),))
    assert decode_entry(encode_entry(entry)) == entry


def test_the_layout_before_the_columnar_log_is_refused_by_name() -> None:
    with pytest.raises(RecordError, match=r"layout 2 \(written by a version before the columnar"):
        decode_entry(cbor2.dumps([2, 1, 1, 0, {}, 0, 0, []]))


def _part_record(**changes: object) -> bytes:
    entry = ENTRIES[2]
    record = decode_item(encode_entry(entry))
    batch = cbor2.loads(record[2][0][2]) | changes
    record[2][0][2] = cbor2.dumps(batch)
    return cbor2.dumps(record)


def _with_part(*items: object) -> bytes:
    return cbor2.dumps([3, 0, [list(items)]])


_BATCH = empty_batch().raw

# fmt: off
BAD_RECORDS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty CBOR item"),
    ("not CBOR", b"\xff", "invalid CBOR"),
    ("trailing bytes", encode_entry(ENTRIES[0]) + b"\x00", "1 bytes after the CBOR item"),
    ("truncated", encode_entry(ENTRIES[2])[:-3], "invalid CBOR"),
    ("not an array", cbor2.dumps({"a": 1}), "expected an array starting with its layout"),
    ("empty array", cbor2.dumps([]), "expected an array starting with its layout"),
    ("unknown layout", cbor2.dumps([9, 1, 2]), "unknown layout 9"),
    ("short schema entry", cbor2.dumps([1, 0]), "SchemaEntry: expected [1, catalog_version"),
    ("bad schema", cbor2.dumps([1, 0, [[1, {"code": "x"}]]]), "SchemaEntry.metrics[0]"),
    ("short batch entry", cbor2.dumps([3, 0]), "BatchEntry: expected [3, stamp_us, parts]"),
    ("part not an array", cbor2.dumps([3, 0, [5]]), "BatchEntry.parts[0]: expected a 7-item"),
    ("negative seq", _with_part(1, -1, _BATCH, 0, [], None, None), "BatchEntry.parts[0].seq"),
    ("batch not bytes", _with_part(1, 1, {}, 0, [], None, None),
     "BatchEntry.parts[0].batch: expected a byte string"),
    ("ragged column", _part_record(v=cbor2.CBORTag(79, bytes(8))),
     "BatchEntry.parts[0].batch.values: 8 bytes, expected 32"),
    ("index out of range", _part_record(mi=cbor2.CBORTag(64, bytes([0, 0, 0, 5]))),
     "BatchEntry.parts[0].batch.metric_index: index 5"),
    ("rejected not pairs", _with_part(0, 1, _BATCH, 0, [5], None, None),
     "BatchEntry.parts[0].rejected: expected [index, reason] pairs"),
    ("dropped wrong tag", _with_part(0, 1, _BATCH, 0, [], cbor2.CBORTag(71, bytes(8)), None),
     "BatchEntry.parts[0].dropped: expected null or tag 70"),
    ("dropped beyond the batch", _with_part(0, 1, _BATCH, 0, [], cbor2.CBORTag(70, bytes(4)),
                                             None),
     "BatchEntry.parts[0].dropped: positions must rise and stay below 0"),
    ("hashes ragged", _with_part(0, 1, _BATCH, 0, [], None, cbor2.CBORTag(71, bytes(5))),
     "BatchEntry.parts[0].id_hashes: not a whole number of items"),
]
# fmt: on


@pytest.mark.parametrize(("name", "data", "expected"), BAD_RECORDS, ids=[r[0] for r in BAD_RECORDS])
def test_bad_records_raise_record_error(name: str, data: bytes, expected: str) -> None:
    with pytest.raises(RecordError) as caught:
        decode_entry(data)
    assert expected in str(caught.value), str(caught.value)


@FAST
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_record_error(data: bytes) -> None:
    try:
        entry = decode_entry(data)
    except RecordError:
        return
    assert isinstance(entry, SchemaEntry | BatchEntry)


@FAST
@given(st.sampled_from(ENTRIES), st.data())
def test_mutated_records_decode_or_raise_record_error(entry: Entry, data: st.DataObject) -> None:
    record = bytearray(encode_entry(entry))
    for _ in range(data.draw(st.integers(1, 3))):
        record[data.draw(st.integers(0, len(record) - 1))] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_entry(bytes(record))
    except RecordError:
        return
    assert decode_entry(encode_entry(decoded)) == decoded
