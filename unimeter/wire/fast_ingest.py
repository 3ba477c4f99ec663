"""The client's hot frames written and read by hand: the INGEST request and its plain reply.

Theory of operation. Every ingest call sends one INGEST per partition it touches and reads one
reply for each, so the generic path (a body dict built from the message's field table, then
``cbor2`` for the frame; a ``CBORDecoder`` per reply and the field table again) is paid eight
times per call on the default cluster. Both frames have a fixed shape (docs/protocol.md,
sections 3 and 5): an array of three items whose last is a map of short text keys to integers
(and, in the request, a boolean and the batch's byte string).

``ingest_frame`` writes the very bytes ``encode_frame`` writes for the same message (cbor2
writes each integer in its shortest form, and the map's keys in the order of the field table)
or returns None for anything it does not expect, and the generic encoder takes over.

``ingest_reply`` reads a reply payload of the common shape (status OK, only the keys ns, nd, nr,
li and an optional lo, each an unsigned integer) and returns None for anything else -- a
rejection list, an error, an unknown or repeated key, bytes after the map -- and the caller
decodes the same payload generically, which accepts it or names the problem exactly as
before. So the fast reader only accepts what the generic decoder accepts, with the same values
(``tests/test_fast_ingest.py`` checks both directions on random messages).
"""

from __future__ import annotations

import re

from unimeter.wire.messages import Ingest, IngestReply, Kind

_U64_MAX = 2**64 - 1
_ARRAY3 = b"\x83"
_KIND_INGEST = bytes((int(Kind.INGEST),))  # 8: one byte as a CBOR unsigned integer
_MAP6_P = b"\xa6\x61p"
_PID = b"\x63pid"
_SEQ = b"\x63seq"
_SY_TRUE = b"\x62sy\xf5"
_SY_FALSE = b"\x62sy\xf4"
_CV = b"\x62cv"
_B = b"\x61b"
_SHORT_UINTS = [bytes((n,)) for n in range(24)]


def _uint(n: int) -> bytes:
    """A CBOR unsigned integer in its shortest form (``n`` in 0..2**64-1)."""
    if n < 24:
        return _SHORT_UINTS[n]
    if n < 0x100:
        return bytes((0x18, n))
    if n < 0x10000:
        return b"\x19" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\x1a" + n.to_bytes(4, "big")
    return b"\x1b" + n.to_bytes(8, "big")


def _bytes_head(n: int) -> bytes:
    head = _uint(n)
    return bytes((head[0] | 0x40,)) + head[1:]  # major type 2, same length encoding


def _is_u64(n: object) -> bool:
    return type(n) is int and 0 <= n <= _U64_MAX


def ingest_frame(request_id: int, message: Ingest) -> bytes | None:
    """The whole INGEST frame (length prefix included), or None: encode it generically."""
    partition, pid, seq, cv, sync = (
        message.partition,
        message.producer_id,
        message.seq,
        message.catalog_version,
        message.sync,
    )
    if not (
        _is_u64(request_id)
        and _is_u64(partition)
        and _is_u64(pid)
        and _is_u64(seq)
        and _is_u64(cv)
        and type(sync) is bool
    ):
        return None
    raw = message.batch.raw
    if type(raw) is not bytes:
        return None
    head = b"".join(
        (
            _ARRAY3,
            _KIND_INGEST,
            _uint(request_id),
            _MAP6_P,
            _uint(partition),
            _PID,
            _uint(pid),
            _SEQ,
            _uint(seq),
            _SY_TRUE if sync else _SY_FALSE,
            _CV,
            _uint(cv),
            _B,
            _bytes_head(len(raw)),
        )
    )
    size = len(head) + len(raw)
    if size > 0xFFFFFFFF:
        return None  # the generic encoder names the problem
    return b"".join((size.to_bytes(4, "big"), head, raw))


# An unsigned integer in any of CBOR's widths (cbor2 reads them all alike), as a regex group.
UINT_PATTERN = rb"([\x00-\x17]|\x18.|\x19..|\x1a.{4}|\x1b.{8})"
# The keys in the order the node writes them; "lo" absent when the node has no offset to give.
_PLAIN_REPLY = re.compile(
    rb"\x83\x00" + UINT_PATTERN + rb"([\xa4\xa5])bns" + UINT_PATTERN + rb"bnd" + UINT_PATTERN
    + rb"bnr" + UINT_PATTERN + rb"(?:blo" + UINT_PATTERN + rb")?bli" + UINT_PATTERN,
    re.DOTALL,
)  # fmt: skip


def ingest_reply(payload: bytes) -> tuple[int, IngestReply] | None:
    """(request id, reply) of an OK reply payload of the common shape, else None."""
    match = _PLAIN_REPLY.fullmatch(payload)
    if match is None:
        return None
    raw_id, pairs, stored, duplicates, rejected, offset, log_index = match.groups()
    if (pairs == b"\xa5") != (offset is not None):
        return None  # the map's size does not match its keys
    reply = IngestReply(
        n_stored=uint_value(stored),
        n_duplicates=uint_value(duplicates),
        n_rejected=uint_value(rejected),
        rejected=(),
        last_offset=None if offset is None else uint_value(offset),
        log_index=uint_value(log_index),
    )
    return uint_value(raw_id), reply


def uint_value(item: bytes) -> int:
    """The value of an unsigned integer ``UINT_PATTERN`` matched."""
    return item[0] if len(item) == 1 else int.from_bytes(item[1:], "big")
