"""Partition log entries (``entries.py``) as CBOR bytes for the write-ahead log.

Each entry is one CBOR array whose first item says what it is:

    [1, catalog_version, [[generation, schema], ...]]                 SchemaEntry
    [3, stamp_us, [part, ...]]                                        BatchEntry
    [4, next_cursor]                                                  WebhookMark
        part = [producer_id, seq, batch, n_duplicates, [[index, reason], ...],
                dropped, id_hashes]

``schema`` is ``MetricSchema.to_wire()``; ``batch`` is the byte string the INGEST request
carried, copied as is (the client's encoding is the only one a batch gets); ``dropped`` is null
or tag 70 (uint32 LE) with the positions of the events not stored; ``id_hashes`` is null or tag
71 (uint64 LE) with the hash of each stored event's id. Layout 2 (one batch per entry, re-encoded
by the leader) was written by earlier versions and is refused by name.

Replay must accept whatever was accepted when the entry was written, so decoding checks the
structure but not the current wire limits (batch size, string lengths). The WAL frames every
record with a CRC, so a failure here means a bug or a foreign file, not a flipped bit; it is
reported as ``RecordError`` and nothing else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cbor2 import CBORTag

from unimeter.model import MetricSchema
from unimeter.state.entries import (
    Array,
    BatchEntry,
    BatchPart,
    Entry,
    LiveMetric,
    SchemaEntry,
    WebhookMark,
)
from unimeter.wire.batch import (
    TAG_UINT32_LE,
    TAG_UINT64_LE,
    U32,
    U64,
    ColumnError,
    decode_batch,
)
from unimeter.wire.frames import decode_item, encode_item
from unimeter.wire.ingest_bytes import read_batch

SCHEMA_ENTRY = 1
OLD_BATCH_ENTRY = 2
BATCH_ENTRY = 3
WEBHOOK_MARK = 4


class RecordError(Exception):
    """Bytes that are not a log entry this version can read."""


def _typed(tag: int, column: Array | None) -> CBORTag | None:
    if column is None or not len(column):
        return None
    return CBORTag(tag, column.tobytes())


def encode_entry(entry: Entry) -> bytes:
    if isinstance(entry, BatchEntry):
        return encode_item(
            [
                BATCH_ENTRY,
                entry.stamp_us,
                [
                    [
                        p.producer_id,
                        p.seq,
                        p.batch.raw,
                        p.n_duplicates,
                        [list(r) for r in p.rejected],
                        _typed(TAG_UINT32_LE, p.dropped),
                        _typed(TAG_UINT64_LE, p.id_hashes),
                    ]
                    for p in entry.parts
                ],
            ]
        )
    if isinstance(entry, SchemaEntry):
        return encode_item(
            [
                SCHEMA_ENTRY,
                entry.catalog_version,
                [[lm.generation, lm.schema.to_wire()] for lm in entry.metrics],
            ]
        )
    if isinstance(entry, WebhookMark):
        return encode_item([WEBHOOK_MARK, entry.next_cursor])
    raise TypeError(f"not a log entry: {entry!r}")


def _uint(obj: object, path: str, bits: int = 64) -> int:
    if type(obj) is not int or not 0 <= obj < 1 << bits:
        raise RecordError(f"log record: {path}: expected an unsigned integer")
    return obj


def _column(obj: object, path: str, tag: int, dtype: np.dtype[Any]) -> Array | None:
    if obj is None:
        return None
    if type(obj) is not CBORTag or obj.tag != tag or type(obj.value) is not bytes:
        raise RecordError(f"log record: {path}: expected null or tag {tag}")
    if len(obj.value) % dtype.itemsize:
        raise RecordError(f"log record: {path}: not a whole number of items")
    return np.frombuffer(obj.value, dtype=dtype)


def _part(obj: object, path: str) -> BatchPart:
    if type(obj) is not list or len(obj) != 7:
        raise RecordError(f"log record: {path}: expected a 7-item part")
    producer_id, seq, raw, n_duplicates, rejected_obj, dropped_obj, hashes_obj = obj
    # The batch as the client encoded it: read from its bytes when it is in the clients' shape
    # and within today's limits (every replica and every replay decodes every part), else the
    # generic decoder, which also takes what older, looser limits let in.
    batch = read_batch(raw) if type(raw) is bytes else None
    if batch is None:
        try:
            batch = decode_batch(raw, f"{path}.batch", check_limits=False)
        except ColumnError as exc:
            raise RecordError(f"log record: {exc}") from None
    if type(rejected_obj) is not list:
        raise RecordError(f"log record: {path}.rejected: expected an array")
    rejected: list[tuple[int, str]] = []
    for item in rejected_obj:
        if type(item) is not list or len(item) != 2 or type(item[1]) is not str:
            raise RecordError(f"log record: {path}.rejected: expected [index, reason] pairs")
        rejected.append((_uint(item[0], f"{path}.rejected"), item[1]))
    dropped = _column(dropped_obj, f"{path}.dropped", TAG_UINT32_LE, U32)
    hashes = _column(hashes_obj, f"{path}.id_hashes", TAG_UINT64_LE, U64)
    n = len(batch)
    if (
        dropped is not None
        and len(dropped)
        and (int(dropped.max()) >= n or (len(dropped) > 1 and bool((np.diff(dropped) <= 0).any())))
    ):
        raise RecordError(f"log record: {path}.dropped: positions must rise and stay below {n}")
    return BatchPart(
        producer_id=_uint(producer_id, f"{path}.producer_id"),
        seq=_uint(seq, f"{path}.seq"),
        batch=batch,
        dropped=dropped,
        n_duplicates=_uint(n_duplicates, f"{path}.n_duplicates"),
        rejected=tuple(rejected),
        id_hashes=hashes,
    )


def _schema_entry(item: list[Any]) -> SchemaEntry:
    if len(item) != 3 or type(item[2]) is not list:
        raise RecordError("log record: SchemaEntry: expected [1, catalog_version, metrics]")
    metrics: list[LiveMetric] = []
    for i, pair in enumerate(item[2]):
        if type(pair) is not list or len(pair) != 2 or type(pair[1]) is not dict:
            raise RecordError(f"log record: SchemaEntry.metrics[{i}]: expected [generation, map]")
        try:
            schema = MetricSchema.from_wire(pair[1])
        except (ValueError, TypeError) as exc:
            raise RecordError(f"log record: SchemaEntry.metrics[{i}]: {exc}") from None
        metrics.append(LiveMetric(generation=_uint(pair[0], "generation"), schema=schema))
    return SchemaEntry(
        catalog_version=_uint(item[1], "SchemaEntry.catalog_version"), metrics=tuple(metrics)
    )


def decode_entry(data: bytes) -> Entry:
    """The entry ``encode_entry`` made; ``RecordError`` naming the problem otherwise."""
    try:
        item = decode_item(data)
    except ValueError as exc:
        raise RecordError(f"log record: {exc}") from None
    if type(item) is not list or not item or type(item[0]) is not int:
        raise RecordError("log record: expected an array starting with its layout number")
    if item[0] == BATCH_ENTRY:
        if len(item) != 3 or type(item[1]) is not int or type(item[2]) is not list:
            raise RecordError("log record: BatchEntry: expected [3, stamp_us, parts]")
        parts = tuple(_part(p, f"BatchEntry.parts[{i}]") for i, p in enumerate(item[2]))
        return BatchEntry(stamp_us=item[1], parts=parts)
    if item[0] == SCHEMA_ENTRY:
        return _schema_entry(item)
    if item[0] == WEBHOOK_MARK:
        if len(item) != 2:
            raise RecordError("log record: WebhookMark: expected [4, next_cursor]")
        return WebhookMark(next_cursor=_uint(item[1], "WebhookMark.next_cursor"))
    if item[0] == OLD_BATCH_ENTRY:
        raise RecordError(
            "log record: layout 2 (written by a version before the columnar log, protocol 1); "
            "this version reads layouts 1, 3 and 4 only"
        )
    raise RecordError(f"log record: unknown layout {item[0]}")
