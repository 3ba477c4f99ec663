"""One ingest call's events as packed columns: what both entry points build, what batching splits.

Theory of operation: ``client.ingest`` reads ``Event`` objects (``columns.py``) and
``client.ingest_columns`` reads the caller's arrays (``arrays.py``); both end here, in the
layout of the wire batch (docs/protocol.md, section 4) but for the whole call: numeric columns
as numpy arrays, metric codes as a sorted table plus an index column, each property key as a
table of its distinct values plus an index column, event ids as one UTF-8 byte string plus
offsets. Entry ``i`` of every column is the caller's event ``i``; ``batching.py`` routes the
account column, gathers every column into partition order once and cuts it into batches.

Everything in a ``Packed`` is valid: the readers check before they build one.

The helpers below dictionary-encode and pack without a Python statement per event: tables come
from ``dict.fromkeys`` (C-level hashing), index columns from ``map`` over the table's lookup,
ids from one ``join`` and the offsets from a cumulative sum of their lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from unimeter.wire.batch import NO_TIMESTAMP

Array = npt.NDArray[Any]

# Native types: the columns are built from Python's ``array`` buffers; ``batch_bytes`` writes
# them little-endian, as the wire wants.
U8 = np.dtype(np.uint8)
U16 = np.dtype(np.uint16)
U32 = np.dtype(np.uint32)
U64 = np.dtype(np.uint64)
I64 = np.dtype(np.int64)

# Stands for "the event lacks this key" in a column of property values.
ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT", "__slots__": ()})()


def index_dtype(entries: int) -> np.dtype[Any]:
    """The narrowest unsigned type holding the numbers 0..entries."""
    if entries < 0x100:
        return U8
    return U16 if entries < 0x10000 else U32


@dataclass(slots=True, eq=False)
class KeyColumn:
    """One property key of a call: its distinct values and, per event, which one it has."""

    key: str
    values: tuple[str, ...]  # distinct, in order of first appearance
    index: Array  # per event: 0 = the event lacks the key, j >= 1 = values[j - 1]


@dataclass(slots=True, eq=False)
class Packed:
    """Valid events as columns; every column has one entry per event, in the caller's order."""

    account_ids: Array  # uint64
    values: Array  # int64
    code_table: tuple[str, ...]  # each distinct metric code once, sorted
    code_ids: Array | None  # uint8/uint16 index into code_table; None: every event has code 0
    timestamps: Array | None  # int64 microseconds; NO_TIMESTAMP where the leader stamps
    operation_types: Array | None  # uint8; None when every event's is NONE
    properties: tuple[KeyColumn, ...]  # sorted by key; () when no event has any
    id_data: bytes | None  # every id's UTF-8 bytes, concatenated; None when no event has one
    id_offsets: Array | None  # int64, n + 1 entries: id i is id_data[off[i]:off[i + 1]]
    id_width: int = 0  # when every event has an id of this many bytes (UUIDs); else 0

    def __len__(self) -> int:
        return len(self.account_ids)

    def take(self, order: Array) -> Packed:
        """The events at ``order`` (an index array), in that order."""
        data, offsets, width = self.id_data, self.id_offsets, self.id_width
        if width:
            assert data is not None
            data = gather_rows(data, width, order)
            offsets = uniform_offsets(width, len(order))
        elif data is not None:
            assert offsets is not None
            data, offsets = take_ids(data, offsets, order)
        return Packed(
            account_ids=self.account_ids[order],
            values=self.values[order],
            code_table=self.code_table,
            code_ids=None if self.code_ids is None else self.code_ids[order],
            timestamps=None if self.timestamps is None else self.timestamps[order],
            operation_types=None if self.operation_types is None else self.operation_types[order],
            properties=tuple(KeyColumn(c.key, c.values, c.index[order]) for c in self.properties),
            id_data=data,
            id_offsets=offsets,
            id_width=width,
        )

    # ------------------------------------------------------------------ per-event views
    # For tests and the list form (``columns.Columns``); batching never calls these.

    def metric_codes(self) -> list[str]:
        if self.code_ids is None:
            return [self.code_table[0]] * len(self)
        return [self.code_table[i] for i in self.code_ids.tolist()]

    def property_maps(self) -> list[dict[str, str] | None]:
        out: list[dict[str, str] | None] = [None] * len(self)
        for column in self.properties:
            table = column.values
            for i, j in enumerate(column.index.tolist()):
                if j:
                    found = out[i]
                    if found is None:
                        found = out[i] = {}
                    found[column.key] = table[j - 1]
        return out

    def event_ids(self) -> list[str | None]:
        if self.id_data is None or self.id_offsets is None:
            return [None] * len(self)
        data, bounds = self.id_data, self.id_offsets.tolist()
        return [data[a:b].decode() if b > a else None for a, b in pairwise(bounds)]


def empty() -> Packed:
    return Packed(np.zeros(0, U64), np.zeros(0, I64), (), None, None, None, (), None, None)


