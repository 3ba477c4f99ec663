"""The caller's columns (``client.ingest_columns``), checked a column at a time and packed.

Theory of operation: each column is read on its own, with whole-column operations: numpy
arrays by their dtype and their minimum and maximum, sequences of Python numbers through the
typed arrays of ``array`` (which refuse what does not fit), codes and property values by their
distinct entries (each distinct entry validated once), ids by one join. The rules are those of
``Event.validate`` applied to event ``i`` built from entry ``i`` of every column, and so are
the messages: when a column holds a bad entry, the one to blame is found by a scan of that
column only, and of all the columns' first bad entries the call names the lowest event index
(then the field ``validate`` checks first), exactly as ``client.ingest`` of the same events
would. A column may also be one value for every event (a metric code, a value, an operation
type).
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import compress
from typing import Any

import numpy as np

from unimeter import limits, periods
from unimeter.errors import InvalidRequestError
from unimeter.model import (
    OperationType,
    is_valid_code,
    validate_account_id,
    validate_code,
    validate_event_id,
    validate_properties,
    validate_value,
)
from unimeter.wire.batch import NO_TIMESTAMP

from . import columns as cols
from . import packed as pk
from .packed import I64, U8, U64, Array, KeyColumn, Packed

# The order in which ``Event.validate`` checks an event's fields: it breaks ties.
FIELDS = ("account_id", "metric_code", "value", "timestamp", "operation_type", "properties",
          "event_id")  # fmt: skip
# What aware datetimes can express: years 1-9999 local time, UTC offsets under a day.
_DAY_US = 86_400_000_000
_TIME_MIN_US = periods.to_us(datetime.min.replace(tzinfo=UTC)) - _DAY_US
_TIME_MAX_US = periods.to_us(datetime.max.replace(tzinfo=UTC)) + _DAY_US
_OPERATION_MAX = max(OperationType)
_INTS = frozenset({int})
_INT_OR_NONE = frozenset({int, type(None)})
_DATETIME_OR_NONE = frozenset({datetime, type(None)})
_STR_OR_NONE = frozenset({str, type(None)})
_PROPERTIES_MAX = limits.properties_per_event_max
_KEY_BYTES_MAX = limits.property_key_bytes_max
_VALUE_BYTES_MAX = limits.property_value_bytes_max


class Bad(Exception):
    """Event ``index`` of a column is invalid; ``message`` is what ``validate`` would say."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(index, message)
        self.index = index
        self.message = message


def pack_arrays(
    *,
    account_ids: Any,
    metric_codes: Any,
    values: Any,
    timestamps: Any = None,
    operation_types: Any = None,
    properties: Any = None,
    event_ids: Any = None,
) -> Packed:
    """The packed columns; ``InvalidRequestError`` naming the first bad event and its problem
    (or the column whose length or shape is wrong)."""
    accounts = _column("account_ids", account_ids)
    n = len(accounts)
    readers: dict[str, Any] = {
        "account_id": lambda: _accounts(accounts),
        "metric_code": lambda: _codes(metric_codes, n),
        "value": lambda: _values(values, n),
        "timestamp": lambda: None if timestamps is None else _timestamps(timestamps, n),
        "operation_type": lambda: _operations(operation_types, n),
        "properties": lambda: _properties(properties, n),
        "event_id": lambda: (None, None, 0) if event_ids is None else _ids(event_ids, n),
    }
    read: dict[str, Any] = {}
    first: tuple[int, int, str] | None = None
    for order, field in enumerate(FIELDS):
        try:
            read[field] = readers[field]()
        except Bad as bad:
            if first is None or (bad.index, order) < first[:2]:
                first = (bad.index, order, bad.message)
    if first is not None:
        raise InvalidRequestError(f"event {first[0]}: {first[2]}")
    if n == 0:
        return pk.empty()
    code_table, code_ids = read["metric_code"]
    id_data, id_offsets, id_width = read["event_id"]
    return Packed(
        account_ids=read["account_id"],
        values=read["value"],
        code_table=code_table,
        code_ids=code_ids,
        timestamps=read["timestamp"],
        operation_types=read["operation_type"],
        properties=read["properties"],
        id_data=id_data,
        id_offsets=id_offsets,
        id_width=id_width,
    )


# --------------------------------------------------------------------------- shapes


