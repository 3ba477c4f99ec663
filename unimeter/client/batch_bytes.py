"""The batch map's bytes, assembled by hand: the same bytes as ``wire.batch.encode_batch``.

Why not ``cbor2.dumps``: a batch is a few byte strings behind short CBOR heads (docs/protocol.md,
section 4), and building the dict of ``CBORTag`` objects that ``cbor2`` encodes costs several
times what joining the heads and the column buffers does. Every call sends one batch per
partition, so this is paid eight times per call on the default cluster. The tests check these
bytes against ``encode_batch`` for random batches, so the two cannot drift apart.

CBOR heads (RFC 8949, section 3): a major type in the top three bits, then the length in the
low five bits when under 24, else in the 1, 2, 4 or 8 bytes that follow (big-endian).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from unimeter.wire.batch import (
    TAG_SINT64_LE,
    TAG_UINT8,
    TAG_UINT16_LE,
    TAG_UINT32_LE,
    TAG_UINT64_LE,
)

from .packed import Array

_BYTES, _TEXT, _ARRAY, _MAP, _TAG = 2, 3, 4, 5, 6
_SHORT_HEADS = [[bytes((major << 5 | n,)) for n in range(24)] for major in range(8)]
_LITTLE_ENDIAN_HOST = sys.byteorder == "little"


def head(major: int, n: int) -> bytes:
    if n < 24:
        return _SHORT_HEADS[major][n]
    top = major << 5
    if n < 0x100:
        return bytes((top | 24, n))
    if n < 0x10000:
        return bytes((top | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((top | 26,)) + n.to_bytes(4, "big")
    return bytes((top | 27,)) + n.to_bytes(8, "big")


def _text(text: str) -> bytes:
    data = text.encode()
    return head(_TEXT, len(data)) + data


_CACHED_TABLE_LEN_MAX = 32  # longer tables are rare, and would make the cache large


def text_array(texts: tuple[str, ...]) -> bytes:
    """A CBOR array of text strings."""
    if len(texts) <= _CACHED_TABLE_LEN_MAX:
        return _small_text_array(texts)
    return head(_ARRAY, len(texts)) + b"".join(map(_text, texts))


@lru_cache(maxsize=1024)
def _small_text_array(texts: tuple[str, ...]) -> bytes:
    # Code tables and property value tables repeat from call to call.
    return head(_ARRAY, len(texts)) + b"".join(map(_text, texts))


def _key(key: str) -> bytes:
    return _text(key)


# Map keys with the tag of their typed array: the constant prefix of each column's bytes.
_M = _key("m")
_MI_U8 = _key("mi") + head(_TAG, TAG_UINT8)
_MI_U16 = _key("mi") + head(_TAG, TAG_UINT16_LE)
_A = _key("a") + head(_TAG, TAG_UINT64_LE)
_V = _key("v") + head(_TAG, TAG_SINT64_LE)
_T = _key("t") + head(_TAG, TAG_SINT64_LE)
_O = _key("o") + head(_TAG, TAG_UINT8)
_P = _key("p")
_E = _key("e")
_EO = _key("eo") + head(_TAG, TAG_UINT32_LE)
_INDEX_U8 = head(_TAG, TAG_UINT8)
_INDEX_U16 = head(_TAG, TAG_UINT16_LE)
_TRIPLE = head(_ARRAY, 3)
_MAP_HEADS = [head(_MAP, keys) for keys in range(10)]


def batch_bytes(
    metric_codes: tuple[str, ...],
    metric_index: Array,  # uint8 or uint16
    account_ids: Array,  # uint64
    values: Array,  # int64
    timestamps: Array | None,  # int64
    operation_types: Array | None,  # uint8
    properties: Sequence[tuple[str, tuple[str, ...], Array]],  # (key, values, uint8/uint16)
    event_id_data: bytes | None,
    event_id_offsets: Array | None,  # uint32, n + 1
) -> bytes:
    """The encoded batch map, key for key as ``encode_batch`` writes it, from native arrays of
    the widths named."""
    if _LITTLE_ENDIAN_HOST:
        return _assemble(
            metric_codes,
            metric_index,
            account_ids,
            values,
            timestamps,
            operation_types,
            properties,
            event_id_data,
            event_id_offsets,
        )

    def little(column: Array) -> Array:
        return column.astype(column.dtype.newbyteorder("<"))

    return _assemble(
        metric_codes,
        little(metric_index),
        little(account_ids),
        little(values),
        None if timestamps is None else little(timestamps),
        operation_types,
        [(key, table, little(index)) for key, table, index in properties],
        event_id_data,
        None if event_id_offsets is None else little(event_id_offsets),
    )


def _buffer(column: Array) -> Array | bytes:
    """What ``join`` copies a column's bytes from: the array itself when its items are back
    to back (no copy of its own), else a copy that is."""
    return column if column.flags.c_contiguous else column.tobytes()


def _assemble(
    metric_codes: tuple[str, ...],
    metric_index: Array,
    account_ids: Array,
    values: Array,
    timestamps: Array | None,
    operation_types: Array | None,
    properties: Sequence[tuple[str, tuple[str, ...], Array]],
    event_id_data: bytes | None,
    event_id_offsets: Array | None,
) -> bytes:
    # Runs once per batch: few calls, each column's constant prefix precomputed.
    n = len(account_ids)
    eight = head(_BYTES, 8 * n)  # every 64-bit column's byte-string head
    one = head(_BYTES, n)  # and every 8-bit one's
    keys = 4
    parts: list[Any] = [  # bytes, and arrays whose buffers join reads
        b"",
        _M,
        text_array(metric_codes),
        *(
            (_MI_U8, one, _buffer(metric_index))
            if metric_index.dtype.itemsize == 1
            else (_MI_U16, head(_BYTES, 2 * n), _buffer(metric_index))
        ),
        _A,
        eight,
        _buffer(account_ids),
        _V,
        eight,
        _buffer(values),
    ]
    if timestamps is not None:
        keys += 1
        parts += (_T, eight, _buffer(timestamps))
    if operation_types is not None:
        keys += 1
        parts += (_O, one, _buffer(operation_types))
    if properties:
        keys += 1
        parts += (_P, head(_ARRAY, len(properties)))
        for key, table, index in properties:
            parts += (_TRIPLE, _text(key), text_array(table))
            if index.dtype.itemsize == 1:
                parts += (_INDEX_U8, one, _buffer(index))
            else:
                parts += (_INDEX_U16, head(_BYTES, 2 * n), _buffer(index))
    if event_id_data is not None:
        assert event_id_offsets is not None
        keys += 2
        parts += (
            _E,
            head(_BYTES, len(event_id_data)),
            event_id_data,
            _EO,
            head(_BYTES, 4 * (n + 1)),
            _buffer(event_id_offsets),
        )
    parts[0] = _MAP_HEADS[keys]
    return b"".join(parts)
