"""Converters: the small pieces message bodies are described with (see ``bodies.py``).

A ``Conv`` pairs an encoder (value -> CBOR-ready object) with a checking decoder. ``MapSpec``
describes one message class as a map of short keys; a field with a default is omitted when it
holds the default, and an absent key (or null, for a None default) decodes to the default.
``record`` describes a nested dataclass travelling as a positional array.

Decoders never trust their input: every value is checked for its exact type and range, and a
failure raises ``BodyError`` whose message starts with the field's path, for example
``Query.account_id: expected an integer in [0, 2**64), got -3``. Requests are decoded strictly
(an unknown key is an error, so a misspelt optional field cannot be silently ignored); replies
tolerate unknown keys so that a server may add reply fields without breaking older clients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cbor2 import CBORTag

from unimeter import limits, model, periods
from unimeter.model import MetricSchema
from unimeter.wire import messages as m
from unimeter.wire.batch import ColumnError, EventBatch, decode_batch


class BodyError(ValueError):
    """A body that does not match its message; the message starts with the field's path."""


def describe(obj: object) -> str:
    """A value in CBOR words, short enough for an error message."""
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, str):
        return repr(obj) if len(obj) <= 40 else f"a string of {len(obj)} characters"
    if isinstance(obj, bytes):
        return f"a byte string of {len(obj)} bytes"
    if isinstance(obj, list):
        return f"an array of {len(obj)} items"
    if isinstance(obj, dict):
        return f"a map of {len(obj)} pairs"
    if isinstance(obj, CBORTag):
        return f"tag {obj.tag}"
    return type(obj).__name__


@dataclass(frozen=True, slots=True)
class Conv:
    encode: Callable[[Any], Any]
    decode: Callable[[Any, str], Any]  # (wire value, path) -> value, or raise BodyError


def _same(value: Any) -> Any:
    return value


# --------------------------------------------------------------------------- scalars


def _integer(low: int, high: int, text: str) -> Conv:
    def decode(obj: Any, path: str) -> int:
        if type(obj) is not int or not low <= obj <= high:
            raise BodyError(f"{path}: expected an integer in {text}, got {describe(obj)}")
        return obj

    return Conv(_same, decode)


U32 = _integer(0, 2**32 - 1, "[0, 2**32)")
U64 = _integer(0, 2**64 - 1, "[0, 2**64)")
I64 = _integer(-(2**63), 2**63 - 1, "[-2**63, 2**63)")
NODE = _integer(-1, 2**64 - 1, "[-1, 2**64)")  # -1: no node (unknown leader)
AFTER = _integer(-1, 2**63 - 1, "[-1, 2**63)")  # paging cursors; -1: from the start
PARTITION = _integer(0, limits.partitions_max - 1, f"[0, {limits.partitions_max})")
PARTITIONS = _integer(1, limits.partitions_max, f"[1, {limits.partitions_max}]")
OPERATION = _integer(0, max(model.OperationType), "[0, 2]")
FLAGS = _integer(0, 2**limits.thresholds_per_metric_max - 1, "[0, 256)")
EVENTS_LIMIT = _integer(1, limits.list_page_events_max, f"[1, {limits.list_page_events_max}]")
ALERTS_LIMIT = _integer(1, limits.list_page_alerts_max, f"[1, {limits.list_page_alerts_max}]")

_BIGNUM_BYTES_MAX = 32  # a SUM of i64 values stays far below 2**256


def _decode_big(obj: Any, path: str) -> int:
    """Any integer, including RFC 8949 bignums (tag 2 positive, tag 3 negative)."""
    if type(obj) is int:
        return obj
    if (
        isinstance(obj, CBORTag)
        and obj.tag in (2, 3)
        and type(obj.value) is bytes
        and len(obj.value) <= _BIGNUM_BYTES_MAX
    ):
        magnitude = int.from_bytes(obj.value, "big")
        return magnitude if obj.tag == 2 else -1 - magnitude
    raise BodyError(f"{path}: expected an integer or bignum, got {describe(obj)}")


BIG = Conv(_same, _decode_big)


def _decode_bool(obj: Any, path: str) -> bool:
    if type(obj) is not bool:
        raise BodyError(f"{path}: expected true or false, got {describe(obj)}")
    return obj


