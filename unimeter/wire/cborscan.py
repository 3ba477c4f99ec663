"""A CBOR pre-scan: bound what decoding will build before anything is built.

``cbor2.loads`` builds the whole item before a caller can look at it, so a frame within the
size limit could still make millions of objects: 4 MiB of ``[{}, {}, ...]`` is four million
dicts (about 250 MB and seconds of CPU). ``check_item`` walks only the item headers of one CBOR
item -- major type and length, no object made, byte and text strings skipped in one step --
and refuses it (``ValueError``) if it would build more than ``items_max`` weighted items or nest
deeper than ``depth_max``.

Weights follow what an item costs once decoded in CPython, in units of about 8 bytes of memory.
Every item weighs 1 (its pointer in the parent). A byte or text string of two or more bytes
weighs ``STRING_WEIGHT`` more (a str or bytes object of about 50 bytes; shorter ones are
shared), an array ``ARRAY_WEIGHT`` more (a list, 72 bytes with its GC header), a map
``MAP_WEIGHT`` more plus ``PAIR_WEIGHT`` per pair and ``FILLED_MAP_WEIGHT`` once it has one (a
dict of one pair takes 184 bytes), a tag ``TAG_WEIGHT`` more (a CBORTag, and for most tags a
Python call while decoding, worth dozens of plain items in time; real frames carry a handful),
an int of 256 or more or a float ``NUMBER_WEIGHT`` more. Smaller ints and simple values weigh
only their pointer: CPython shares them.

Callers pass a budget proportional to the data's length (``budget_for``: 4 units per byte), so
an item that passes costs at most about 36 bytes of memory per byte of CBOR whatever its shape
(measured: tests/test_decode_bombs.py; a bomb of empty maps costs 72 unchecked), while the
heaviest real frames weigh about 3 units per byte: an Ingest whose events carry 16 two-letter
properties each, a breakdown of 4096 one-letter cells.

The scan also refuses what the decoders refuse anyway (indefinite lengths, reserved additional
information, truncation, trailing bytes), so whatever it passes is one well-formed item as far
as framing goes; the decoder still checks everything else. It costs one Python loop iteration
per item and nothing per string byte (docs/benchmarks.md has the figure per Ingest frame).
"""

from __future__ import annotations

from unimeter import limits

ARRAY_WEIGHT = 9  # a list: 56 bytes, a 16-byte GC header, rounding
MAP_WEIGHT = 8
FILLED_MAP_WEIGHT = 16  # a dict with any pair allocates its first table (184 bytes in all)
PAIR_WEIGHT = 5
NUMBER_WEIGHT = 3  # an int of 256 or more, or a float: an object of 24-36 bytes
TAG_WEIGHT = 32  # tags the decoder passes through cost a Python call each: weigh the time
STRING_WEIGHT = 6


def budget_for(data_bytes: int, per_byte: int = limits.cbor_items_per_byte_max) -> int:
    """The weighted item budget of an item of ``data_bytes`` bytes (limits.py)."""
    return limits.cbor_items_base_count + data_bytes * per_byte


def needs_check(data_bytes: int) -> bool:
    """False for items so small that whatever they hold costs a constant (well under 100 KB
    and a millisecond): frames such as queries skip the walk."""
    return data_bytes > limits.cbor_check_bytes_min


def check_item(
    data: bytes | bytearray | memoryview,
    *,
    items_max: int,
    depth_max: int = limits.cbor_depth_max,
) -> int:
    """Check that ``data`` is exactly one CBOR item within the bounds; returns its weight.

    Raises ``ValueError`` naming the first problem found.
    """
    # Written for speed (it runs on every frame): locals only, the fewest branches for the
    # common case (a short string or small integer), and no bounds check per item -- running
    # off the end raises IndexError, caught below. Weight is charged when a container opens:
    # one per child up front (each weighs at least that), the rest when a child is itself a
    # container, so scalars cost no bookkeeping at all.
    if not isinstance(data, bytes):
        data = memoryview(data).cast("B")
    end = len(data)
    pos = 0
    weight = 1
    array, pair, string, tag = ARRAY_WEIGHT, PAIR_WEIGHT + 2, STRING_WEIGHT, TAG_WEIGHT + 1
    number = NUMBER_WEIGHT
    remaining = 1  # items still to read in the innermost open container (the top level: 1)
    outer: list[int] = []  # ``remaining`` of each enclosing container
    try:
        while True:
            initial = data[pos]
            pos += 1
            info = initial & 0x1F
            if info >= 24:
                if info == 24:
                    arg = data[pos]
                    pos += 1
                elif info == 25:
                    arg = (data[pos] << 8) | data[pos + 1]
                    pos += 2
                elif info < 28:
                    size = 4 if info == 26 else 8
                    if pos + size > end:
                        raise IndexError
                    arg = int.from_bytes(data[pos : pos + size], "big")
                    pos += size
                else:
                    raise ValueError(_bad_info(info, pos - 1))
            else:
                arg = info
            if initial < 0x80:  # integers; byte and text strings are skipped whole
                if initial >= 0x40:
                    pos += arg
                    if arg > 1:  # (CPython shares the empty and one-character ones)
                        weight += string  # (checked at the next container and at the end)
                elif info > 24:  # (ints below 256 are shared)
                    weight += number
            elif initial < 0xC0:  # array or map
                if initial < 0xA0:
                    count = arg
                    weight += array + arg
                else:
                    count = 2 * arg
                    weight += MAP_WEIGHT + pair * arg + (FILLED_MAP_WEIGHT if arg else 0)
                if weight > items_max or count > end - pos:
                    raise _too_many(items_max, count, end - pos)
                if count:
                    if len(outer) >= depth_max:
                        raise ValueError(f"CBOR nesting deeper than {depth_max}")
                    outer.append(remaining)
                    remaining = count
                    continue
            elif initial < 0xE0:  # tag: exactly one item follows, one level deeper
                weight += tag
                if weight > items_max:
                    raise _too_many(items_max, 0, 0)
                if len(outer) >= depth_max:
                    raise ValueError(f"CBOR nesting deeper than {depth_max}")
                outer.append(remaining)
                remaining = 1
                continue
            elif info > 24:  # a float (its bytes were read as the argument)
                weight += number
            # This item is complete, and with it every container it was the last item of.
            remaining -= 1
            if remaining:
                continue
            while not remaining:
                if not outer:
                    if pos != end:
                        if pos > end:
                            raise IndexError
                        raise ValueError(f"{end - pos} bytes after the CBOR item")
                    if weight > items_max:  # only a lone scalar gets here unchecked
                        raise _too_many(items_max, 0, 0)
                    return weight
                remaining = outer.pop() - 1
    except IndexError:
        raise ValueError(f"truncated CBOR item ({end} bytes)") from None


def _bad_info(info: int, at: int) -> str:
    if info == 31:
        return f"indefinite-length CBOR item at byte {at}"
    return f"reserved CBOR additional information {info} at byte {at}"


def _too_many(items_max: int, count: int, left: int) -> ValueError:
    if count > left:
        return ValueError(f"CBOR container announces {count} items but {left} bytes remain")
    return ValueError(f"CBOR item too complex: more than {items_max} weighted items")
