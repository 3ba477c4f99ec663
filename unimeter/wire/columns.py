"""The columnar ``EventBatch`` as a CBOR map; one implementation for the wire and the log.

Numeric columns travel as RFC 8746 typed arrays: a tag whose content is a byte string of
packed little-endian numbers. Decoding one is a length check and a byte copy into an
``array.array``; the index columns are range-checked by a C-level scan (``bytes.translate``),
and only properties and event ids, when present, cost one Python pass per event. Byte lengths
are checked against ``events_per_batch_max`` before anything is built.

Keys (docs/protocol.md lists them with types):
    m  metric code table          [text, ...]
    mi metric index per event     tag 64 (uint8) or tag 69 (uint16 LE)
    a  account ids                tag 71 (uint64 LE)
    v  values                     tag 79 (sint64 LE)
    t  timestamps (optional)      tag 79 (sint64 LE); NO_TIMESTAMP = -2**63 marks "stamp it"
    o  operation types (optional) tag 64 (uint8), each 0, 1 or 2
    p  properties (optional)      [map or null, ...]
    e  event ids (optional)       [text or null, ...]

Failures raise ``ColumnError`` with a message that starts with the path of the bad column, so
the caller can turn it into BadRequest, ProtocolError or RecordError as its side requires.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sized
from typing import Any

from cbor2 import CBORTag

from unimeter import limits, model
from unimeter.wire.messages import EventBatch

TAG_UINT8 = 64
TAG_UINT16_LE = 69
TAG_UINT64_LE = 71
TAG_SINT64_LE = 79

_ITEM_BYTES = {"B": 1, "H": 2, "Q": 8, "q": 8}
_TAG_OF_TYPECODE = {"B": TAG_UINT8, "H": TAG_UINT16_LE, "Q": TAG_UINT64_LE, "q": TAG_SINT64_LE}
_TYPECODE_OF_TAG = {tag: code for code, tag in _TAG_OF_TYPECODE.items()}
_SWAP = sys.byteorder != "little"
_KEYS = frozenset(("m", "mi", "a", "v", "t", "o", "p", "e"))
_OPERATION_TYPE_MAX = max(model.OperationType)

assert all(array(code).itemsize == size for code, size in _ITEM_BYTES.items())


class ColumnError(ValueError):
    """A malformed batch; the message starts with the path of the offending column."""


# --------------------------------------------------------------------------- encode


def _typed(column: array[int], what: str, allowed: str) -> CBORTag:
    if column.typecode not in allowed:
        raise ValueError(f"EventBatch.{what} must have typecode {allowed!r}, got {column.typecode}")
    if _SWAP and column.itemsize > 1:
        column = array(column.typecode, column)
        column.byteswap()
    return CBORTag(_TAG_OF_TYPECODE[column.typecode], column.tobytes())


def encode_batch(batch: EventBatch) -> dict[str, Any]:
    """The batch as a CBOR-ready map; ``ValueError`` if its columns do not line up."""
    n = len(batch.account_ids)
    columns: list[tuple[str, Sized | None]] = [
        ("metric_index", batch.metric_index),
        ("values", batch.values),
        ("timestamps", batch.timestamps),
        ("operation_types", batch.operation_types),
        ("properties", batch.properties),
        ("event_ids", batch.event_ids),
    ]
    for name, column in columns:
        if column is not None and len(column) != n:
            raise ValueError(f"EventBatch.{name} has {len(column)} entries, expected {n}")
    body: dict[str, Any] = {
        "m": list(batch.metric_codes),
        "mi": _typed(batch.metric_index, "metric_index", "BH"),
        "a": _typed(batch.account_ids, "account_ids", "Q"),
        "v": _typed(batch.values, "values", "q"),
    }
    if batch.timestamps is not None:
        body["t"] = _typed(batch.timestamps, "timestamps", "q")
    if batch.operation_types is not None:
        body["o"] = _typed(batch.operation_types, "operation_types", "B")
    if batch.properties is not None:
        body["p"] = list(batch.properties)
    if batch.event_ids is not None:
        body["e"] = list(batch.event_ids)
    return body


# --------------------------------------------------------------------------- decode


def _raw(obj: object, path: str, tags: tuple[int, ...], n: int | None) -> tuple[int, bytes]:
    """The tag and content bytes of a typed array, after checking its byte length."""
    if not isinstance(obj, CBORTag) or obj.tag not in tags or type(obj.value) is not bytes:
        names = " or ".join(f"tag {tag}" for tag in tags)
        raise ColumnError(f"{path}: expected a typed array ({names} over a byte string)")
    size = _ITEM_BYTES[_TYPECODE_OF_TAG[obj.tag]]
    raw: bytes = obj.value
    if n is None:
        if len(raw) % size:
            raise ColumnError(
                f"{path}: {len(raw)} bytes is not a whole number of {size}-byte items"
            )
    elif len(raw) != n * size:
        raise ColumnError(f"{path}: {len(raw)} bytes, expected {n * size} for {n} events")
    return obj.tag, raw


def _array(tag: int, raw: bytes) -> array[int]:
    column = array(_TYPECODE_OF_TAG[tag])
    column.frombytes(raw)
    if _SWAP and column.itemsize > 1:
        column.byteswap()
    return column


# bytes(range(k)) for every k: deleting them from a uint8 column leaves exactly the items >= k.
_BYTES_BELOW = tuple(bytes(range(k)) for k in range(257))


def _all_below(column: array[int], raw: bytes, bound: int) -> bool:
    """Every item of ``column`` (whose content is ``raw``) is < ``bound``, at C speed for uint8."""
    if column.typecode == "B":
        return bound >= 256 or not raw.translate(None, _BYTES_BELOW[bound])
    return not column or max(column) < bound


def _list(obj: object, path: str, n: int) -> list[Any]:
    if type(obj) is not list:
        raise ColumnError(f"{path}: expected an array")
    if len(obj) != n:
        raise ColumnError(f"{path}: {len(obj)} entries, expected {n}")
    return obj


def _codes(obj: object, path: str, check_limits: bool) -> tuple[str, ...]:
    if type(obj) is not list:
        raise ColumnError(f"{path}: expected an array of metric codes")
    if check_limits and len(obj) > limits.events_per_batch_max:
        raise ColumnError(f"{path}: {len(obj)} codes, at most {limits.events_per_batch_max}")
    for i, code in enumerate(obj):
        if type(code) is not str:
            raise ColumnError(f"{path}[{i}]: expected a metric code")
        if check_limits:
            try:
                model.validate_code(code)
            except ValueError as exc:
                raise ColumnError(f"{path}[{i}]: {exc}") from None
    if len(set(obj)) != len(obj):
        raise ColumnError(f"{path}: a metric code is listed twice")
    return tuple(obj)


def _first_bad_properties(column: list[Any]) -> int | None:
    """The index of the first entry ``model.validate_properties`` would refuse (null is fine).

    One tight pass: a string of at most ``limit // 4`` characters is within ``limit`` UTF-8
    bytes, so only long text pays for ``encode``.
    """
    count_max = limits.properties_per_event_max
    key_max, value_max = limits.property_key_bytes_max, limits.property_value_bytes_max
    key_quick, value_quick = key_max // 4, value_max // 4
    for i, props in enumerate(column):
        if props is None:
            continue
        if type(props) is not dict or len(props) > count_max:
            return i
        for key, value in props.items():
            if type(key) is not str or type(value) is not str:
                return i
            if not 0 < len(key) <= key_quick and not 0 < len(key.encode()) <= key_max:
                return i
            if len(value) > value_quick and len(value.encode()) > value_max:
                return i
    return None


def _check_properties(column: list[Any], path: str) -> None:
    i = _first_bad_properties(column)
    if i is not None:
        try:
            model.validate_properties(column[i])
        except ValueError as exc:
            raise ColumnError(f"{path}[{i}]: {exc}") from None
        raise ColumnError(f"{path}[{i}]: properties must be a map of strings")


def _check_event_ids(column: list[Any], path: str) -> None:
    top = limits.event_id_bytes_max
    quick = top // 4
    for i, event_id in enumerate(column):
        if event_id is None:
            continue
        if type(event_id) is str and (
            0 < len(event_id) <= quick or 0 < len(event_id.encode()) <= top
        ):
            continue
        raise ColumnError(f"{path}[{i}]: event_id must be null or a string of 1-{top} bytes")


def _check_shapes(column: list[Any], path: str, types: tuple[type, ...]) -> None:
    """The trusted-log form: element types only (limits may have changed since it was written)."""
    for i, entry in enumerate(column):
        if entry is not None and type(entry) not in types:
            raise ColumnError(f"{path}[{i}]: unexpected {type(entry).__name__}")


def decode_batch(obj: object, path: str, *, check_limits: bool = True) -> EventBatch:
    """An ``EventBatch`` from its map; ``ColumnError`` naming the bad column otherwise.

    ``check_limits=False`` is for the write-ahead log: a record accepted under older limits
    must still replay, so only the structure is checked there.
    """
    if type(obj) is not dict:
        raise ColumnError(f"{path}: expected a map")
    unknown = obj.keys() - _KEYS
    if unknown:
        raise ColumnError(f"{path}: unknown key {sorted(map(str, unknown))[0]!r}")
    for key, name in (("m", "metric_codes"), ("mi", "metric_index"), ("a", "account_ids"),
                      ("v", "values")):  # fmt: skip
        if key not in obj:
            raise ColumnError(f"{path}.{name}: missing (key {key!r})")

    # Sizes first: nothing is built until every column is known to be the right length.
    _, account_raw = _raw(obj["a"], f"{path}.account_ids", (TAG_UINT64_LE,), None)
    n = len(account_raw) // 8
    if check_limits and n > limits.events_per_batch_max:
        raise ColumnError(f"{path}: {n} events, at most {limits.events_per_batch_max} per batch")
    index_tag, index_raw = _raw(obj["mi"], f"{path}.metric_index", (TAG_UINT8, TAG_UINT16_LE), n)
    _, value_raw = _raw(obj["v"], f"{path}.values", (TAG_SINT64_LE,), n)
    stamp_raw = op_raw = None
    if "t" in obj:
        _, stamp_raw = _raw(obj["t"], f"{path}.timestamps", (TAG_SINT64_LE,), n)
    if "o" in obj:
        _, op_raw = _raw(obj["o"], f"{path}.operation_types", (TAG_UINT8,), n)
    props = _list(obj["p"], f"{path}.properties", n) if "p" in obj else None
    event_ids = _list(obj["e"], f"{path}.event_ids", n) if "e" in obj else None
    codes = _codes(obj["m"], f"{path}.metric_codes", check_limits)

    metric_index = _array(index_tag, index_raw)
    if not _all_below(metric_index, index_raw, len(codes)):
        raise ColumnError(
            f"{path}.metric_index: index {max(metric_index)} but only {len(codes)} metric codes"
        )
    operation_types = None
    if op_raw is not None:
        operation_types = _array(TAG_UINT8, op_raw)
        if not _all_below(operation_types, op_raw, _OPERATION_TYPE_MAX + 1):
            raise ColumnError(
                f"{path}.operation_types: {max(operation_types)} is not an operation type (0-2)"
            )
    if props is not None:
        if check_limits:
            _check_properties(props, f"{path}.properties")
        else:
            _check_shapes(props, f"{path}.properties", (dict,))
    if event_ids is not None:
        if check_limits:
            _check_event_ids(event_ids, f"{path}.event_ids")
        else:
            _check_shapes(event_ids, f"{path}.event_ids", (str,))
    return EventBatch(
        metric_codes=codes,
        metric_index=metric_index,
        account_ids=_array(TAG_UINT64_LE, account_raw),
        values=_array(TAG_SINT64_LE, value_raw),
        timestamps=None if stamp_raw is None else _array(TAG_SINT64_LE, stamp_raw),
        operation_types=operation_types,
        properties=None if props is None else tuple(props),
        event_ids=None if event_ids is None else tuple(event_ids),
    )