BOOL = Conv(_same, _decode_bool)


def utf8_bytes(text: str) -> int:
    """The UTF-8 size of ``text`` (``UnicodeEncodeError`` for text UTF-8 cannot hold)."""
    return len(text) if text.isascii() else len(text.encode())


def _text(bytes_min: int = 0, bytes_max: int | None = None) -> Conv:
    bounds = f"{bytes_min}-{bytes_max} bytes" if bytes_max is not None else "text"

    def decode(obj: Any, path: str) -> str:
        if type(obj) is not str:
            raise BodyError(f"{path}: expected a string, got {describe(obj)}")
        if bytes_max is not None and not bytes_min <= utf8_bytes(obj) <= bytes_max:
            raise BodyError(f"{path}: expected a string of {bounds}, got {describe(obj)}")
        return obj

    return Conv(_same, decode)


TEXT = _text()  # reply strings: bounded by the frame alone
SHORT_TEXT = _text(0, limits.string_bytes_max)
KEY = _text(1, limits.property_key_bytes_max)
VALUE = _text(0, limits.property_value_bytes_max)


def _decode_code(obj: Any, path: str) -> str:
    try:
        return model.validate_code(obj)
    except ValueError as exc:
        raise BodyError(f"{path}: {exc}") from None


CODE = Conv(_same, _decode_code)

TIME_US_MIN = periods.to_us(datetime.min.replace(tzinfo=UTC))
TIME_US_MAX = periods.to_us(datetime.max.replace(tzinfo=UTC))


def _decode_time(obj: Any, path: str) -> datetime:
    if type(obj) is not int or not TIME_US_MIN <= obj <= TIME_US_MAX:
        raise BodyError(f"{path}: expected microseconds within years 1-9999, got {describe(obj)}")
    return periods.from_us(obj)


TIME = Conv(periods.to_us, _decode_time)


def _decode_schema(obj: Any, path: str) -> MetricSchema:
    if type(obj) is not dict:
        raise BodyError(f"{path}: expected a map, got {describe(obj)}")
    try:
        return MetricSchema.from_wire(obj)
    except (ValueError, TypeError) as exc:  # from_wire's own checks let some TypeErrors out
        raise BodyError(f"{path}: {exc}") from None


SCHEMA = Conv(MetricSchema.to_wire, _decode_schema)


def _decode_batch(obj: Any, path: str) -> m.EventBatch:
    try:
        return decode_batch(obj, path)
    except ColumnError as exc:
        raise BodyError(str(exc)) from None


def _encode_batch(batch: EventBatch) -> bytes:
    return batch.raw


BATCH = Conv(_encode_batch, _decode_batch)


# --------------------------------------------------------------------------- containers


def optional(conv: Conv) -> Conv:
    """``conv`` or null (for positions inside arrays; map fields use a None default)."""

    def encode(value: Any) -> Any:
        return None if value is None else conv.encode(value)

    def decode(obj: Any, path: str) -> Any:
        return None if obj is None else conv.decode(obj, path)

    return Conv(encode, decode)


def _array(obj: Any, path: str, items_max: int | None) -> list[Any]:
    if type(obj) is not list:
        raise BodyError(f"{path}: expected an array, got {describe(obj)}")
    if items_max is not None and len(obj) > items_max:
        raise BodyError(f"{path}: at most {items_max} entries, got {len(obj)}")
    return obj


def array_of(conv: Conv, items_max: int | None = None, unique: bool = False) -> Conv:
    def encode(values: Any) -> list[Any]:
        return [conv.encode(value) for value in values]

    def decode(obj: Any, path: str) -> tuple[Any, ...]:
        items = tuple(
            conv.decode(item, f"{path}[{i}]") for i, item in enumerate(_array(obj, path, items_max))
        )
        if unique and len(set(items)) != len(items):
            raise BodyError(f"{path}: an entry appears twice")
        return items

    return Conv(encode, decode)


def pair(first: Conv, second: Conv) -> Conv:
    def encode(value: Any) -> list[Any]:
        return [first.encode(value[0]), second.encode(value[1])]

    def decode(obj: Any, path: str) -> tuple[Any, Any]:
        if type(obj) is not list or len(obj) != 2:
            raise BodyError(f"{path}: expected an array of 2 items, got {describe(obj)}")
        return first.decode(obj[0], f"{path}[0]"), second.decode(obj[1], f"{path}[1]")

    return Conv(encode, decode)


