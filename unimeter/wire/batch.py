"""The columnar event batch: one layout for the wire, the write-ahead log and the node's memory.

Theory of operation
-------------------
A batch is a handful of typed buffers, never a list of event objects (the layout follows
Apache Arrow's record batch: fixed-width columns, variable-length data as one byte buffer plus
offsets, repeated strings dictionary-encoded). Encoded, it is one CBOR map; its keys, with
``n`` the number of events (docs/protocol.md, section 4, is the byte-level specification):

    m   metric code table              [text, ...]
    mi  metric index per event         tag 64 (uint8) or tag 69 (uint16 LE)
    a   account ids                    tag 71 (uint64 LE)
    v   values                         tag 79 (sint64 LE)
    t   timestamps (optional)          tag 79 (sint64 LE); NO_TIMESTAMP = "stamp it"
    o   operation types (optional)     tag 64 (uint8), each 0, 1 or 2
    p   properties (optional)          [[key, [value, ...], index column], ...]: one entry per
                                       key present in the batch; index column tag 64 or 69,
                                       0 = the event lacks the key, j = the j-th value (1-based)
    e   event ids (optional)           one byte string: every id's UTF-8 bytes, concatenated
    eo  event id offsets (with e)      tag 70 (uint32 LE), n + 1 entries: id i is
                                       e[eo[i]:eo[i+1]]; an empty slice means "no id"

Decoding is ``np.frombuffer`` views over those byte strings and one pass over the small tables
(codes, property keys and values): nothing is done per event in Python. The INGEST request
carries the encoded map as one byte string, and the partition leader writes exactly those bytes
into its log record, so the client's encoding is the only one a batch ever gets; ``raw`` keeps
them.

Failures raise ``ColumnError`` with a message that starts with the path of the bad column, so
the caller turns it into BadRequest, ProtocolError or RecordError as its side requires.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import accumulate, pairwise
from typing import Any

import cbor2
import numpy as np
import numpy.typing as npt
from cbor2 import CBORTag

from unimeter import limits, model
from unimeter.wire.cborscan import budget_for, check_item, needs_check
from unimeter.wire.frames import decode_item

TAG_UINT8 = 64
TAG_UINT16_LE = 69
TAG_UINT32_LE = 70
TAG_UINT64_LE = 71
TAG_SINT64_LE = 79

# A timestamp column entry meaning "the partition leader stamps this event on arrival".
NO_TIMESTAMP = -(2**63)

U8 = np.dtype("u1")
U16 = np.dtype("<u2")
U32 = np.dtype("<u4")
U64 = np.dtype("<u8")
I64 = np.dtype("<i8")
_DTYPE_OF_TAG: dict[int, np.dtype[Any]] = {
    TAG_UINT8: U8,
    TAG_UINT16_LE: U16,
    TAG_UINT32_LE: U32,
    TAG_UINT64_LE: U64,
    TAG_SINT64_LE: I64,
}
_KEYS = frozenset(("m", "mi", "a", "v", "t", "o", "p", "e", "eo"))
_OPERATION_TYPE_MAX = max(model.OperationType)
_EMPTY_U64 = np.zeros(0, U64)
_EMPTY_I64 = np.zeros(0, I64)
_EMPTY_U8 = np.zeros(0, U8)

Array = npt.NDArray[Any]


class ColumnError(ValueError):
    """A malformed batch; the message starts with the path of the offending column."""


class PropertyColumn:
    """One property key of a batch: its value table and, per event, which value it has."""

    __slots__ = ("index", "key", "values")

    def __init__(self, key: str, values: tuple[str, ...], index: Array) -> None:
        self.key = key
        self.values = values  # the value table; index j >= 1 means values[j - 1]
        self.index = index  # uint8 or uint16, one per event; 0: the event lacks the key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PropertyColumn):
            return NotImplemented
        return self.key == other.key and _same_values(self, other)

    def __repr__(self) -> str:
        return f"PropertyColumn({self.key!r}, {self.values!r}, {self.index.tolist()!r})"


def _same_values(a: PropertyColumn, b: PropertyColumn) -> bool:
    """Equal per-event values (tables may differ in order or in unused entries)."""
    ta = np.array((None, *a.values), dtype=object)[a.index]
    tb = np.array((None, *b.values), dtype=object)[b.index]
    return bool(np.array_equal(ta, tb))


class EventBatch:
    """Events as parallel columns; every column has one entry per event.

    Construct with the logical columns (``EventBatch(metric_codes=..., ..., properties=[{...},
    None, ...], event_ids=["a", None, ...])``): properties are dictionary-encoded and ids packed
    here. Decoders and fast producers use ``from_columns`` with the packed forms directly.
    ``timestamps`` is None when no event carries one (else ``NO_TIMESTAMP`` marks the ones that
    do not); ``operation_types`` and the id buffer are None when absent for every event.
    """

    __slots__ = (
        "_raw",
        "account_ids",
        "event_id_data",
        "event_id_offsets",
        "metric_codes",
        "metric_index",
        "operation_types",
        "property_columns",
        "timestamps",
        "values",
    )

    metric_codes: tuple[str, ...]
    metric_index: Array  # uint8 (table <= 256 codes) or uint16
    account_ids: Array  # uint64
    values: Array  # int64
    timestamps: Array | None  # int64
    operation_types: Array | None  # uint8
    property_columns: tuple[PropertyColumn, ...]
    event_id_data: bytes | None  # every id's UTF-8 bytes, concatenated
    event_id_offsets: Array | None  # uint32, n + 1 entries
    _raw: bytes | None  # the encoded map, when known

    def __init__(
        self,
        *,
        metric_codes: Sequence[str],
        metric_index: Sequence[int] | Array,
        account_ids: Sequence[int] | Array,
        values: Sequence[int] | Array,
        timestamps: Sequence[int] | Array | None = None,
        operation_types: Sequence[int] | Array | None = None,
        properties: Sequence[Mapping[str, str] | None] | None = None,
        event_ids: Sequence[str | None] | None = None,
    ) -> None:
        codes = tuple(metric_codes)
        index = np.asarray(metric_index)
        if index.dtype not in (U8, U16):  # a given uint8/uint16 column is kept as it is
            index = index.astype(U8 if len(codes) <= 256 else U16)
        accounts = np.asarray(account_ids, dtype=U64)
        n = len(accounts)
        self._set(
            codes,
            index,
            accounts,
            np.asarray(values, dtype=I64),
            None if timestamps is None else np.asarray(timestamps, dtype=I64),
            None if operation_types is None else np.asarray(operation_types, dtype=U8),
            () if properties is None else encode_properties(properties, n),
            *((None, None) if event_ids is None else pack_event_ids(event_ids)),
        )

    @classmethod
    def from_columns(
        cls,
        metric_codes: tuple[str, ...],
        metric_index: Array,
        account_ids: Array,
        values: Array,
        timestamps: Array | None = None,
        operation_types: Array | None = None,
        property_columns: tuple[PropertyColumn, ...] = (),
        event_id_data: bytes | None = None,
        event_id_offsets: Array | None = None,
        raw: bytes | None = None,
    ) -> EventBatch:
        """A batch from columns already in their packed form (not checked: see ``check``)."""
        batch = cls.__new__(cls)
        batch._set(
            metric_codes,
            metric_index,
            account_ids,
            values,
            timestamps,
            operation_types,
            property_columns,
            event_id_data,
            event_id_offsets,
        )
        batch._raw = raw
        return batch

    def _set(
        self,
        metric_codes: tuple[str, ...],
        metric_index: Array,
        account_ids: Array,
        values: Array,
        timestamps: Array | None,
        operation_types: Array | None,
        property_columns: tuple[PropertyColumn, ...],
        event_id_data: bytes | None,
        event_id_offsets: Array | None,
    ) -> None:
        self.metric_codes = metric_codes
        self.metric_index = metric_index
        self.account_ids = account_ids
        self.values = values
        self.timestamps = timestamps
        self.operation_types = operation_types
        self.property_columns = property_columns
        self.event_id_data = event_id_data
        self.event_id_offsets = event_id_offsets
        self._raw = None

    def __len__(self) -> int:
        return len(self.account_ids)

    @property
    def raw(self) -> bytes:
        """The encoded map (computed once)."""
        if self._raw is None:
            self._raw = encode_batch(self)
        return self._raw

    # ------------------------------------------------------------------ per-event views
    # For tests, the simulator's model and other slow paths; the node never calls these.

    @property
    def properties(self) -> tuple[dict[str, str] | None, ...] | None:
        """Each event's property map (None for none), or None when no event has one."""
        if not self.property_columns:
            return None
        out: list[dict[str, str] | None] = [None] * len(self)
        for col in self.property_columns:
            table = (None, *col.values)
            for i, j in enumerate(col.index.tolist()):
                if j:
                    found = out[i]
                    if found is None:
                        found = out[i] = {}
                    found[col.key] = table[j]
        return tuple(out)

    @property
    def event_ids(self) -> tuple[str | None, ...] | None:
        """Each event's id (None for none), or None when no event has one."""
        return unpack_event_ids(self.event_id_data, self.event_id_offsets)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventBatch):
            return NotImplemented
        return (
            self.metric_codes == other.metric_codes
            and _equal(self.metric_index, other.metric_index)
            and _equal(self.account_ids, other.account_ids)
            and _equal(self.values, other.values)
            and _equal(self.timestamps, other.timestamps)
            and _equal(self.operation_types, other.operation_types)
            and self.properties == other.properties
            and self.event_ids == other.event_ids
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"EventBatch(metric_codes={self.metric_codes!r}, "
            f"metric_index={self.metric_index.tolist()!r}, "
            f"account_ids={self.account_ids.tolist()!r}, values={self.values.tolist()!r}, "
            f"timestamps={_list(self.timestamps)!r}, "
            f"operation_types={_list(self.operation_types)!r}, "
            f"properties={self.properties!r}, event_ids={self.event_ids!r})"
        )