# --------------------------------------------------------------------------- packing helpers


def numbered(column: Sequence[Any]) -> tuple[list[Any], Array]:
    """``column``'s distinct entries in order of first appearance, and per entry its number
    in that list (0-based). Entries must be hashable and compare only equal to themselves
    (exact ``str`` or the ``ABSENT`` marker): callers check the types first."""
    table = dict.fromkeys(column)
    entries = list(table)
    if len(entries) == 1:
        return entries, np.zeros(len(column), U8)
    position = dict(zip(entries, range(len(entries)), strict=True))
    dtype = index_dtype(len(entries) - 1)
    if dtype is U8:
        return entries, np.frombuffer(bytes(map(position.__getitem__, column)), U8)
    return entries, np.fromiter(map(position.__getitem__, column), dtype, len(column))


def key_column(key: str, column: Sequence[Any], absent: Any = ABSENT) -> KeyColumn | None:
    """The dictionary encoding of one key's values (``absent`` where an event lacks it); None
    when no event has the key. Every other entry must be an exact ``str``."""
    entries, numbers = numbered(column)
    if not entries:
        return None
    if absent not in entries:
        # No event lacks it: shift the numbers so that 0 still means "absent".
        dtype = index_dtype(len(entries))
        return KeyColumn(key, tuple(entries), numbers.astype(dtype) + dtype.type(1))
    if len(entries) == 1:
        return None
    where = entries.index(absent)
    values = entries[:where] + entries[where + 1 :]
    # Renumber: ABSENT -> 0, the values 1..len(values) in their order.
    lut = np.arange(len(entries), dtype=np.int64) + 1
    lut[where] = 0
    lut[where + 1 :] -= 1
    return KeyColumn(key, tuple(values), lut.astype(index_dtype(len(values)))[numbers])


def utf8_lengths(texts: Sequence[str]) -> tuple[bytes, Array]:
    """The UTF-8 bytes of ``texts`` joined, and each one's byte length (int64).
    ``UnicodeEncodeError`` (a ``ValueError``) for a string that cannot be encoded."""
    joined = "".join(texts)
    if joined.isascii():  # one byte per character
        return joined.encode("ascii"), np.fromiter(map(len, texts), I64, len(texts))
    encoded = [text.encode() for text in texts]
    return b"".join(encoded), np.fromiter(map(len, encoded), I64, len(encoded))


def gather_rows(data: bytes, width: int, order: Array) -> bytes:
    """Ids of one ``width`` (the rows of a matrix), those at ``order``, in that order. Numpy
    gathers items of a numeric type column by column several times faster than it gathers
    items of ``width`` bytes, so a width made of 32-bit words (a UUID's 36 bytes: 9) is
    gathered a word column at a time."""
    if width % 4:
        return np.frombuffer(data, f"V{width}")[order].tobytes()
    words = np.frombuffer(data, U32).reshape(-1, width // 4)
    out = np.empty((len(order), width // 4), U32)
    for j in range(width // 4):
        out[:, j] = words[:, j][order]
    return out.tobytes()


def uniform_offsets(width: int, n: int) -> Array:
    return np.arange(0, (n + 1) * width, width, dtype=I64)


def packed_ids(texts: Sequence[str], lengths: Array, data: bytes) -> tuple[bytes, Array, int]:
    """(data, offsets, width) for ids of the given byte lengths, all present (>= 1 byte) or
    empty for none."""
    width = int(lengths[0])
    if width and len(data) == width * len(texts) and not np.count_nonzero(lengths != width):
        return data, uniform_offsets(width, len(texts)), width
    return data, offsets_of(lengths), 0


def offsets_of(lengths: Array) -> Array:
    offsets = np.zeros(len(lengths) + 1, I64)
    np.cumsum(lengths, dtype=I64, out=offsets[1:])
    return offsets


def present_mask(column: Sequence[Any]) -> list[bool]:
    return [item is not None for item in column]


def without_none(column: Sequence[Any]) -> list[Any]:
    return list(compress(column, present_mask(column)))


def take_ids(data: bytes, offsets: Array, order: Array) -> tuple[bytes | None, Array | None]:
    """The ids of the events at ``order``, packed again; (None, None) when none has one."""
    lengths = np.diff(offsets)[order]
    new_offsets = offsets_of(lengths)
    total = int(new_offsets[-1])
    if total == 0:
        return None, None
    raw = np.frombuffer(data, U8)
    # Byte j of the new buffer comes from old byte new_j + (old start - new start) of its id.
    shift = np.repeat(offsets[:-1][order] - new_offsets[:-1], lengths)
    return raw[np.arange(total, dtype=np.int64) + shift].tobytes(), new_offsets


def stamps_with_gaps(present: Sequence[bool], stamped: Array) -> Array:
    """A timestamp column from the stamps of the events marked in ``present``."""
    out = np.full(len(present), NO_TIMESTAMP, I64)
    out[np.frombuffer(bytes(present), np.bool_)] = stamped
    return out