def keyed_pairs(key: Conv, value: Conv, items_max: int | None = None) -> Conv:
    """A dict travelling as ``[[key, value], ...]`` (maps may only have string keys)."""
    pairs = array_of(pair(key, value), items_max)

    def decode(obj: Any, path: str) -> dict[Any, Any]:
        items = pairs.decode(obj, path)
        out = dict(items)
        if len(out) != len(items):
            raise BodyError(f"{path}: a key appears twice")
        return out

    return Conv(lambda d: pairs.encode(d.items()), decode)


def string_map(key: Conv, value: Conv, items_max: int | None = None) -> Conv:
    def decode(obj: Any, path: str) -> dict[str, Any]:
        if type(obj) is not dict:
            raise BodyError(f"{path}: expected a map, got {describe(obj)}")
        if items_max is not None and len(obj) > items_max:
            raise BodyError(f"{path}: at most {items_max} pairs, got {len(obj)}")
        return {key.decode(k, f"{path} key"): value.decode(v, f"{path}[{k!r}]")
                for k, v in obj.items()}  # fmt: skip

    return Conv(dict, decode)


def record(cls: type[Any], fields: tuple[tuple[str, Conv], ...]) -> Conv:
    """A dataclass travelling as a positional array of its fields."""
    name = cls.__name__

    def encode(value: Any) -> list[Any]:
        return [conv.encode(getattr(value, field)) for field, conv in fields]

    def decode(obj: Any, path: str) -> Any:
        if type(obj) is not list or len(obj) != len(fields):
            raise BodyError(
                f"{path}: expected a {name} as an array of {len(fields)} items, got {describe(obj)}"
            )
        return cls(**{field: conv.decode(item, f"{path}.{field}")
                      for (field, conv), item in zip(fields, obj, strict=True)})  # fmt: skip

    return Conv(encode, decode)


# --------------------------------------------------------------------------- map messages

_REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    key: str
    conv: Conv
    default: Any = _REQUIRED


class MapSpec:
    """How one message class travels as a map."""

    __slots__ = ("_decoders", "_encoders", "check", "cls", "fields", "keys")

    def __init__(
        self,
        cls: type[Any],
        *fields: Field,
        check: Callable[[Any, str], None] | None = None,
    ) -> None:
        self.cls = cls
        self.fields = fields
        self.keys = frozenset(f.key for f in fields)
        self.check = check
        assert len(self.keys) == len(fields), f"{cls.__name__}: duplicate wire key"
        # Every message of a kind walks the same fields: resolve each field's converter, its
        # omission rule and its error path once, not per message.
        self._encoders = tuple(
            (f.name, f.key, f.conv.encode, f.default is not _REQUIRED, f.default) for f in fields
        )
        self._decoders = tuple(
            (f.name, f.key, f.conv.decode, f.default, f"{cls.__name__}.{f.name}") for f in fields
        )

    def encode(self, message: Any) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for name, key, encode, optional, default in self._encoders:
            value = getattr(message, name)
            if optional and (value is None if default is None else value == default):
                continue
            body[key] = encode(value)
        return body

    def decode(self, body: Any, *, strict: bool) -> Any:
        path = self.cls.__name__
        if type(body) is not dict:
            raise BodyError(f"{path}: the body must be a map, got {describe(body)}")
        if strict and not self.keys.issuperset(body):
            unknown = sorted(repr(k) for k in body if k not in self.keys)
            raise BodyError(f"{path}: unknown key {unknown[0]}")
        values: dict[str, Any] = {}
        get = body.get
        for name, key, decode, default, field_path in self._decoders:
            obj = get(key, _REQUIRED)
            if obj is _REQUIRED or (obj is None and default is None):
                if default is _REQUIRED:
                    raise BodyError(f"{field_path}: missing (key {key!r})")
                values[name] = default
            else:
                values[name] = decode(obj, field_path)
        message = self.cls(**values)
        if self.check is not None:
            self.check(message, path)
        return message