def _equal(a: Array | None, b: Array | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))


def _list(a: Array | None) -> list[int] | None:
    return None if a is None else a.tolist()


# --------------------------------------------------------------------------- packing helpers


def encode_properties(
    properties: Sequence[Mapping[str, str] | None], n: int
) -> tuple[PropertyColumn, ...]:
    """Per-event property maps as one dictionary-encoded column per key (keys sorted)."""
    if len(properties) != n:
        raise ValueError(f"EventBatch.properties has {len(properties)} entries, expected {n}")
    tables: dict[str, dict[str, int]] = {}
    slots: dict[str, list[int]] = {}
    for i, props in enumerate(properties):
        if not props:
            continue
        for key, value in props.items():
            table = tables.get(key)
            if table is None:
                table = tables[key] = {}
                slots[key] = [0] * n
            j = table.get(value)
            if j is None:
                j = table[value] = len(table) + 1
            slots[key][i] = j
    return tuple(
        PropertyColumn(
            key,
            tuple(tables[key]),
            np.array(slots[key], dtype=U8 if len(tables[key]) < 256 else U16),
        )
        for key in sorted(tables)
    )


def pack_event_ids(event_ids: Sequence[str | None]) -> tuple[bytes | None, Array | None]:
    """Ids as one UTF-8 buffer plus n + 1 offsets; (None, None) when no event has one."""
    encoded = [b"" if eid is None else eid.encode() for eid in event_ids]
    if not any(encoded):
        return None, None
    offsets = np.fromiter(
        accumulate(map(len, encoded), initial=0), dtype=U32, count=len(encoded) + 1
    )
    return b"".join(encoded), offsets


