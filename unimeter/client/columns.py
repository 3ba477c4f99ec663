"""The caller's ``Event`` objects, checked in bulk and packed into columns (``packed.Packed``).

Theory of operation: ``Event.validate`` is the authority on what is valid, and calling it costs
microseconds per event. ``pack_events`` instead reads each field of every event into a list (one
comprehension per field) and checks each whole list with C-level operations: the set of types
it holds, its minimum and maximum (building the typed array is the range check), its distinct
metric codes, property keys and values (checked once each, however many events repeat them).
The lists then become the packed columns directly: numbers as typed arrays, codes and property
values dictionary-encoded, ids joined into one byte string. These checks only ever *accept*
lists of which ``validate`` accepts every entry (exact types, byte lengths measured or bounded
from character counts). Whenever they are unsure -- a bad event, or a valid one of an unusual
type (an ``int`` subclass, a ``Mapping`` that is not a dict, a plain int as operation type) --
the events are checked one by one with ``validate``, which raises ``InvalidRequestError`` naming
the first bad event's index and problem; if every event passes, the fields are read again event
by event and normalised. Either way the result is the same columns.

``Columns`` is the list form of the same thing, which readers of other formats produce (the
HTTP API's JSON reader) and ``pack_lists`` packs.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import compress
from operator import itemgetter
from typing import Any

import numpy as np

from unimeter import limits, periods
from unimeter.errors import InvalidRequestError
from unimeter.model import Event, OperationType, is_valid_code
from unimeter.wire.batch import NO_TIMESTAMP

from . import packed as pk
from .packed import ABSENT, I64, U8, U64, Array, KeyColumn, Packed

_EVENT_TYPES = frozenset({Event})
_INT_TYPES = frozenset({int})
_STR_TYPES = frozenset({str})
_NONE_TYPES = frozenset({type(None)})
_STR_OR_NONE = frozenset({str, type(None)})
_DICT_TYPES = frozenset({dict})
_DATETIME_TYPES = frozenset({datetime})
_DATETIME_OR_NONE = frozenset({datetime, type(None)})
_OPERATION_TYPES = frozenset({OperationType})
_VALUE_OR_ABSENT = frozenset({str, type(ABSENT)})
_NONE = OperationType.NONE
_EPOCH = periods.EPOCH
_US_PER_DAY = 86_400 * 1_000_000

_PROPERTIES_MAX = limits.properties_per_event_max
_KEY_BYTES_MAX = limits.property_key_bytes_max
_VALUE_BYTES_MAX = limits.property_value_bytes_max
_EVENT_ID_BYTES_MAX = limits.event_id_bytes_max


class _Unsure(Exception):
    """The bulk checks cannot vouch for every event: let ``validate`` judge each one."""


@dataclass(frozen=True, slots=True)
class Columns:
    """Valid events as one list per field (entry ``i`` describes event ``i``); an optional
    field whose every entry is the default is None."""

    account_ids: list[int]
    code_ids: list[int] | None  # event i's code is code_table[code_ids[i]]; None: only one code
    code_table: list[str]  # each distinct code once, sorted
    values: list[int]
    timestamps_us: list[int] | None  # NO_TIMESTAMP where an event has none
    operation_types: list[int] | None
    properties: list[dict[str, str] | None] | None  # None for an event without any
    event_ids: list[str | None] | None

    def __len__(self) -> int:
        return len(self.account_ids)


def pack_events(events: Sequence[object]) -> Packed:
    """Every event's fields as packed columns; ``InvalidRequestError`` names the first bad
    event and its problem."""
    try:
        return _bulk(events)
    except (_Unsure, TypeError, ValueError, AttributeError, OverflowError):
        # Something the bulk checks refuse or did not expect (an unhashable code, a string
        # that cannot be encoded, a naive datetime): let ``validate`` judge each event.
        pass
    validate_each(events)
    return pack_lists(_each(events))  # type: ignore[arg-type]  # validate_each checked them


def columns_of(events: Sequence[object]) -> Columns:
    """``pack_events`` in list form."""
    return to_lists(pack_events(events))


def validate_each(events: Sequence[object]) -> None:
    """``Event.validate`` for every event in turn: ``InvalidRequestError`` for the first bad
    one, naming its index and its problem."""
    for index, event in enumerate(events):
        if not isinstance(event, Event):
            raise InvalidRequestError(
                f"event {index}: expected an Event, got {type(event).__name__}"
            )
        try:
            event.validate()
        except ValueError as exc:
            raise InvalidRequestError(f"event {index}: {exc}") from None


def _bulk(events: Sequence[object]) -> Packed:
    """The packed columns if the bulk checks are sure every event is valid, else ``_Unsure``
    (or an exception a check raised on something unexpected)."""
    if set(map(type, events)) != _EVENT_TYPES:
        if not events:
            return pk.empty()
        raise _Unsure
    batch: Sequence[Event] = events  # type: ignore[assignment]  # every one's type is Event
    account_ids = [e.account_id for e in batch]
    values = [e.value for e in batch]
    # Exact types: bool is an int subclass that validate refuses, and array() would take it.
    if set(map(type, account_ids)) != _INT_TYPES or set(map(type, values)) != _INT_TYPES:
        raise _Unsure
    accounts = np.frombuffer(array("Q", account_ids), U64)  # OverflowError: out of range
    amounts = np.frombuffer(array("q", values), I64)
    code_table, code_ids = codes_of([e.metric_code for e in batch])
    # Defaults are found by identity: an object may claim to equal None. A first event with
    # an optional field set means the fields are read anyway, so the scan is skipped.
    first = batch[0]
    if first.timestamp is None and first.event_id is None and first.operation_type is _NONE:
        special = [
            1
            for e in batch
            if e.timestamp is not None
            or e.event_id is not None
            or e.operation_type is not _NONE
            or e.properties
            or e.properties.__class__ is not dict
        ]
        if not special:  # the common case: no optional field is set
            return Packed(accounts, amounts, code_table, code_ids, None, None, (), None, None)
    id_data, id_offsets, id_width = _event_ids([e.event_id for e in batch])
    return Packed(
        account_ids=accounts,
        values=amounts,
        code_table=code_table,
        code_ids=code_ids,
        timestamps=_timestamps([e.timestamp for e in batch]),
        operation_types=_operations([e.operation_type for e in batch]),
        properties=_properties([e.properties for e in batch]),
        id_data=id_data,
        id_offsets=id_offsets,
        id_width=id_width,
    )


def codes_of(metric_codes: list[Any]) -> tuple[tuple[str, ...], Array | None]:
    """The sorted table of distinct valid codes and each event's index into it (None when
    there is one code). ``_Unsure`` for anything but valid ``str`` codes."""
    distinct = set(metric_codes)  # TypeError for an unhashable code
    for code in distinct:
        if not is_valid_code(code):
            raise _Unsure  # the caller validates each event
    table = tuple(sorted(distinct))
    if len(table) == 1:
        return table, None
    position = dict(zip(table, range(len(table)), strict=True))
    dtype = pk.index_dtype(len(table) - 1)
    if dtype is U8:
        return table, np.frombuffer(bytes(map(position.__getitem__, metric_codes)), U8)
    return table, np.fromiter(map(position.__getitem__, metric_codes), dtype, len(metric_codes))


def _timestamps(stamps: list[Any]) -> Array | None:
    kinds = set(map(type, stamps))
    if kinds == _NONE_TYPES:
        return None
    if kinds == _DATETIME_TYPES:
        return _micros(stamps)
    if kinds != _DATETIME_OR_NONE:
        raise _Unsure
    present = pk.present_mask(stamps)
    return pk.stamps_with_gaps(present, _micros(list(compress(stamps, present))))


def _micros(stamps: list[datetime]) -> Array:
    """Microseconds since the epoch, exactly; TypeError for a naive datetime (it cannot be
    subtracted from the aware epoch)."""
    deltas: list[timedelta] = [t - _EPOCH for t in stamps]
    days = np.frombuffer(array("q", [d.days for d in deltas]), I64)
    seconds = np.frombuffer(array("q", [d.seconds for d in deltas]), I64)
    micros = np.frombuffer(array("q", [d.microseconds for d in deltas]), I64)
    return days * _US_PER_DAY + seconds * 1_000_000 + micros


def _operations(operations: list[Any]) -> Array | None:
    if set(map(type, operations)) != _OPERATION_TYPES:
        raise _Unsure  # a plain int is valid: validate judges, the slow path normalises
    column = np.frombuffer(bytes(operations), U8)
    return column if column.any() else None


def _properties(mappings: list[Any]) -> tuple[KeyColumn, ...]:
    if set(map(type, mappings)) != _DICT_TYPES:
        raise _Unsure
    if not any(mappings):
        return ()
    keys = set().union(*mappings)
    # No event has more properties than there are keys: count them only when that could be
    # more than an event may have.
    if len(keys) > _PROPERTIES_MAX and max(map(len, mappings)) > _PROPERTIES_MAX:
        raise _Unsure
    if not texts_within(list(keys), 1, _KEY_BYTES_MAX):
        raise _Unsure
    # Each mapping's keys are among ``keys``: if they add up to all of them for every event,
    # every event has every key, and a column is read without asking.
    everywhere = sum(map(len, mappings)) == len(keys) * len(mappings)
    out = []
    for key in sorted(keys):
        if everywhere:
            column = list(map(itemgetter(key), mappings))
        else:
            column = [p[key] if key in p else ABSENT for p in mappings]  # noqa: SIM401 - faster
        if not set(map(type, column)) <= _VALUE_OR_ABSENT:
            raise _Unsure
        encoded = pk.key_column(key, column)
        assert encoded is not None  # some event has the key
        if not texts_within(list(encoded.values), 0, _VALUE_BYTES_MAX):
            raise _Unsure
        out.append(encoded)
    return tuple(out)


def _event_ids(ids: list[Any]) -> tuple[bytes | None, Array | None, int]:
    kinds = set(map(type, ids))
    if kinds == _NONE_TYPES:
        return None, None, 0
    if kinds == _STR_TYPES:
        joined = "".join(ids)
        if joined.isascii():
            # One byte per character, so every valid id is under 256 characters: their lengths
            # fit a byte string (ValueError for a longer one: the caller validates each).
            lengths = np.frombuffer(bytes(map(len, ids)), U8)
            if int(lengths.min()) == 0 or int(lengths.max()) > _EVENT_ID_BYTES_MAX:
                raise _Unsure
            return pk.packed_ids(ids, lengths, joined.encode("ascii"))
        texts = ids
        shortest = min(map(len, texts))
    elif kinds == _STR_OR_NONE:
        shortest = min(map(len, pk.without_none(ids)))
        texts = ["" if i is None else i for i in ids]
    else:
        raise _Unsure
    if shortest < 1:
        raise _Unsure
    data, lengths = pk.utf8_lengths(texts)  # UnicodeEncodeError: a lone surrogate
    if int(lengths.max()) > _EVENT_ID_BYTES_MAX:
        raise _Unsure
    return pk.packed_ids(texts, lengths, data)


def texts_within(strings: list[Any], low: int, high: int) -> bool:
    """Every entry of the non-empty ``strings`` is a str of ``low``..``high`` UTF-8 bytes."""
    if set(map(type, strings)) != _STR_TYPES:
        return False
    if min(map(len, strings)) < low:  # a character is at least one byte
        return False
    if all(map(str.isascii, strings)):  # one byte per character
        return max(map(len, strings)) <= high
    # Count the bytes. A string that cannot be encoded (a lone surrogate) raises
    # UnicodeEncodeError, a ValueError: the caller then validates each event.
    return max(map(len, map(str.encode, strings))) <= high


def _each(events: Sequence[Event]) -> Columns:
    """The columns of events ``validate`` accepted, read one event at a time and normalised
    (an ``OperationType`` from an int, a dict from another ``Mapping``, an int from an int
    subclass)."""
    n = len(events)
    timestamps = [e.timestamp for e in events]
    operations = [int(OperationType(e.operation_type)) for e in events]
    mappings: list[Mapping[str, str]] = [e.properties for e in events]
    ids = [e.event_id for e in events]
    metric_codes = [str(e.metric_code) for e in events]
    code_table = sorted(set(metric_codes))
    position = {code: i for i, code in enumerate(code_table)}
    return Columns(
        account_ids=[int(e.account_id) for e in events],
        code_ids=None if len(code_table) == 1 else [position[c] for c in metric_codes],
        code_table=code_table,
        values=[int(e.value) for e in events],
        timestamps_us=(
            None
            if timestamps.count(None) == n
            else [NO_TIMESTAMP if t is None else periods.to_us(t) for t in timestamps]
        ),
        operation_types=operations if any(operations) else None,
        properties=(
            [{str(k): str(v) for k, v in p.items()} if p else None for p in mappings]
            if any(mappings)
            else None
        ),
        event_ids=None if ids.count(None) == n else [None if i is None else str(i) for i in ids],
    )


# --------------------------------------------------------------------------- list form


def pack_lists(columns: Columns) -> Packed:
    """The packed form of valid columns (OverflowError for an account id or value out of
    range: only a reader that skipped the range checks can cause that)."""
    n = len(columns)
    if n == 0:
        return pk.empty()
    table = tuple(columns.code_table)
    code_ids = None
    if columns.code_ids is not None and len(table) > 1:
        code_ids = np.array(columns.code_ids, pk.index_dtype(len(table) - 1))
    timestamps = None
    if columns.timestamps_us is not None:
        timestamps = np.frombuffer(array("q", columns.timestamps_us), I64)
        if bool((timestamps == NO_TIMESTAMP).all()):
            timestamps = None
    operations = None
    if columns.operation_types is not None and any(columns.operation_types):
        operations = np.array(columns.operation_types, U8)
    properties: tuple[KeyColumn, ...] = ()
    if columns.properties is not None:
        maps = [p or {} for p in columns.properties]
        keyed = [
            pk.key_column(key, [p.get(key, ABSENT) for p in maps])
            for key in sorted(set().union(*maps))
        ]
        properties = tuple(c for c in keyed if c is not None)
    id_data = id_offsets = None
    id_width = 0
    if columns.event_ids is not None and columns.event_ids.count(None) != n:
        texts = ["" if i is None else i for i in columns.event_ids]
        id_data, lengths = pk.utf8_lengths(texts)
        id_data, id_offsets, id_width = pk.packed_ids(texts, lengths, id_data)
    return Packed(
        account_ids=np.frombuffer(array("Q", columns.account_ids), U64),
        values=np.frombuffer(array("q", columns.values), I64),
        code_table=table,
        code_ids=code_ids,
        timestamps=timestamps,
        operation_types=operations,
        properties=properties,
        id_data=id_data,
        id_offsets=id_offsets,
        id_width=id_width,
    )


def to_lists(packed: Packed) -> Columns:
    ids = packed.event_ids() if packed.id_data is not None else None
    return Columns(
        account_ids=packed.account_ids.tolist(),
        code_ids=None if packed.code_ids is None else packed.code_ids.tolist(),
        code_table=list(packed.code_table),
        values=packed.values.tolist(),
        timestamps_us=None if packed.timestamps is None else packed.timestamps.tolist(),
        operation_types=(
            None if packed.operation_types is None else packed.operation_types.tolist()
        ),
        properties=packed.property_maps() if packed.properties else None,
        event_ids=ids,
    )