def _column(name: str, data: Any, n: int | None = None) -> Array | list[Any]:
    """``data`` as a one-dimensional array (numbers) or a list (anything else), checked to
    have ``n`` entries."""
    if isinstance(data, np.ndarray):
        if data.ndim != 1:
            raise InvalidRequestError(f"{name} must be one-dimensional, got shape {data.shape}")
        column: Array | list[Any] = data.tolist() if data.dtype.kind in "OUSV" else data
    elif isinstance(data, str | bytes) or not isinstance(data, Sequence):
        raise InvalidRequestError(f"{name} must be a sequence or a numpy array")
    else:
        column = data if isinstance(data, list) else list(data)
    if n is not None and len(column) != n:
        raise InvalidRequestError(f"{name} has {len(column)} entries, account_ids has {n}")
    return column


def _scalar_or_column(name: str, data: Any, n: int) -> Array | list[Any] | None:
    """None when ``data`` is one value for every event, else its column."""
    if isinstance(data, np.ndarray) and data.ndim == 0:
        return None
    if isinstance(data, int | str | np.integer) or not isinstance(data, Sequence | np.ndarray):
        return None
    return _column(name, data, n)


def _first_refused(column: Sequence[Any], check: Any) -> Bad:
    """The first entry ``check`` (a validator) refuses, as ``Bad``: for a column a bulk check
    refused, which it only does for columns holding a bad entry."""
    bad = _find_refused(column, check)
    assert bad is not None, "a bulk check refused a column whose every entry is valid"
    return bad


def _find_refused(column: Sequence[Any], check: Any) -> Bad | None:
    """The first entry ``check`` refuses, as ``Bad``; None when it accepts them all (valid
    entries of unusual types, which the caller then converts)."""
    for index, entry in enumerate(column):
        try:
            check(entry)
        except ValueError as exc:
            return Bad(index, str(exc))
    return None


# --------------------------------------------------------------------------- numbers


def _integers(column: Array | list[Any], check: Any, typecode: str, dtype: Any) -> Array:
    """An integer column in ``dtype``; ``Bad`` for the first entry ``check`` refuses. Numpy
    arrays of integers and sequences of exact ``int`` take the fast path; a sequence of numpy
    integers or ``int`` subclasses is converted entry by entry."""
    entries: list[Any]
    if isinstance(column, np.ndarray):
        if column.dtype.kind in "iu":
            return column
        entries = column.tolist()  # bool, float...: judged entry by entry, as validate does
    else:
        entries = column
    if set(map(type, entries)) <= _INTS:
        try:
            return np.frombuffer(array(typecode, entries), dtype)
        except OverflowError:
            raise _first_refused(entries, check) from None
    # Unusual types: each entry judged in turn (numpy integers are as good as ints here).
    plain = [int(e) if isinstance(e, np.integer) else e for e in entries]
    bad = _find_refused(plain, check)
    if bad is not None:
        raise bad
    return _integers([int(entry) for entry in plain], check, typecode, dtype)


def _message(check: Any, entry: object) -> str:
    try:
        check(entry)
    except ValueError as exc:
        return str(exc)
    return f"{entry!r} is not allowed here"


def _in_range(column: Array, low: int, high: int, check: Any) -> None:
    """``Bad`` for the first entry of an integer array outside ``low..high``."""
    if not len(column):
        return
    if int(column.min()) >= low and int(column.max()) <= high:
        return
    index = int(np.flatnonzero((column < low) | (column > high))[0])
    raise Bad(index, _message(check, int(column[index])))


def _accounts(column: Array | list[Any]) -> Array:
    accounts = _integers(column, validate_account_id, "Q", U64)
    if accounts.dtype.kind == "i":
        _in_range(accounts, 0, limits.account_id_max, validate_account_id)
    return accounts.astype(U64, copy=False)


def _values(data: Any, n: int) -> Array:
    column = _scalar_or_column("values", data, n)
    if column is None:
        value = _one(data, validate_value)
        return np.full(n, value, I64)
    values = _integers(column, validate_value, "q", I64)
    if values.dtype.kind == "u":
        _in_range(values, 0, limits.value_max, validate_value)
    return values.astype(I64, copy=False)


def _one(data: Any, check: Any) -> Any:
    """One value for every event, checked by ``check`` (``Bad`` names event 0)."""
    if isinstance(data, np.generic):
        data = data.item()
    try:
        return check(data)
    except ValueError as exc:
        raise Bad(0, str(exc)) from None


