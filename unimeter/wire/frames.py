"""Length-prefixed CBOR frames: ``u32 big-endian length | one CBOR item``, sans-I/O.

Theory of operation. ``FrameDecoder.feed`` only buffers bytes; ``next_item`` hands out one
decoded item per complete frame. The 4-byte length prefix is vetted the moment it is
complete (in ``feed`` already), so an oversized or empty frame is refused before a single byte
of its payload is buffered. Any failure is connection-fatal: the decoder stays broken and every
later call raises the same ``ProtocolError``, because after bad framing there is no way to find
the start of the next frame.

The CBOR decoder runs with every generic "semantic" tag turned off: tags (bignums, dates,
regular expressions, shared references...) come back as plain ``CBORTag`` objects that the body
decoders either understand (typed arrays, bignums) or reject. This keeps untrusted bytes from
compiling regexes, resolving reference graphs or building exotic objects, and keeps the accepted
language small enough to document. Maps may only have string keys (no hash-flooding with
crafted integer keys), indefinite-length items and duplicate keys are refused, and nesting is
capped well above anything the protocol uses.

Before any of that, every frame's payload passes ``cborscan.check_item``: a walk over the item
headers that refuses a payload which would build more objects than a small multiple of its size
(a decode bomb such as 4 MiB of empty maps) or nest too deep, without building any of them.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import cbor2

from unimeter import errors, limits
from unimeter.wire.cborscan import budget_for, check_item

_PREFIX = struct.Struct(">I")
_CHECK_BYTES_MIN = limits.cbor_check_bytes_min

PREFIX_BYTES = 4
PAYLOAD_BYTES_LIMIT = 2**32 - 1  # what a u32 prefix can express
NESTING_DEPTH_MAX = limits.cbor_depth_max

# Tags cbor2 would otherwise interpret itself (found by probing cbor2 6.x). Mapping each to a
# plain CBORTag turns the interpretation off; a tag added by a later cbor2 is harmless anyway,
# because body decoders accept only the exact Python types they expect.
_INTERPRETED_TAGS = (
    0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004,
    43000, 55799,
)  # fmt: skip


def _raw_tag(tag: int) -> Any:
    def decode(value: object, immutable: bool) -> cbor2.CBORTag:
        return cbor2.CBORTag(tag, value)

    return decode


_RAW_TAGS: dict[int, Any] = {tag: _raw_tag(tag) for tag in _INTERPRETED_TAGS}


def encode_item(item: object) -> bytes:
    """One CBOR item as bytes (no length prefix)."""
    return bytes(cbor2.dumps(item))


def decode_item(data: bytes, size: int | None = None) -> Any:
    """Exactly one CBOR item filling ``data``; ``ValueError`` naming the problem otherwise.

    Every failure of the CBOR library (whatever its type) becomes ``ValueError`` so callers
    translate one exception type into their own (``ProtocolError``, ``RecordError``).
    """
    if size is None:
        size = len(data)
    if not size:
        raise ValueError("empty CBOR item")
    stream = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            semantic_decoders=_RAW_TAGS,
            max_depth=NESTING_DEPTH_MAX,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
        item = decoder.decode()
    except Exception as exc:  # any library failure means "not valid CBOR"
        raise ValueError(f"invalid CBOR: {exc}") from None
    used = stream.tell()
    if used != size:
        raise ValueError(f"{size - used} bytes after the CBOR item")
    return item


def encode_frame(item: object) -> bytes:
    """A whole frame, length prefix included."""
    payload = cbor2.dumps(item)
    if len(payload) > PAYLOAD_BYTES_LIMIT:
        raise ValueError(f"a frame holds at most {PAYLOAD_BYTES_LIMIT} bytes, got {len(payload)}")
    return len(payload).to_bytes(PREFIX_BYTES, "big") + payload


class FrameDecoder:
    """Buffers bytes and yields one decoded CBOR item per complete frame."""

    __slots__ = (
        "_buffer",
        "_error",
        "_payload_bytes",
        "frame_bytes_max",
        "frame_ready",
        "items_per_byte_max",
        "last_payload_bytes",
    )

    def __init__(
        self,
        *,
        frame_bytes_max: int = limits.frame_bytes_max,
        items_per_byte_max: int = limits.cbor_items_per_byte_max,
    ) -> None:
        assert 0 < frame_bytes_max <= PAYLOAD_BYTES_LIMIT
        self.frame_bytes_max = frame_bytes_max
        self.items_per_byte_max = items_per_byte_max
        self._buffer = bytearray()
        self._payload_bytes: int | None = None  # vetted length of the frame being received
        self._error: str | None = None
        self.last_payload_bytes = 0  # the size of the frame ``next_item`` returned last
        # Set by ``next_item`` when it returns an item: whether calling it again at once would
        # find another whole frame (or raise). False lets a caller stop without asking.
        self.frame_ready = False

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            return  # broken for good: nothing more is worth keeping
        buffer = self._buffer
        buffer += data
        if self._payload_bytes is None and len(buffer) >= PREFIX_BYTES:
            # Vet the prefix as soon as it is complete: a refused frame's bytes are dropped at
            # once, never kept waiting for the rest of the frame.
            (length,) = _PREFIX.unpack_from(buffer)
            if 0 < length <= self.frame_bytes_max:  # _vet_prefix's good case, inlined
                self._payload_bytes = length
            else:
                self._vet_prefix(buffer)

    def next_item(self) -> Any | None:
        """The next frame's item, or None until its last byte has arrived.

        Raises ``errors.ProtocolError`` on bad framing or bytes that are not one CBOR item.
        """
        payload = self.next_payload()
        if payload is None:
            return None
        return self.item_of(payload)

    def next_payload(self) -> bytes | None:
        """The next frame's payload (not yet decoded: ``item_of``), or None until its last
        byte has arrived. Raises ``errors.ProtocolError`` on bad framing."""
        if self._error is not None:
            raise errors.ProtocolError(self._error)
        buffer = self._buffer
        size = self._payload_bytes
        if size is None:
            if len(buffer) < PREFIX_BYTES:
                return None
            self._vet_prefix(buffer)
            if self._error is not None:
                raise errors.ProtocolError(self._error)
            size = self._payload_bytes
            assert size is not None
        end = PREFIX_BYTES + size
        have = len(buffer)
        if have < end:
            return None
        # One copy out of the buffer; the temporary memoryview is gone before the buffer shrinks.
        payload = bytes(memoryview(buffer)[PREFIX_BYTES:end])
        del buffer[:end]
        self.last_payload_bytes = size
        # The next frame's prefix is vetted now if it is here (as ``feed`` would have), and
        # ``frame_ready`` says whether that whole frame is here too.
        self._payload_bytes = None
        left = have - end
        if left >= PREFIX_BYTES:
            self._vet_prefix(buffer)
            self.frame_ready = self._error is not None or (
                self._payload_bytes is not None and left >= PREFIX_BYTES + self._payload_bytes
            )
        else:
            self.frame_ready = False
        return payload

    def item_of(self, payload: bytes) -> Any:
        """The one CBOR item of a payload ``next_payload`` returned; ``errors.ProtocolError``
        (and the decoder broken for good) if it is not one."""
        size = len(payload)
        try:
            if size > _CHECK_BYTES_MIN:  # cborscan.needs_check, inlined
                check_item(payload, items_max=budget_for(size, self.items_per_byte_max))
            return decode_item(payload, size)
        except ValueError as exc:
            self.fail(f"frame payload: {exc}")
            raise errors.ProtocolError(f"frame payload: {exc}") from None

    def fail(self, message: str) -> None:
        """Break the decoder for good (a layer above found the stream unreadable)."""
        if self._error is None:
            self._error = message
        self._buffer = bytearray()
        self._payload_bytes = None

    def _vet_prefix(self, buffer: bytes | bytearray) -> None:
        """Vet the length prefix at the start of ``buffer`` (at least 4 bytes)."""
        (length,) = _PREFIX.unpack_from(buffer)
        if length == 0:
            self.fail("empty frame (length prefix 0)")
        elif length > self.frame_bytes_max:
            self.fail(f"frame of {length} bytes exceeds frame_bytes_max={self.frame_bytes_max}")
        else:
            self._payload_bytes = length
