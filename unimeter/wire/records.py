"""Partition log entries (``unimeter.actors.entries``) as CBOR bytes for the write-ahead log.

Each entry is one CBOR array whose first item says what it is:

    [1, catalog_version, [[generation, schema], ...]]                       SchemaEntry
    [2, producer_id, seq, stamp_us, batch, n_duplicates, n_rejected,
        [[index, reason], ...]]                                             BatchEntry

``schema`` is ``MetricSchema.to_wire()`` and ``batch`` the same columnar map the INGEST request
carries (``columns.py``: one implementation for both), so a 500-event batch is mostly three
byte copies each way. A new layout takes a new leading number; old numbers stay readable.

Replay must accept whatever was accepted when the entry was written, so decoding checks the
structure but not the current wire limits (batch size, string lengths). The WAL frames every
record with a CRC, so a failure here means a bug or a foreign file, not a flipped bit; it is
reported as ``RecordError`` and nothing else.
"""

from __future__ import annotations

from typing import Any

from unimeter.actors.entries import BatchEntry, Entry, LiveMetric, SchemaEntry
from unimeter.wire.columns import ColumnError, decode_batch, encode_batch
from unimeter.wire.convert import (
    I64,
    SCHEMA,
    TEXT,
    U64,
    BodyError,
    Conv,
    array_of,
    pair,
    record,
)
from unimeter.wire.frames import decode_item, encode_item

SCHEMA_ENTRY = 1
BATCH_ENTRY = 2


class RecordError(Exception):
    """Bytes that are not a log entry this version can read."""


def _decode_logged_batch(obj: Any, path: str) -> Any:
    try:
        return decode_batch(obj, path, check_limits=False)
    except ColumnError as exc:
        raise BodyError(str(exc)) from None


_SCHEMA_FIELDS = record(
    SchemaEntry,
    (
        ("catalog_version", U64),
        ("metrics", array_of(record(LiveMetric, (("generation", U64), ("schema", SCHEMA))))),
    ),
)
_BATCH_FIELDS = record(
    BatchEntry,
    (
        ("producer_id", U64),
        ("seq", U64),
        ("stamp_us", I64),
        ("batch", Conv(encode_batch, _decode_logged_batch)),
        ("n_duplicates", U64),
        ("n_rejected", U64),
        ("rejected", array_of(pair(U64, TEXT))),
    ),
)
_LAYOUTS: dict[int, tuple[str, Conv]] = {
    SCHEMA_ENTRY: ("SchemaEntry", _SCHEMA_FIELDS),
    BATCH_ENTRY: ("BatchEntry", _BATCH_FIELDS),
}


def encode_entry(entry: Entry) -> bytes:
    if isinstance(entry, BatchEntry):
        return encode_item([BATCH_ENTRY, *_BATCH_FIELDS.encode(entry)])
    if isinstance(entry, SchemaEntry):
        return encode_item([SCHEMA_ENTRY, *_SCHEMA_FIELDS.encode(entry)])
    raise TypeError(f"not a log entry: {entry!r}")


def decode_entry(data: bytes) -> Entry:
    """The entry ``encode_entry`` made; ``RecordError`` naming the problem otherwise."""
    try:
        item = decode_item(data)
    except ValueError as exc:
        raise RecordError(f"log record: {exc}") from None
    if type(item) is not list or not item or type(item[0]) is not int:
        raise RecordError("log record: expected an array starting with its layout number")
    layout = _LAYOUTS.get(item[0])
    if layout is None:
        raise RecordError(f"log record: unknown layout {item[0]}")
    name, fields = layout
    try:
        entry: Entry = fields.decode(item[1:], name)
    except BodyError as exc:
        raise RecordError(f"log record: {exc}") from None
    return entry