def _operations(data: Any, n: int) -> Array | None:
    if data is None:
        return None
    column = _scalar_or_column("operation_types", data, n)
    if column is None:
        operation = _one(data, OperationType)
        return np.full(n, int(operation), U8) if operation else None
    if isinstance(column, np.ndarray) and column.dtype.kind in "iu":
        numbers = column
    else:
        # Judged entry by entry, as validate does.
        entries = column.tolist() if isinstance(column, np.ndarray) else column
        try:
            numbers = np.frombuffer(bytes(entries), U8)  # refuses non-integers, 256 and up
        except (TypeError, ValueError):
            bad = _find_refused(entries, OperationType)
            if bad is not None:
                raise bad from None
            # Valid to OperationType, in an unusual spelling (1.0 is ADD): convert each.
            numbers = np.array([int(OperationType(op)) for op in entries], U8)
    _in_range(numbers, 0, _OPERATION_MAX, OperationType)
    operations = numbers.astype(U8, copy=False)
    return operations if np.count_nonzero(operations) else None


# --------------------------------------------------------------------------- codes and time


def _codes(data: Any, n: int) -> tuple[tuple[str, ...], Array | None]:
    if isinstance(data, np.ndarray) and data.dtype.kind == "U" and data.ndim == 1 and n:
        if len(data) != n:
            _column("metric_codes", data, n)  # raises, naming the lengths
        found = _array_codes(data)
        if found is not None:
            return found
    column = _scalar_or_column("metric_codes", data, n)
    if column is None:
        return (_one(data, validate_code),), None
    assert isinstance(column, list)
    try:
        return cols.codes_of(column)
    except (cols._Unsure, TypeError, ValueError):
        pass
    # A bad code (or an unhashable one): the first entry validate_code refuses, or, when every
    # one is valid (str subclasses), the codes as plain str.
    for index, code in enumerate(column):
        try:
            validate_code(code)
        except ValueError as exc:
            raise Bad(index, str(exc)) from None
    return cols.codes_of([str(code) for code in column])


_SEED_EVENTS = 1024  # events whose codes are read as Python strings to guess the table


def _array_codes(column: Array) -> tuple[tuple[str, ...], Array | None] | None:
    """``cols.codes_of`` of a non-empty numpy array of strings, without a Python object per
    event: the table guessed from the first events' codes, each event's code found in it by a
    binary search over the whole array, and the guess checked (codes it missed are added and
    the search made again). None when a code is not valid: the caller then reads the array as
    a list and names the bad entry."""
    distinct = set(column[:_SEED_EVENTS].tolist())
    for _ in range(2):
        if not all(map(is_valid_code, distinct)):
            return None
        names = sorted(distinct)
        table = np.array(names, column.dtype)  # sorted alike: by code point
        index = np.searchsorted(table, column)
        np.minimum(index, len(table) - 1, out=index)  # past the end: not in the table
        missed = table[index] != column
        if not missed.any():
            if len(names) == 1:
                return tuple(names), None
            return tuple(names), index.astype(pk.index_dtype(len(names) - 1))
        distinct.update(column[missed].tolist())
    raise AssertionError("the second search found every code")


def _timestamps(data: Any, n: int) -> Array | None:
    column = _column("timestamps", data, n)
    if isinstance(column, np.ndarray):
        present: Array | None = None
        if column.dtype.kind == "M":  # datetime64: NaT for "the leader stamps it"
            micros = column.astype("datetime64[us]").view(I64)
            present = micros != NO_TIMESTAMP
        elif column.dtype.kind in "iu":  # microseconds since the epoch
            if column.dtype.kind == "u" and len(column) and int(column.max()) > _TIME_MAX_US:
                index = int(np.flatnonzero(column > _TIME_MAX_US)[0])
                raise Bad(index, _message(_check_stamp, int(column[index])))
            micros = column.astype(I64, copy=False)
        else:
            raise Bad(0, _message(_check_stamp, column[0].item()))
        outside = (micros < _TIME_MIN_US) | (micros > _TIME_MAX_US)
        if present is not None:
            outside &= present
        if np.count_nonzero(outside):
            index = int(np.flatnonzero(outside)[0])
            raise Bad(index, _message(_check_stamp, int(micros[index])))
        if present is not None and not np.count_nonzero(present):
            return None
        return micros
    kinds = set(map(type, column))
    mask = pk.present_mask(column)
    try:
        if kinds <= _INT_OR_NONE:
            stamps = np.frombuffer(array("q", compress(column, mask)), I64)
        elif kinds <= _DATETIME_OR_NONE:
            stamps = cols._micros(list(compress(column, mask)))  # TypeError: a naive one
        else:
            raise TypeError
    except (TypeError, OverflowError):
        bad = _find_refused(column, _check_stamp)
        if bad is not None:
            raise bad from None
        # Valid, of unusual types (datetime subclasses, int subclasses): convert each.
        plain = [t if t is None or type(t) is int else _micros_of(t) for t in column]
        return _timestamps(plain, n)
    if not len(stamps):
        return None
    if int(stamps.min()) < _TIME_MIN_US or int(stamps.max()) > _TIME_MAX_US:
        raise _first_refused(column, _check_stamp)
    return stamps if len(stamps) == n else pk.stamps_with_gaps(mask, stamps)