def unpack_event_ids(data: bytes | None, offsets: Array | None) -> tuple[str | None, ...] | None:
    if data is None or offsets is None:
        return None
    bounds = offsets.tolist()
    return tuple(data[a:b].decode() if b > a else None for a, b in pairwise(bounds))


# --------------------------------------------------------------------------- encode


def _typed(tag: int, column: Array) -> CBORTag:
    return CBORTag(tag, column.astype(_DTYPE_OF_TAG[tag], copy=False).tobytes())


def _index_tag(column: Array) -> int:
    return TAG_UINT8 if column.dtype.itemsize == 1 else TAG_UINT16_LE


def encode_batch(batch: EventBatch) -> bytes:
    """The batch's CBOR map, encoded; ``ValueError`` if its columns do not line up."""
    n = len(batch.account_ids)
    for name, column in (
        ("metric_index", batch.metric_index),
        ("values", batch.values),
        ("timestamps", batch.timestamps),
        ("operation_types", batch.operation_types),
        *((f"properties[{c.key!r}]", c.index) for c in batch.property_columns),
    ):
        if column is not None and len(column) != n:
            raise ValueError(f"EventBatch.{name} has {len(column)} entries, expected {n}")
    body: dict[str, Any] = {
        "m": list(batch.metric_codes),
        "mi": _typed(_index_tag(batch.metric_index), batch.metric_index),
        "a": _typed(TAG_UINT64_LE, batch.account_ids),
        "v": _typed(TAG_SINT64_LE, batch.values),
    }
    if batch.timestamps is not None:
        body["t"] = _typed(TAG_SINT64_LE, batch.timestamps)
    if batch.operation_types is not None:
        body["o"] = _typed(TAG_UINT8, batch.operation_types)
    if batch.property_columns:
        body["p"] = [
            [c.key, list(c.values), _typed(_index_tag(c.index), c.index)]
            for c in batch.property_columns
        ]
    if batch.event_id_data is not None:
        assert batch.event_id_offsets is not None
        if len(batch.event_id_offsets) != n + 1:
            raise ValueError(
                f"EventBatch.event_id_offsets has {len(batch.event_id_offsets)} entries, "
                f"expected {n + 1}"
            )
        body["e"] = batch.event_id_data
        body["eo"] = _typed(TAG_UINT32_LE, batch.event_id_offsets)
    return bytes(cbor2.dumps(body))


