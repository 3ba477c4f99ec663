"""Columns for the partition snapshot: one attribute of many records written as one item.

Every helper loops in C (``array``, ``map``, ``itertools``, ``operator``), never in Python per
value: a partition holds millions of records, and a snapshot that costs Python work per record
is slower to load than replaying the log it replaces.

- An *int column* is a typecode byte (``b h i q``) and the values as little-endian integers of
  the narrowest of those widths that holds them all (found by widening on overflow while
  filling it), or, if one does not fit in int64, a plain CBOR list (bignums).
- A *string column* repeats few distinct values: a table of them plus an int column of indexes.
- Records are read a chunk at a time (``gather``): every attribute of a chunk is read while
  the chunk is in the CPU cache, instead of one pass over millions of scattered objects per
  attribute.
"""

from __future__ import annotations

import gc
import sys
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import accumulate, chain, compress, repeat
from operator import attrgetter, is_not
from typing import Any

_LITTLE = sys.byteorder == "little"
CHUNK = 512  # records per chunk: a few tens of KB of objects, well inside L2
_WIDER = {"b": "h", "h": "i", "i": "q"}
assert [array(code).itemsize for code in "bhiq"] == [1, 2, 4, 8]

IntColumn = bytes | list[int]


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cycle collection while millions of acyclic objects are made or walked: the collector
    would traverse them again and again (and, in a forked snapshot child, write to every page
    it walks, defeating copy-on-write)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _little(words: array[int]) -> bytes:
    if _LITTLE:
        return words.tobytes()
    swapped = array(words.typecode, words)
    swapped.byteswap()
    return swapped.tobytes()


def _native(typecode: str, blob: bytes | memoryview) -> array[int]:
    out = array(typecode)
    out.frombytes(blob)
    if not _LITTLE:
        out.byteswap()
    return out


def words_bytes(arrays: Iterable[array[int]]) -> bytes:
    """Several int64 arrays as one little-endian byte string, in order."""
    blob = b"".join(arrays)
    return blob if _LITTLE else _little(_native("q", blob))


def words_of(blob: bytes | memoryview) -> array[int]:
    return _native("q", blob)


class Ints:
    """An int column filled a chunk at a time, in the narrowest array type that holds it."""

    __slots__ = ("big", "words")

    def __init__(self) -> None:
        self.words = array("b")
        self.big: list[int] | None = None  # once a value does not fit in int64

    def add(self, values: Iterable[int]) -> None:
        chunk = values if isinstance(values, list) else list(values)
        while self.big is None:
            try:
                self.words.fromlist(chunk)  # all or nothing
                return
            except OverflowError:
                wider = _WIDER.get(self.words.typecode)
                if wider is None:
                    self.big = self.words.tolist()
                else:
                    self.words = array(wider, self.words)
        self.big += chunk

    def column(self) -> IntColumn:
        if self.big is not None:
            return self.big
        return self.words.typecode.encode() + _little(self.words)


def ints(values: Iterable[int]) -> IntColumn:
    column = Ints()
    column.add(values)
    return column.column()


def ints_of(column: IntColumn) -> Sequence[int]:
    if isinstance(column, list):
        return column
    return _native(chr(column[0]), memoryview(column)[1:])


def strs(values: Iterable[Any]) -> list[Any]:
    listed = list(values)
    table = list(dict.fromkeys(listed))
    position = {value: i for i, value in enumerate(table)}
    return [table, ints(map(position.__getitem__, listed))]


def strs_of(column: list[Any]) -> list[Any]:
    table, indexes = column
    return list(map(table.__getitem__, ints_of(indexes)))


def split(values: Sequence[Any], lengths: Sequence[int]) -> list[Any]:
    """``values`` cut into consecutive slices of ``lengths`` (slices keep the sequence type)."""
    ends = list(accumulate(lengths))
    return list(map(values.__getitem__, map(slice, chain((0,), ends), ends)))


def lists(values: list[Any], lengths: Sequence[int]) -> list[list[Any]]:
    """``values`` cut into consecutive lists of ``lengths``."""
    if lengths.count(1) == len(lengths):  # one event per record: no slicing
        return list(map(list, zip(values)))
    return split(values, lengths)


def attrs(objs: Iterable[Any], name: str) -> list[Any]:
    return list(map(attrgetter(name), objs))


