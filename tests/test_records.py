"""Log records: every entry round-trips; anything else raises RecordError and nothing else."""

from __future__ import annotations

from array import array

import cbor2
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
from unimeter.state.entries import BatchEntry, Entry, LiveMetric, SchemaEntry
from unimeter.state.records import RecordError, decode_entry, encode_entry
from unimeter.wire import messages as m
from unimeter.wire.bodies import encode_body
from unimeter.wire.frames import decode_item

FAST = settings(max_examples=200, deadline=None)

# fmt: off
ENTRIES: list[Entry] = [
    SchemaEntry(catalog_version=0, metrics=()),
    SchemaEntry(catalog_version=U64_MAX, metrics=(
        LiveMetric(generation=3, schema=SCHEMA), LiveMetric(generation=9, schema=SCHEMA_MIN))),
    BatchEntry(producer_id=U64_MAX, seq=1, stamp_us=1_700_000_000_000_000, batch=full_batch(),
               n_duplicates=2, n_rejected=1, rejected=((4, "unknown_metric"),)),
    BatchEntry(producer_id=0, seq=0, stamp_us=-1, batch=minimal_batch(), n_duplicates=0,
               n_rejected=0, rejected=()),
    BatchEntry(producer_id=7, seq=U64_MAX, stamp_us=0, batch=empty_batch(), n_duplicates=3,
               n_rejected=2, rejected=((0, "too_old"), (1, "too_far_in_the_future"))),
]
# fmt: on


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: type(e).__name__)
def test_entries_round_trip(entry: Entry) -> None:
    got = decode_entry(encode_entry(entry))
    assert got == entry
    if isinstance(entry, BatchEntry):
        assert isinstance(got, BatchEntry)
        same_typecodes(got.batch, entry.batch)


def test_batch_encoding_is_the_wire_encoding() -> None:
    """One implementation: the record carries exactly the INGEST request's batch map."""
    entry = ENTRIES[2]
    assert isinstance(entry, BatchEntry)
    record = decode_item(encode_entry(entry))
    ingest = m.Ingest(
        partition=0, producer_id=1, seq=1, sync=True, catalog_version=0, batch=entry.batch
    )
    assert cbor2.dumps(record[4]) == cbor2.dumps(encode_body(ingest)["b"])


def test_replay_ignores_todays_wire_limits() -> None:
    """An entry written under looser limits must still replay."""
    n = limits.events_per_batch_max + 1
    batch = m.EventBatch(
        metric_codes=("api_calls",),
        metric_index=array("B", bytes(n)),
        account_ids=array("Q", range(n)),
        values=array("q", [1] * n),
        properties=({"k" * 40: "v" * 100},) + (None,) * (n - 1),
        event_ids=("x" * 100,) + (None,) * (n - 1),
    )
    entry = BatchEntry(
        producer_id=1, seq=1, stamp_us=0, batch=batch, n_duplicates=0, n_rejected=0, rejected=()
    )
    assert decode_entry(encode_entry(entry)) == entry


def _batch_record(**changes: object) -> bytes:
    entry = ENTRIES[2]
    record = decode_item(encode_entry(entry))
    record[4] = dict(record[4]) | changes
    return cbor2.dumps(record)


# fmt: off
BAD_RECORDS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty CBOR item"),
    ("not CBOR", b"\xff", "invalid CBOR"),
    ("trailing bytes", encode_entry(ENTRIES[0]) + b"\x00", "1 bytes after the CBOR item"),
    ("truncated", encode_entry(ENTRIES[2])[:-3], "invalid CBOR"),
    ("not an array", cbor2.dumps({"a": 1}), "expected an array starting with its layout"),
    ("empty array", cbor2.dumps([]), "expected an array starting with its layout"),
    ("unknown layout", cbor2.dumps([3, 1, 2]), "unknown layout 3"),
    ("short schema entry", cbor2.dumps([1, 0]), "SchemaEntry: expected a SchemaEntry as an array"),
    ("bad schema", cbor2.dumps([1, 0, [[1, {"code": "x"}]]]), "SchemaEntry.metrics[0].schema"),
    ("negative seq", cbor2.dumps([2, 1, -1, 0, {}, 0, 0, []]), "BatchEntry.seq"),
    ("batch not a map", cbor2.dumps([2, 1, 1, 0, [], 0, 0, []]),
     "BatchEntry.batch: expected a map"),
    ("ragged column", _batch_record(v=cbor2.CBORTag(79, bytes(8))),
     "BatchEntry.batch.values: 8 bytes, expected 32"),
    ("index out of range", _batch_record(mi=cbor2.CBORTag(64, bytes([0, 0, 0, 5]))),
     "BatchEntry.batch.metric_index: index 5"),
    ("property map wrong type", _batch_record(p=[None, None, "x", None]),
     "BatchEntry.batch.properties[2]: unexpected str"),
    ("event id wrong type", _batch_record(e=[1, None, None, None]),
     "BatchEntry.batch.event_ids[0]: unexpected int"),
    ("rejected not pairs", cbor2.dumps([2, 1, 1, 0, encode_body(m.Ingest(
        partition=0, producer_id=0, seq=1, sync=True, catalog_version=0,
        batch=empty_batch()))["b"], 0, 0, [5]]), "BatchEntry.rejected[0]"),
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
