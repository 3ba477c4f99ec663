"""The node's INGEST of a few plain events read straight from the frame's bytes.

Theory of operation. A lone request -- one event, or a few -- costs the node two CBOR decodes
before anything else happens: ``cbor2`` builds the frame's item (a ``CBORDecoder`` per frame),
``fast.ingest`` checks its body map, and ``batch.decode_small_batch`` decodes the batch's own
map from the byte string the body carries. Clients write this frame in one fixed shape
(``wire/fast_ingest.py`` writes the frame, ``client/batch_bytes.py`` the batch): an array of
kind 8, the request id and a map of the keys ``p pid seq sy cv b`` in that order, whose ``b`` is
a map of the keys ``m mi a v`` (codes, then the uint8 index, the uint64 accounts and the int64
values as tagged byte strings). ``ingest_payload`` reads exactly that shape, any integer width
CBOR allows included, with the checks ``fast.ingest`` and ``decode_small_batch`` make (the
partition's range, 1 to ``SMALL_BATCH_EVENTS_MAX`` events, valid and distinct codes, indexes
within the code table), and answers None for anything else: another key order, timestamps or
operations, a longer code table, a broken byte. The caller then decodes the same payload as
before, which accepts it or names the problem exactly as before; so this reader only ever
accepts what the generic path accepts, with the same message (``tests/test_ingest_bytes.py``).
"""

from __future__ import annotations

import re

import numpy as np

from unimeter import limits
from unimeter.model import is_valid_code
from unimeter.wire.batch import I64, SMALL_BATCH_EVENTS_MAX, U8, U64, EventBatch
from unimeter.wire.fast_ingest import UINT_PATTERN, uint_value
from unimeter.wire.messages import Ingest

_PARTITION_END = limits.partitions_max
# Batches past this size are weighed by the decode-bomb scan first: the generic path's.
_BATCH_BYTES_MAX = limits.cbor_check_bytes_min

_FRAME = re.compile(
    rb"\x83\x08" + UINT_PATTERN
    + rb"\xa6\x61p" + UINT_PATTERN + rb"\x63pid" + UINT_PATTERN + rb"\x63seq" + UINT_PATTERN
    + rb"\x62sy([\xf4\xf5])\x62cv" + UINT_PATTERN
    + rb"\x61b([\x40-\x57]|\x58.|\x59..)",
    re.DOTALL,
)  # fmt: skip
_CODES = b"\xa4\x61m"  # the batch map of four keys, its first key
_INDEX = b"\x62mi\xd8\x40"  # "mi", tag 64 (uint8)
_ACCOUNTS = b"\x61a\xd8\x47"  # "a", tag 71 (uint64, little-endian)
_VALUES = b"\x61v\xd8\x4f"  # "v", tag 79 (int64, little-endian)


def ingest_payload(payload: bytes) -> tuple[int, Ingest] | None:
    """(request id, message) of an INGEST payload of the shape above, or None."""
    match = _FRAME.match(payload)
    if match is None:
        return None
    rid, p, pid, seq, sync, cv, head = match.groups()
    partition = uint_value(p)
    start = match.end()
    if partition >= _PARTITION_END or len(payload) - start != _length(head):
        return None
    raw = payload[start:]
    try:
        batch = _small_batch(raw)
    except IndexError:  # truncated
        return None
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


def _length(head: bytes) -> int:
    """The length a byte string's head (major type 2) gives."""
    return head[0] - 0x40 if len(head) == 1 else int.from_bytes(head[1:], "big")


def _column(raw: bytes, pos: int, key: bytes, size: int) -> int:
    """Where the column of ``size`` bytes behind ``key`` (its name and tag) starts at
    ``pos``, or -1 when something else is there."""
    end = pos + len(key)
    if raw[pos:end] != key:
        return -1
    head = raw[end]
    if head == 0x40 + size and size < 24:
        return end + 1
    if head == 0x58 and size < 0x100 and raw[end + 1] == size:
        return end + 2
    if head == 0x59 and raw[end + 1 : end + 3] == size.to_bytes(2, "big"):
        return end + 3
    return -1


def _small_batch(raw: bytes) -> EventBatch | None:
    """``decode_small_batch`` of the batch map's bytes in the clients' shape, or None."""
    if len(raw) > _BATCH_BYTES_MAX or not raw.startswith(_CODES):
        return None
    count = raw[3] - 0x80  # an array of fewer than 24 codes
    if not 0 < count < 24:
        return None
    pos = 4
    codes: list[str] = []
    for _ in range(count):
        head = raw[pos]
        if 0x61 <= head <= 0x77:
            size, pos = head - 0x60, pos + 1
        elif head == 0x78:
            size, pos = raw[pos + 1], pos + 2
        else:
            return None
        # latin-1 never fails; a byte outside the codes' ASCII alphabet makes no valid code
        code = raw[pos : pos + size].decode("latin-1")
        if len(code) != size or not is_valid_code(code):
            return None
        codes.append(code)
        pos += size
    if len(set(codes)) != count:
        return None
    # The index column's head says how many events there are.
    head = raw[pos + len(_INDEX)]
    n = head - 0x40 if 0x40 <= head <= 0x57 else raw[pos + len(_INDEX) + 1] if head == 0x58 else 0
    if not 0 < n <= SMALL_BATCH_EVENTS_MAX:
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
    index = raw[at_index : at_index + n]
    if max(index) >= count:
        return None
    return EventBatch.from_columns(
        tuple(codes),
        np.frombuffer(index, U8),
        np.frombuffer(raw[at_accounts : at_accounts + 8 * n], U64),
        np.frombuffer(raw[at_values:], I64),
        None,
        None,
        (),
        None,
        None,
        raw,
    )