def set_attrs(objs: Iterable[Any], name: str, values: Iterable[Any]) -> None:
    deque(map(setattr, objs, repeat(name), values), maxlen=0)


def present(values: Sequence[Any]) -> tuple[list[int], list[Any]]:
    """Positions of the values that are not None, and those values."""
    where = list(compress(range(len(values)), map(is_not, values, repeat(None))))
    return where, list(map(values.__getitem__, where))


def set_at(objs: Sequence[Any], name: str, where: Iterable[int], values: Iterable[Any]) -> None:
    set_attrs(map(objs.__getitem__, where), name, values)


def dicts(
    mappings: list[dict[Any, Any]], int_names: Sequence[str] = ()
) -> tuple[IntColumn, list[Any], list[Any], list[IntColumn]]:
    """Lengths, keys and values of several dicts, flat and in order, read chunk by chunk; with
    ``int_names``, those int attributes of the values as int columns instead of the values."""
    lengths = Ints()
    keys: list[Any] = []
    values: list[Any] = []
    columns = [Ints() for _ in int_names]
    getters = list(zip(columns, map(attrgetter, int_names), strict=True))
    for at in range(0, len(mappings), CHUNK):
        chunk = mappings[at : at + CHUNK]
        lengths.add(map(len, chunk))
        keys += chain.from_iterable(map(dict.keys, chunk))
        if getters:
            flat = list(chain.from_iterable(map(dict.values, chunk)))
            for column, getter in getters:
                column.add(map(getter, flat))
        else:
            values += chain.from_iterable(map(dict.values, chunk))
    return lengths.column(), keys, values, [column.column() for column in columns]


def dicts_of(lengths: IntColumn, keys: Sequence[Any], values: Sequence[Any]) -> list[Any]:
    sizes = ints_of(lengths)
    if sizes.count(1) == len(sizes):  # one entry each: no slicing
        return list(map(dict, zip(zip(keys, values, strict=True))))
    return list(map(dict, map(zip, split(keys, sizes), split(values, sizes))))


def u64s(members: Any) -> bytes:
    """A BitMap64 as its sorted members, little-endian uint64."""
    return _little(members.to_array())


def u64s_of(blob: bytes) -> array[int]:
    return _native("Q", blob)


Gathered = tuple[IntColumn, bytes, dict[str, IntColumn], dict[str, list[Any]]]


def gather(records: list[Any], int_names: Sequence[str], ref_names: Sequence[str]) -> Gathered:
    """Every record's ``ev`` (as an int column of lengths and one byte string of all events),
    its int attributes ``int_names`` (as int columns) and its attributes ``ref_names`` (as
    lists of references), read chunk by chunk."""
    ev_lengths = Ints()
    blobs: list[bytes] = []
    ints_by_name = {name: Ints() for name in int_names}
    refs: dict[str, list[Any]] = {name: [] for name in ref_names}
    int_getters = [(ints_by_name[name], attrgetter(name)) for name in int_names]
    ref_getters = [(refs[name], attrgetter(name)) for name in ref_names]
    for at in range(0, len(records), CHUNK):
        chunk = records[at : at + CHUNK]
        evs = list(map(attrgetter("ev"), chunk))
        ev_lengths.add(map(len, evs))
        blobs.append(words_bytes(evs))
        for column, getter in int_getters:
            column.add(map(getter, chunk))
        for found, getter in ref_getters:
            found += map(getter, chunk)
    int_columns = {name: column.column() for name, column in ints_by_name.items()}
    return ev_lengths.column(), b"".join(blobs), int_columns, refs


class BlobWriter:
    """Large byte strings written after the CBOR body, each referenced by its
    ``[offset, length]``: cbor2 would copy each through its growing output buffer, and on
    loading into a new bytes object, where the reader can take a slice of the input."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, blob: bytes) -> list[int]:
        self.parts.append(blob)
        self.size += len(blob)
        return [self.size - len(blob), len(blob)]


def blob_at(blobs: memoryview, ref: list[int]) -> memoryview:
    offset, length = ref
    assert offset >= 0 and offset + length <= len(blobs), "blob outside the snapshot"
    return blobs[offset : offset + length]


def events_of(
    lengths: IntColumn, blob: bytes | memoryview
) -> tuple[Sequence[int], list[array[int]]]:
    """Each record's event lengths and its own int64 array of events."""
    sizes = ints_of(lengths)
    return sizes, split(words_of(blob), sizes)