# --------------------------------------------------------------------------- decode


def _view(obj: object, path: str, tags: tuple[int, ...], n: int | None) -> Array:
    """A read-only numpy view of a typed array, after checking its tag and byte length."""
    if type(obj) is not CBORTag or obj.tag not in tags or type(obj.value) is not bytes:
        names = " or ".join(f"tag {tag}" for tag in tags)
        raise ColumnError(f"{path}: expected a typed array ({names} over a byte string)")
    dtype = _DTYPE_OF_TAG[obj.tag]
    raw: bytes = obj.value
    size = dtype.itemsize
    if n is None:
        if len(raw) % size:
            raise ColumnError(
                f"{path}: {len(raw)} bytes is not a whole number of {size}-byte items"
            )
    elif len(raw) != n * size:
        raise ColumnError(f"{path}: {len(raw)} bytes, expected {n * size} for {n} events")
    return np.frombuffer(raw, dtype=dtype)


def _utf8_within(text: object, low: int, high: int) -> bool:
    if type(text) is not str:
        return False
    if low <= len(text) and len(text) * 4 <= high:
        return True  # a character is 1-4 bytes
    try:
        return low <= len(text.encode()) <= high
    except UnicodeEncodeError:  # a lone surrogate
        return False


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


def _property_columns(
    obj: object, path: str, n: int, check_limits: bool
) -> tuple[PropertyColumn, ...]:
    if type(obj) is not list:
        raise ColumnError(f"{path}: expected an array of [key, values, index] entries")
    if len(obj) > limits.property_keys_per_batch_max:
        raise ColumnError(
            f"{path}: {len(obj)} property keys, at most {limits.property_keys_per_batch_max}"
        )
    columns: list[PropertyColumn] = []
    keys: set[str] = set()
    for k, entry in enumerate(obj):
        where = f"{path}[{k}]"
        if type(entry) is not list or len(entry) != 3:
            raise ColumnError(f"{where}: expected [key, values, index]")
        key, values, index_obj = entry
        if check_limits and not _utf8_within(key, 1, limits.property_key_bytes_max):
            raise ColumnError(
                f"{where}: property key must be text of 1-{limits.property_key_bytes_max} bytes"
            )
        if type(key) is not str or key in keys:
            raise ColumnError(f"{where}: property key {key!r} is not text or is listed twice")
        keys.add(key)
        if type(values) is not list or len(values) > max(n, 1) or len(values) > 65535:
            raise ColumnError(f"{where}: expected an array of at most {max(n, 1)} values")
        for j, value in enumerate(values):
            if type(value) is not str or (
                check_limits and not _utf8_within(value, 0, limits.property_value_bytes_max)
            ):
                raise ColumnError(
                    f"{where}.values[{j}]: expected text of at most "
                    f"{limits.property_value_bytes_max} bytes"
                )
        index = _view(index_obj, f"{where}.index", (TAG_UINT8, TAG_UINT16_LE), n)
        if n and int(index.max()) > len(values):
            raise ColumnError(
                f"{where}.index: index {int(index.max())} but only {len(values)} values"
            )
        columns.append(PropertyColumn(key, tuple(values), index))
    if check_limits and len(columns) > limits.properties_per_event_max and n:
        present = np.zeros(n, np.int32)
        for col in columns:
            present += col.index != 0
        worst = int(present.max())
        if worst > limits.properties_per_event_max:
            i = int(np.argmax(present))
            raise ColumnError(
                f"{path}: event {i} has {worst} properties, "
                f"at most {limits.properties_per_event_max}"
            )
    return tuple(columns)