def _micros_of(entry: Any) -> int:
    return int(entry) if isinstance(entry, int) else periods.to_us(entry)


def _check_stamp(entry: object) -> None:
    """What ``Event.validate`` says of a timestamp, and for microseconds since the epoch (an
    ``int``) whether a datetime can hold it."""
    if isinstance(entry, int) and not isinstance(entry, bool):
        if not _TIME_MIN_US <= entry <= _TIME_MAX_US:
            raise ValueError(f"timestamp {entry} us is outside the years 1-9999")
        return
    if entry is not None and (not isinstance(entry, datetime) or entry.tzinfo is None):
        raise ValueError("timestamp must be a timezone-aware datetime or None")


# --------------------------------------------------------------------------- strings


def _properties(data: Any, n: int) -> tuple[KeyColumn, ...]:
    if data is None:
        return ()
    if isinstance(data, Mapping):
        return _keyed(data, n)
    column = _column("properties", data, n)
    assert isinstance(column, list)
    maps = [{} if p is None else p for p in column]
    try:
        return cols._properties(maps)
    except (cols._Unsure, TypeError, ValueError):
        pass
    for index, mapping in enumerate(maps):
        try:
            validate_properties(mapping)
        except ValueError as exc:
            raise Bad(index, str(exc)) from None
    normalised = [{str(k): str(v) for k, v in p.items()} for p in maps]
    return cols._properties(normalised)


def _keyed(data: Mapping[Any, Any], n: int) -> tuple[KeyColumn, ...]:
    """Properties given as key -> one value per event (None: the event lacks the key)."""
    out = []
    for key in sorted(data, key=str):
        column = _column(f"properties[{key!r}]", data[key], n)
        assert isinstance(column, list)

        def check(value: object, key: Any = key) -> None:
            if value is not None:
                validate_properties({key: value})

        if not isinstance(key, str) or not cols.texts_within([str(key)], 1, _KEY_BYTES_MAX):
            bad = _find_refused(column, check)  # the first event that has the key
            if bad is not None:
                raise bad
            if column.count(None) == n:
                continue  # no event has the key: nothing to refuse
            # A str subclass validate takes: used as the str it is.
        if not set(map(type, column)) <= _STR_OR_NONE:
            bad = _find_refused(column, check)
            if bad is not None:
                raise bad
            column = [None if value is None else str(value) for value in column]
        encoded = pk.key_column(str(key), column, absent=None)
        if encoded is None:
            continue
        if not cols.texts_within(list(encoded.values), 0, _VALUE_BYTES_MAX):
            raise _first_refused(column, check)
        out.append(encoded)
    if len(out) > _PROPERTIES_MAX:
        present = np.zeros(n, np.int64)
        for encoded in out:
            present += encoded.index != 0
        if int(present.max()) > _PROPERTIES_MAX:
            index = int(np.argmax(present > _PROPERTIES_MAX))
            raise Bad(
                index,
                f"an event has at most {_PROPERTIES_MAX} properties, got {int(present[index])}",
            )
    return tuple(out)


def _ids(data: Any, n: int) -> tuple[bytes | None, Array | None, int]:
    column = _column("event_ids", data, n)
    assert isinstance(column, list)
    try:
        return cols._event_ids(column)
    except (cols._Unsure, TypeError, ValueError):
        pass
    for index, event_id in enumerate(column):
        try:
            validate_event_id(event_id)
        except ValueError as exc:
            raise Bad(index, str(exc)) from None
    return cols._event_ids([None if i is None else str(i) for i in column])
