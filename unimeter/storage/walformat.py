"""The WAL's on-disk format and the recovery verdicts over it: bytes in, answers out, no state.

Segment file ``{first_index:016d}.wal``: a 24-byte header, all little-endian::

    magic b"UMTRWAL\\n" | u16 version=1 | u16 flags=0 | u64 first_index | u32 crc32c(those 20)

then records ``u32 length | u32 crc32c(payload) | payload``, little-endian, 1 .. record_bytes_max
payload bytes. A length of 0 is never written, so zero-filled space never parses as records.

Torn-tail rule (used on the last segment only). Let X be the first offset where no whole
CRC-valid record can be read. The bytes X..EOF are a torn tail -- the remains of a write a crash
interrupted -- unless there is evidence of good data after X:

1. the record at X becomes valid if one bit of its length field is flipped (bit rot), or
2. a CRC-valid record starts at some byte offset after X (a search, bounded by
   ``tail_search_work_max``, shortest candidates first within each 4 KiB window), or
3. the search hit its bound and the bad bytes lack the shape of an interrupted write: a header
   cut short, a plausible length that runs past EOF, or nothing but zero bytes.

Limits, stated plainly:

* Damage confined to the very last record is indistinguishable from a torn write, and is cut
  (its bytes kept in the side file, never deleted). So is multi-bit damage to a length field
  that makes the record look interrupted when the bounded search cannot reach the records after.
* After a power loss on a device that persisted an unsynced tail out of order, records after X
  that were written but never synced look exactly like synced ones: rule 2 refuses to start.
  A process crash (kill -9) never does this: the page cache keeps every completed write, and an
  interrupted one leaves a prefix.
* A payload that itself contains framed records, or a chance CRC match (about 2**-32 per
  candidate examined), can make a torn tail look like corruption: a refusal, never a loss.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from crc32c import crc32c

record_bytes_max = 16 << 20  # 4x the wire frame limit: one log entry never needs more
tail_search_work_max = 1 << 30  # in ~CRC bytes: bounds the torn-tail search near one second

SEGMENT_MAGIC = b"UMTRWAL\n"
SEGMENT_VERSION = 1
SEGMENT_HEADER = struct.Struct("<8sHHQI")
SEGMENT_HEADER_BYTES = SEGMENT_HEADER.size
RECORD_HEADER = struct.Struct("<II")
RECORD_HEADER_BYTES = RECORD_HEADER.size
OFFSET_STRIDE = 64  # the log remembers every 64th record's offset: 1/8 byte per record
_SEARCH_WINDOW = 4096
_SEARCH_SHORT_BYTES = 64 << 10  # candidates up to this long are tried in the first pass
_SEARCH_POSITION_COST = 16
_SEARCH_CANDIDATE_COST = 1024
_U32 = struct.Struct("<I")
_HIGH_BYTE_PLAUSIBLE = bytes(int(b > record_bytes_max >> 24) for b in range(256))

assert SEGMENT_HEADER_BYTES == 24 and RECORD_HEADER_BYTES == 8
assert 0 < record_bytes_max < 2**32


class CorruptLogError(Exception):
    """A bad record that is not a torn tail, or a stray file; nothing was modified."""

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str) -> None:
        super().__init__(f"corrupt WAL file {path} at byte {offset}: {reason}")
        self.path = str(path)
        self.offset = offset
        self.reason = reason


def segment_header(first_index: int) -> bytes:
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, 0, first_index, 0)[:-4]
    return head + struct.pack("<I", crc32c(head))


def encode_records(payloads: Sequence[bytes]) -> tuple[bytes, tuple[int, ...]]:
    """One buffer holding every payload framed, and the payload lengths."""
    parts: list[bytes] = []
    lengths: list[int] = []
    for payload in payloads:
        length = len(payload)
        if not 0 < length <= record_bytes_max:
            raise ValueError(f"WAL payload must be 1..{record_bytes_max} bytes, got {length}")
        parts += (RECORD_HEADER.pack(length, crc32c(payload)), payload)
        lengths.append(length)
    return b"".join(parts), tuple(lengths)


def decode_records(frame: bytes) -> Iterator[bytes]:
    """The payloads of a buffer made by :func:`encode_records`."""
    offset = 0
    while offset < len(frame):
        length, _ = RECORD_HEADER.unpack_from(frame, offset)
        offset += RECORD_HEADER_BYTES
        yield frame[offset : offset + length]
        offset += length


def skip_record(file: BinaryIO, path: os.PathLike[str], offset: int) -> int:
    """Step over the record at ``offset`` (the file is positioned there); return the next offset."""
    header = file.read(RECORD_HEADER_BYTES)
    if len(header) < RECORD_HEADER_BYTES:
        raise CorruptLogError(path, offset, "record header missing (file changed under the log?)")
    length: int = RECORD_HEADER.unpack(header)[0]
    file.seek(length, os.SEEK_CUR)
    return offset + RECORD_HEADER_BYTES + length


def read_record(file: BinaryIO, path: os.PathLike[str], offset: int) -> tuple[bytes, int]:
    """The CRC-checked payload at ``offset`` (the file is positioned there), and the next offset."""
    header = file.read(RECORD_HEADER_BYTES)
    if len(header) == RECORD_HEADER_BYTES:
        length, checksum = RECORD_HEADER.unpack(header)
        payload = file.read(length)
        if 0 < length == len(payload) and crc32c(payload) == checksum:
            return payload, offset + RECORD_HEADER_BYTES + length
    raise CorruptLogError(path, offset, "record unreadable or failed its CRC on read")


def scan_segment(
    path: os.PathLike[str], first_index: int, data: bytes
) -> tuple[int, int, list[int]]:
    """Check the header and walk the valid records.

    Returns ``(records, end of the last valid record, offsets of every OFFSET_STRIDE-th record)``;
    an end short of ``len(data)`` marks the first bad record.
    """
    if len(data) < SEGMENT_HEADER_BYTES:
        raise CorruptLogError(path, 0, "file shorter than a segment header")
    magic, version, _, header_first, checksum = SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC or crc32c(data[: SEGMENT_HEADER_BYTES - 4]) != checksum:
        raise CorruptLogError(path, 0, "not a WAL segment header (stray or damaged file)")
    if version != SEGMENT_VERSION or header_first != first_index:
        raise CorruptLogError(
            path, 0, f"header has version {version}, first index {header_first}; "
            f"expected version {SEGMENT_VERSION}, first index {first_index} from the name",
        )  # fmt: skip
    view, end, unpack = memoryview(data), len(data), RECORD_HEADER.unpack_from
    offset, records, offsets = SEGMENT_HEADER_BYTES, 0, []
    while end - offset >= RECORD_HEADER_BYTES:
        length, checksum = unpack(data, offset)
        stop = offset + RECORD_HEADER_BYTES + length
        if not 0 < length <= record_bytes_max or stop > end:
            break
        if crc32c(view[offset + RECORD_HEADER_BYTES : stop]) != checksum:
            break
        if records % OFFSET_STRIDE == 0:
            offsets.append(offset)
        records += 1
        offset = stop
    return records, offset, offsets


def check_torn_tail(path: os.PathLike[str], data: bytes, bad: int) -> None:
    """Raise CorruptLogError unless ``data[bad:]`` is a torn tail (rule in the module docstring)."""
    view, end = memoryview(data), len(data)
    if end - bad >= RECORD_HEADER_BYTES:
        length, checksum = RECORD_HEADER.unpack_from(data, bad)
        for bit in range(32 if length or checksum else 0):  # an all-zero header was never written
            fixed = length ^ (1 << bit)
            stop = bad + RECORD_HEADER_BYTES + fixed
            body = view[bad + RECORD_HEADER_BYTES : stop]
            if 0 < fixed <= record_bytes_max and stop <= end and crc32c(body) == checksum:
                raise CorruptLogError(path, bad, f"length field damaged (bit {bit} flipped)")
    # A record's length bytes are not all zero, so none can start inside trailing zeros.
    starts_end = min(len(data.rstrip(b"\0")), end - RECORD_HEADER_BYTES)
    found, exhausted = find_record(data, bad + 1, starts_end)
    if found is not None:
        raise CorruptLogError(path, bad, f"a valid record follows at byte {found}")
    if exhausted and not looks_interrupted(data, bad):
        raise CorruptLogError(
            path, bad, "bad record not shaped like an interrupted write, and the bounded "
            "search for records after it could not finish",
        )  # fmt: skip


def looks_interrupted(data: bytes, bad: int) -> bool:
    """Whether ``data[bad:]`` has a shape an interrupted append leaves."""
    end = len(data)
    if end - bad < RECORD_HEADER_BYTES or data.count(0, bad) == end - bad:
        return True
    length: int = RECORD_HEADER.unpack_from(data, bad)[0]
    return 0 < length <= record_bytes_max and bad + RECORD_HEADER_BYTES + length > end


def find_record(data: bytes, start: int, starts_end: int) -> tuple[int | None, bool]:
    """An offset in ``[start, starts_end)`` where a whole CRC-valid record begins.

    Returns ``(offset or None, whether the work bound stopped the search)``. Two passes keep a
    nearby real record from hiding behind long false candidates (a timestamp's high word read as
    a length is ~400 KB of CRC work each): first every short candidate in offset order, then the
    long ones, shortest first.
    """
    view, end, budget = memoryview(data), len(data), tail_search_work_max
    long_ones: list[tuple[int, int]] = []
    long_cost, skipped = 0, False
    for window in range(start, starts_end, _SEARCH_WINDOW):
        stop = min(window + _SEARCH_WINDOW, starts_end)
        budget -= (stop - window) * _SEARCH_POSITION_COST
        for length, offset in _candidates(data, window, stop):
            cost = _SEARCH_CANDIDATE_COST + length
            if offset + RECORD_HEADER_BYTES + length > end:
                continue
            if length > _SEARCH_SHORT_BYTES:
                skipped |= long_cost + cost > budget
                if long_cost + cost <= budget:
                    long_ones.append((length, offset))
                    long_cost += cost
                continue
            budget -= cost
            if budget < 0:
                return None, True
            if _valid_at(data, view, offset, length):
                return offset, False
        if budget < 0:
            return None, True
    for length, offset in sorted(long_ones):
        budget -= _SEARCH_CANDIDATE_COST + length
        if budget < 0:
            return None, True
        if _valid_at(data, view, offset, length):
            return offset, False
    return None, skipped


def _candidates(data: bytes, low: int, high: int) -> list[tuple[int, int]]:
    """``(length, offset)`` for each offset in [low, high) whose length field is plausible.

    A plausible little-endian length has a small high byte; those offsets are found at C speed
    (a strided slice of high bytes, translated so the small ones become zero, then ``find``).
    """
    found: list[tuple[int, int]] = []
    for first in range(low, min(low + 4, high)):
        marks = data[first + 3 : high + 3 : 4].translate(_HIGH_BYTE_PLAUSIBLE)
        index = marks.find(0)
        while index >= 0:
            offset = first + 4 * index
            length: int = _U32.unpack_from(data, offset)[0]
            if 0 < length <= record_bytes_max:
                found.append((length, offset))
            index = marks.find(0, index + 1)
    return found


def _valid_at(data: bytes, view: memoryview, offset: int, length: int) -> bool:
    body = offset + RECORD_HEADER_BYTES
    checksum: int = RECORD_HEADER.unpack_from(data, offset)[1]
    return crc32c(view[body : body + length]) == checksum