def _event_ids(data: object, offsets_obj: object, path: str, n: int) -> tuple[bytes, Array]:
    if type(data) is not bytes:
        raise ColumnError(f"{path}.event_ids: expected a byte string (key 'e')")
    offsets = _view(offsets_obj, f"{path}.event_id_offsets", (TAG_UINT32_LE,), n + 1)
    if int(offsets[0]) != 0 or int(offsets[-1]) != len(data):
        raise ColumnError(
            f"{path}.event_id_offsets: must start at 0 and end at {len(data)} (the byte length)"
        )
    lengths = np.diff(offsets.astype(np.int64))
    if n and (int(lengths.min()) < 0 or int(lengths.max()) > limits.event_id_bytes_max):
        i = int(np.flatnonzero((lengths < 0) | (lengths > limits.event_id_bytes_max))[0])
        raise ColumnError(
            f"{path}.event_ids[{i}]: an event id is 1-{limits.event_id_bytes_max} bytes "
            f"(0 for none), got {int(lengths[i])}"
        )
    try:
        data.decode()
    except UnicodeDecodeError:
        raise ColumnError(f"{path}.event_ids: not valid UTF-8") from None
    # Valid UTF-8 as a whole; each id must also start on a character (not a continuation byte).
    starts = offsets[:-1][lengths > 0]
    if len(starts):
        first_bytes = np.frombuffer(data, dtype=U8)[starts]
        bad = np.flatnonzero((first_bytes & 0xC0) == 0x80)
        if len(bad):
            i = int(np.flatnonzero(lengths > 0)[bad[0]])
            raise ColumnError(f"{path}.event_ids[{i}]: does not start on a UTF-8 character")
    return data, offsets


def decode_batch_map(
    obj: object, path: str, *, check_limits: bool = True, raw: bytes | None = None
) -> EventBatch:
    """An ``EventBatch`` from its decoded map; ``ColumnError`` naming the bad column otherwise.

    ``check_limits=False`` is for the write-ahead log: a record accepted under older limits
    must still replay, so only the structure is checked there.
    """
    if type(obj) is not dict:
        raise ColumnError(f"{path}: expected a map")
    unknown = obj.keys() - _KEYS
    if unknown:
        raise ColumnError(f"{path}: unknown key {sorted(map(str, unknown))[0]!r}")
    for key, name in (
        ("m", "metric_codes"),
        ("mi", "metric_index"),
        ("a", "account_ids"),
        ("v", "values"),
    ):
        if key not in obj:
            raise ColumnError(f"{path}.{name}: missing (key {key!r})")
    accounts = _view(obj["a"], f"{path}.account_ids", (TAG_UINT64_LE,), None)
    n = len(accounts)
    if check_limits and n > limits.events_per_batch_max:
        raise ColumnError(f"{path}: {n} events, at most {limits.events_per_batch_max} per batch")
    metric_index = _view(obj["mi"], f"{path}.metric_index", (TAG_UINT8, TAG_UINT16_LE), n)
    values = _view(obj["v"], f"{path}.values", (TAG_SINT64_LE,), n)
    stamps = _view(obj["t"], f"{path}.timestamps", (TAG_SINT64_LE,), n) if "t" in obj else None
    ops = _view(obj["o"], f"{path}.operation_types", (TAG_UINT8,), n) if "o" in obj else None
    codes = _codes(obj["m"], f"{path}.metric_codes", check_limits)
    if n and int(metric_index.max()) >= len(codes):
        raise ColumnError(
            f"{path}.metric_index: index {int(metric_index.max())} but only {len(codes)} "
            "metric codes"
        )
    if ops is not None and n and int(ops.max()) > _OPERATION_TYPE_MAX:
        raise ColumnError(
            f"{path}.operation_types: {int(ops.max())} is not an operation type (0-2)"
        )
    props: tuple[PropertyColumn, ...] = ()
    if "p" in obj:
        props = _property_columns(obj["p"], f"{path}.properties", n, check_limits)
    id_data: bytes | None = None
    id_offsets: Array | None = None
    if ("e" in obj) != ("eo" in obj):
        raise ColumnError(f"{path}.event_ids: keys 'e' and 'eo' come together")
    if "e" in obj:
        id_data, id_offsets = _event_ids(obj["e"], obj["eo"], path, n)
    return EventBatch.from_columns(
        codes, metric_index, accounts, values, stamps, ops, props, id_data, id_offsets, raw
    )


