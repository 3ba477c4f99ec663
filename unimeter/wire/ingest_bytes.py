"""The node's INGEST read straight from the frame's bytes.

Theory of operation. Decoding an INGEST the generic way costs the node two CBOR decodes and two
walks: the frame's item is weighed (``cborscan.check_item``, the decode-bomb guard) and built
by ``cbor2``, its body map is converted field by field, then the batch's own map, carried as a
byte string, is weighed and built again before ``batch.decode_batch_map`` checks its columns.
For a 500-event batch that is some 70 µs of a request's CPU before admission starts, none of it
per event: the columns are byte strings, so every step is a constant -- a constant paid per
request, and requests are what the node handles.

Clients write this frame in one fixed shape (``wire/fast_ingest.py`` writes the frame,
``client/batch_bytes.py`` the batch): an array of kind 8, the request id and a map of the keys
``p pid seq sy cv b`` in that order, whose ``b`` is the batch map. ``ingest_payload`` matches the
frame's fields byte by byte, with the checks ``fast.ingest`` makes (the partition's range, a
boolean ``sy``), and walks the batch map's bytes into the very map ``cbor2`` would build -- byte
strings behind their typed-array tags, lists of code and property texts -- without building
anything else. Then the generic column checks run on that map, the same functions the generic
path calls: ``batch.small_batch_of`` for a small plain batch, ``batch.decode_batch_map`` for
any other. So nothing is checked twice and nothing is checked differently. A plain batch in the
clients' exact layout (codes, one-byte indexes, accounts, values: what a plain producer sends,
one event or ten thousand) is read byte-exact before that, with the checks
``decode_batch_map`` makes of it, without building even the map.

It answers None -- the caller decodes the payload the generic way, which accepts it or names
the problem exactly as before -- for anything else: another key order, a CBOR form clients do
not write (indefinite lengths, tags the batch map does not use), broken bytes, bytes past the
map, a batch its column checks refuse, and a batch whose items would weigh more than the
decode-bomb guard allows for its length (counted here from the items met, an upper bound).
So this reader only ever accepts what the generic path accepts, as the same message
(``tests/test_ingest_bytes.py``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from cbor2 import CBORTag

from unimeter import limits
from unimeter.model import is_valid_code
from unimeter.wire.batch import (
    I64,
    U8,
    U64,
    ColumnError,
    EventBatch,
    decode_batch_map,
    small_batch_of,
)
from unimeter.wire.cborscan import (
    ARRAY_WEIGHT,
    FILLED_MAP_WEIGHT,
    MAP_WEIGHT,
    PAIR_WEIGHT,
    STRING_WEIGHT,
    TAG_WEIGHT,
    budget_for,
    needs_check,
)
from unimeter.wire.fast_ingest import UINT_PATTERN, uint_value
from unimeter.wire.messages import Ingest

_PARTITION_END = limits.partitions_max

_FRAME = re.compile(
    rb"\x83\x08" + UINT_PATTERN
    + rb"\xa6\x61p" + UINT_PATTERN + rb"\x63pid" + UINT_PATTERN + rb"\x63seq" + UINT_PATTERN
    + rb"\x62sy([\xf4\xf5])\x62cv" + UINT_PATTERN
    + rb"\x61b([\x40-\x57]|\x58.|\x59..|\x5a....)",
    re.DOTALL,
)  # fmt: skip

# The plain batch (``_plain_batch``): the map of four keys and its first key, and each
# column's key and tag; up to this many events its index is scanned in Python (faster than
# numpy's reduction for a few).
_SCAN_MAX = 64
_CODES = b"\xa4\x61m"
_INDEX = b"\x62mi\xd8\x40"  # "mi", tag 64 (uint8)
_ACCOUNTS = b"\x61a\xd8\x47"  # "a", tag 71 (uint64, little-endian)
_VALUES = b"\x61v\xd8\x4f"  # "v", tag 79 (int64, little-endian)

# CBOR major types (RFC 8949, section 3) of the items a batch map holds.
_BYTES, _TEXT, _ARRAY, _MAP, _TAG = 2, 3, 4, 5, 6
# What ``cborscan.check_item`` charges for an item of each major type, its pointer in the
# parent included (a string of one byte or none is charged less), and for each map pair.
_WEIGHT = {
    _BYTES: 1 + STRING_WEIGHT,
    _TEXT: 1 + STRING_WEIGHT,
    _ARRAY: 1 + ARRAY_WEIGHT,
    _MAP: 1 + MAP_WEIGHT + FILLED_MAP_WEIGHT,
    _TAG: 1 + TAG_WEIGHT + 1,
}
_PAIR_WEIGHT = PAIR_WEIGHT + 2


def ingest_payload(payload: bytes) -> tuple[int, Ingest] | None:
    """(request id, message) of an INGEST payload of the shape above, or None."""
    match = _FRAME.match(payload)
    if match is None:
        return None
    rid, p, pid, seq, sync, cv, head = match.groups()
    partition = uint_value(p)
    start = match.end()
    if partition >= _PARTITION_END or len(payload) - start != _head(head, 0, 0x40)[0]:
        return None
    batch = read_batch(payload[start:])
    if batch is None:
        return None
    message = Ingest(
        partition=partition,
        producer_id=uint_value(pid),
        seq=uint_value(seq),
        sync=sync == b"\xf5",
        catalog_version=uint_value(cv),
        batch=batch,
    )
    return uint_value(rid), message


def read_batch(raw: bytes) -> EventBatch | None:
    """``batch.decode_batch(raw)`` when it accepts ``raw`` and the map is in a shape this
    reader walks; None otherwise (never a batch ``decode_batch`` would refuse)."""
    try:
        plain = _plain_batch(raw)
        if plain is not None:
            return plain
        obj = _batch_map(raw)
    except (IndexError, UnicodeDecodeError):
        return None
    if obj is None:
        return None
    small = small_batch_of(obj, raw)
    if small is not None:
        return small
    try:
        return decode_batch_map(obj, "batch", raw=raw)
    except ColumnError:
        return None


def _column(raw: bytes, pos: int, key: bytes, size: int) -> int:
    """Where the column of ``size`` bytes behind ``key`` (its name and tag) starts at
    ``pos``, or -1 when something else is there."""
    end = pos + len(key)
    if raw[pos:end] != key:
        return -1
    length, start = _head(raw, end, 0x40)
    return start if length == size else -1


def _plain_batch(raw: bytes) -> EventBatch | None:
    """A plain batch in exactly the layout clients write it (the keys ``m mi a v``, fewer than
    24 codes, one-byte indexes), read with the checks ``decode_batch_map`` makes of such a
    batch (the same as ``decode_small_batch``'s, and the event limit) without building the map
    first: a third of the time of ``_batch_map`` and the checks on the map, which every other
    batch takes. None for anything else."""
    if not raw.startswith(_CODES):
        return None
    count = raw[3] - 0x80  # an array of fewer than 24 codes
    if not 0 < count < 24:
        return None
    pos = 4
    codes: list[str] = []
    for _ in range(count):
        code, pos = _text(raw, pos)
        if not is_valid_code(code):
            return None
        codes.append(code)
    if len(set(codes)) != count:
        return None
    n = _head(raw, pos + len(_INDEX), 0x40)[0]  # the index column's length: the events
    if not 0 < n <= limits.events_per_batch_max:
        return None
    at_index = _column(raw, pos, _INDEX, n)
    if at_index < 0:
        return None
    at_accounts = _column(raw, at_index + n, _ACCOUNTS, 8 * n)
    if at_accounts < 0:
        return None
    at_values = _column(raw, at_accounts + 8 * n, _VALUES, 8 * n)
    if at_values < 0 or at_values + 8 * n != len(raw):
        return None
    index = np.frombuffer(raw[at_index : at_index + n], U8)
    if (max(index.data) if n <= _SCAN_MAX else int(index.max())) >= count:
        return None
    return EventBatch.from_columns(
        tuple(codes),
        index,
        np.frombuffer(raw[at_accounts : at_accounts + 8 * n], U64),
        np.frombuffer(raw[at_values:], I64),
        None,
        None,
        (),
        None,
        None,
        raw,
    )


def _batch_map(raw: bytes) -> dict[str, Any] | None:
    """The map ``cbor2`` would build from ``raw`` (see the module's docstring), or None.

    Written for speed, as ``cborscan.check_item`` is: one loop over the map's pairs, locals
    only, heads decoded inline. ``weight`` bounds what ``check_item`` would charge for the items
    met so far (``_WEIGHT``); past the budget nothing more is built here and the generic
    path's guard weighs the item (it may refuse it). Running off the end raises IndexError,
    which the caller takes as "not read".
    """
    end = len(raw)
    # (Items too small to need the guard are bounded by their few bytes anyway.)
    budget = budget_for(end) if needs_check(end) else budget_for(4096)
    initial = raw[0]
    if not 0xA0 <= initial <= 0xB7:  # a map of fewer than 24 pairs
        return None
    pairs = initial - 0xA0
    weight = _WEIGHT[_MAP] + _PAIR_WEIGHT * pairs
    pos = 1
    obj: dict[str, Any] = {}
    for _ in range(pairs):
        size = raw[pos] - 0x60  # a key of 1 to 23 bytes
        if not 0 < size < 24:
            return None
        key = _KEYS.get(raw[pos + 1 : pos + 1 + size])
        pos += 1 + size
        if key is None or key in obj:
            return None  # an unknown or repeated key: the generic path names it
        kind = _KIND[key]
        if kind == _TYPED:
            obj[key], pos = _typed(raw, pos)
            weight += _WEIGHT[_TAG] + _WEIGHT[_BYTES]
        elif kind == _TEXTS:
            texts, pos, weight = _texts(raw, pos, weight, budget)
            if texts is None:
                return None
            obj[key] = texts
        elif kind == _BYTES:
            obj[key], pos = _string(raw, pos, 0x40)
            weight += _WEIGHT[_BYTES]
        else:
            columns, pos, weight = _properties(raw, pos, weight, budget)
            if columns is None:
                return None
            obj[key] = columns
        if weight > budget:
            return None
    return obj if pos == end else None


def _head(raw: bytes, pos: int, base: int) -> tuple[int, int]:
    """(argument, where the content starts) of the item head at ``pos`` of the major type whose
    first head byte is ``base`` (0x40 byte string, 0x60 text, 0x80 array). IndexError ("not
    read") for any other item, or an argument of eight bytes."""
    initial = raw[pos] - base
    if 0 <= initial < 24:
        return initial, pos + 1
    if initial == 24:
        return raw[pos + 1], pos + 2
    if initial == 25:
        return int.from_bytes(raw[pos + 1 : pos + 3], "big"), pos + 3
    if initial == 26:
        return int.from_bytes(raw[pos + 1 : pos + 5], "big"), pos + 5
    raise IndexError  # another item, or a length no batch has: not read


def _texts(raw: bytes, pos: int, weight: int, budget: int) -> tuple[list[str] | None, int, int]:
    """An array of texts: (the texts, the position after it, the weight), None if not that."""
    count, pos = _head(raw, pos, 0x80)
    weight += _WEIGHT[_ARRAY] + count * _WEIGHT[_TEXT]
    if weight > budget:
        return None, pos, weight
    texts = []
    for _ in range(count):
        text, pos = _text(raw, pos)
        texts.append(text)
    return texts, pos, weight


def _properties(
    raw: bytes, pos: int, weight: int, budget: int
) -> tuple[list[list[Any]] | None, int, int]:
    """The property columns: an array of [key, [values...], typed index] triples."""
    count, pos = _head(raw, pos, 0x80)
    weight += _WEIGHT[_ARRAY] + count * (_WEIGHT[_ARRAY] + 2 * _WEIGHT[_TEXT] + _WEIGHT[_TAG])
    columns: list[list[Any]] = []
    for _ in range(count):
        if raw[pos] != 0x83 or weight > budget:
            return None, pos, weight
        key, pos = _text(raw, pos + 1)
        values, pos, weight = _texts(raw, pos, weight, budget)
        if values is None:
            return None, pos, weight
        index, pos = _typed(raw, pos)
        columns.append([key, values, index])
    return columns, pos, weight


def _string(raw: bytes, pos: int, base: int) -> tuple[bytes, int]:
    """The bytes of the byte string (``base`` 0x40) or text (0x60) whose head is at ``pos``,
    and the position after it (past the end when the string is cut short: every caller ends
    by checking it stopped exactly at the end, or reads on and runs off it)."""
    size, pos = _head(raw, pos, base)
    return raw[pos : pos + size], pos + size


def _text(raw: bytes, pos: int) -> tuple[str, int]:
    """The text whose head is at ``pos``, and the position after it."""
    data, pos = _string(raw, pos, 0x60)
    return data.decode(), pos  # strict UTF-8, as cbor2 decodes text


def _typed(raw: bytes, pos: int) -> tuple[CBORTag, int]:
    """A typed array (a one-byte tag over a byte string; ``decode_batch_map`` checks which tag
    and how long) whose head is at ``pos``, and the position after it."""
    if raw[pos] != 0xD8:
        raise IndexError  # not a tag of one byte: not read
    data, after = _string(raw, pos + 2, 0x40)
    return CBORTag(raw[pos + 1], data), after


# The batch map's keys as encoded (one text of one or two bytes), and how each value is read.
_TYPED, _TEXTS, _PROPS = 1, 3, 4
_KEYS = {key.encode(): key for key in ("m", "mi", "a", "v", "t", "o", "p", "e", "eo")}
_KIND = {"m": _TEXTS, "mi": _TYPED, "a": _TYPED, "v": _TYPED, "t": _TYPED, "o": _TYPED,
         "p": _PROPS, "e": _BYTES, "eo": _TYPED}  # fmt: skip