# The lone-request path: a batch of at most this many events, with no properties or event
# ids and one-byte metric indexes, is read by ``decode_small_batch``.
SMALL_BATCH_EVENTS_MAX = 64
_SMALL_KEYS = frozenset(("m", "mi", "a", "v", "t", "o"))
_SMALL_KEYS_REQUIRED = frozenset(("m", "mi", "a", "v"))


def _typed_bytes(obj: object, tag: int, size: int) -> bool:
    """Whether ``obj`` is the typed array ``tag`` over exactly ``size`` bytes."""
    return (
        type(obj) is CBORTag
        and obj.tag == tag
        and type(obj.value) is bytes
        and len(obj.value) == size
    )


def decode_small_batch(data: object) -> EventBatch | None:
    """``decode_batch`` of a small plain batch (see ``SMALL_BATCH_EVENTS_MAX``), its checks
    inline; None for any other batch and for anything wrong, which ``decode_batch`` then
    accepts or refuses, naming the problem, exactly as before. So this only ever accepts what
    ``decode_batch`` accepts, with the same columns (``tests/test_fast_ingest_decode.py``)."""
    if type(data) is not bytes or needs_check(len(data)):
        return None
    try:
        obj = decode_item(data)
    except ValueError:
        return None
    return small_batch_of(obj, data)


def small_batch_of(obj: object, data: bytes) -> EventBatch | None:
    """``decode_small_batch`` of the batch map ``obj`` decoded from ``data`` (its checks,
    after the decode): the batch, or None."""
    if type(obj) is not dict or not _SMALL_KEYS_REQUIRED <= obj.keys() <= _SMALL_KEYS:
        return None
    accounts, index, values, codes = obj["a"], obj["mi"], obj["v"], obj["m"]
    if type(accounts) is not CBORTag or accounts.tag != TAG_UINT64_LE:
        return None
    size = len(accounts.value) if type(accounts.value) is bytes else 0
    n = size >> 3
    if (
        not 0 < n <= SMALL_BATCH_EVENTS_MAX
        or size & 7
        or not _typed_bytes(index, TAG_UINT8, n)
        or not _typed_bytes(values, TAG_SINT64_LE, size)
        or type(codes) is not list
        or not 0 < len(codes) <= SMALL_BATCH_EVENTS_MAX
        or not all(map(model.is_valid_code, codes))
        or len(set(codes)) != len(codes)
        or max(index.value) >= len(codes)
    ):
        return None
    stamps = obj.get("t")
    if stamps is not None:
        if not _typed_bytes(stamps, TAG_SINT64_LE, size):
            return None
        stamps = np.frombuffer(stamps.value, I64)
    ops = obj.get("o")
    if ops is not None:
        if not _typed_bytes(ops, TAG_UINT8, n) or max(ops.value) > _OPERATION_TYPE_MAX:
            return None
        ops = np.frombuffer(ops.value, U8)
    return EventBatch.from_columns(
        tuple(codes),
        np.frombuffer(index.value, U8),
        np.frombuffer(accounts.value, U64),
        np.frombuffer(values.value, I64),
        stamps,
        ops,
        (),
        None,
        None,
        data,
    )


def decode_batch(data: object, path: str, *, check_limits: bool = True) -> EventBatch:
    """An ``EventBatch`` from its encoded map (a byte string); ``ColumnError`` otherwise."""
    if type(data) is not bytes:
        raise ColumnError(f"{path}: expected a byte string holding the batch map")
    try:
        if check_limits and needs_check(len(data)):
            # The frame was walked, but its budget counted these bytes as one byte string:
            # weigh what they will build before cbor2 builds it.
            check_item(data, items_max=budget_for(len(data)))
        obj = decode_item(data)
    except ValueError as exc:
        raise ColumnError(f"{path}: {exc}") from None
    return decode_batch_map(obj, path, check_limits=check_limits, raw=data)


def empty_batch() -> EventBatch:
    return EventBatch.from_columns((), _EMPTY_U8, _EMPTY_U64, _EMPTY_I64)
