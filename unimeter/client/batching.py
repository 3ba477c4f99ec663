"""One call's packed columns -> per-partition batches, and the replies -> one result.

Theory of operation: the account column is routed in one vectorised call (the documented mix,
``routing.py``), a stable sort by partition gives the order in which every column is gathered,
once, and each partition's events are then one contiguous slice of every gathered column: a
batch is made of views, its metric codes and property values renumbered to the entries it uses
(``np.bincount`` says which), and its bytes assembled once (``batch_bytes.py``). Python runs
per batch, never per event.

A partition's events are split into several batches (each its own ``Ingest`` with its own
sequence number) when they exceed the events-per-batch limit, or when a batch's encoded map
turns out larger than half a frame or holds more property keys than a batch may: it is then cut
into as many equal pieces as needed, and each piece encoded again (measured, not estimated;
ordinary calls are far below both limits and never pay for this). ``Group.origin`` maps an
event's position in its batch back to its index in the caller's events, which is how
``merge_results`` reports rejections in the caller's terms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from unimeter import limits
from unimeter.errors import ProtocolError
from unimeter.model import IngestResult
from unimeter.wire.batch import NO_TIMESTAMP, EventBatch, PropertyColumn
from unimeter.wire.messages import IngestReply

from . import packed as pk
from .batch_bytes import batch_bytes
from .columns import Columns, pack_events, pack_lists
from .packed import U8, U32, Array, Packed

# Routes a uint64 column of (valid) account ids to their partitions, e.g. ``Partitioner.many``.
Route = Callable[[Array], Array]

_KEYS_PER_BATCH_MAX = limits.property_keys_per_batch_max


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a microsecond more
class Group:
    """One ``Ingest`` message worth of events, all of one partition (never changed)."""

    partition: int
    origin: Array  # origin[i]: index in the caller's events of the batch's event i
    batch: EventBatch


def validate_events(events: Sequence[object]) -> None:
    """Raise ``InvalidRequestError`` naming the index and problem of the first bad event."""
    pack_events(events)


def build_groups(
    events: Sequence[object],
    route: Route,
    *,
    events_per_batch_max: int = limits.events_per_batch_max,
    frame_bytes_max: int = limits.frame_bytes_max,
) -> list[Group]:
    """Validate every event, then split them into per-partition batches.

    Groups come out ordered by partition, then by the position of their first event, so the
    order (and so the sequence numbers they receive) is deterministic for a given input.
    """
    return split_packed(
        pack_events(events),
        route,
        events_per_batch_max=events_per_batch_max,
        frame_bytes_max=frame_bytes_max,
    )


def split_columns(
    columns: Columns,
    route: Route,
    *,
    events_per_batch_max: int = limits.events_per_batch_max,
    frame_bytes_max: int = limits.frame_bytes_max,
) -> list[Group]:
    """``build_groups`` for events already taken apart by a reader of another format (the HTTP
    API's JSON); OverflowError if an account id or a value does not fit its column."""
    return split_packed(
        pack_lists(columns),
        route,
        events_per_batch_max=events_per_batch_max,
        frame_bytes_max=frame_bytes_max,
    )


def split_packed(
    packed: Packed,
    route: Route,
    *,
    events_per_batch_max: int = limits.events_per_batch_max,
    frame_bytes_max: int = limits.frame_bytes_max,
) -> list[Group]:
    assert events_per_batch_max >= 1
    n = len(packed)
    if n == 0:
        return []
    keys = route(packed.account_ids).astype(np.intp)
    counts = np.bincount(keys)
    facts = _RunFacts(packed, keys, counts)  # before the sort: they do not depend on order
    sizes = counts.tolist()
    if max(sizes) == n:  # one partition: the events stay in the caller's order
        order = np.arange(n)
    else:
        # Partitions fit 16 bits: numpy sorts them by radix.
        order = np.argsort(keys.astype(np.uint16), kind="stable")
        packed = packed.take(order)
    cutter = _Cutter(packed, order, frame_bytes_max // 2, facts)
    start = 0
    for partition, size in enumerate(sizes):
        if not size:
            continue
        end = start + size
        if size <= events_per_batch_max:
            cutter.cut(partition, start, end, whole=True)
        else:
            for low in range(start, end, events_per_batch_max):
                cutter.cut(partition, low, min(low + events_per_batch_max, end))
        start = end
    return cutter.groups


class _RunFacts:
    """What each partition's events use, for all partitions at once (a few numpy calls per
    column, not per batch): whether they use every metric code of the call, every value of a
    property key or none, how many carry a timestamp or an operation. ``_Cutter`` trusts these
    only for a batch that is its partition's whole run; a part of a run is looked at itself."""

    __slots__ = ("all_codes", "operations", "properties", "stamped")

    def __init__(self, packed: Packed, keys: Array, counts: Array) -> None:
        runs = len(counts)
        self.all_codes: list[bool] | None = None
        if packed.code_ids is not None:
            self.all_codes = _uses_every(keys, packed.code_ids, len(packed.code_table), runs)
        # Events with a timestamp per run; None when every event has one (or none has).
        self.stamped: list[int] | None = None
        if packed.timestamps is not None:
            present = packed.timestamps != NO_TIMESTAMP
            if not present.all():
                self.stamped = np.bincount(keys[present], minlength=runs).tolist()
        self.operations: list[int] | None = None
        if packed.operation_types is not None:
            operated = keys[packed.operation_types != 0]
            self.operations = np.bincount(operated, minlength=runs).tolist()
        # Per key: (events lacking it, whether every value of its table is used) per run.
        self.properties: list[tuple[list[int], list[bool]]] = []
        for column in packed.properties:
            table = len(column.values) + 1  # 0: the event lacks the key
            used = np.bincount(keys * table + column.index, minlength=runs * table)
            used = used.reshape(runs, table)
            lacking = used[:, 0].tolist()
            every = np.count_nonzero(used[:, 1:], axis=1) == table - 1
            self.properties.append((lacking, every.tolist()))


def _uses_every(keys: Array, index: Array, entries: int, runs: int) -> list[bool]:
    """Per run: whether its events use every one of ``entries`` table entries."""
    used = np.bincount(keys * entries + index, minlength=runs * entries).reshape(runs, entries)
    every: list[bool] = (np.count_nonzero(used, axis=1) == entries).tolist()
    return every


class _Cutter:
    """Makes the batches of contiguous slices of ``packed`` (already in partition order)."""

    __slots__ = ("bytes_budget", "facts", "gaps", "groups", "id_offsets", "order", "packed",
                 "zeros")  # fmt: skip

    def __init__(self, packed: Packed, order: Array, bytes_budget: int, facts: _RunFacts) -> None:
        self.packed = packed
        self.order = order
        self.bytes_budget = bytes_budget
        self.facts = facts
        self.groups: list[Group] = []
        # Whether a batch may lack timestamps altogether (then it carries no column).
        self.gaps = facts.stamped is not None
        self.zeros = np.zeros(len(packed), U8) if packed.code_ids is None else None
        # Ids of one width have the same offsets in every batch: slices of one column.
        width = packed.id_width
        self.id_offsets = pk.uniform_offsets(width, len(packed)).astype(U32) if width else None

    def cut(self, partition: int, low: int, high: int, *, whole: bool = False) -> None:
        """Batches of events ``low:high`` of ``partition`` (``whole``: all of its events)."""
        batch, keys = self.batch(low, high, partition if whole else None)
        size = len(batch.raw)
        if (size <= self.bytes_budget and keys <= _KEYS_PER_BATCH_MAX) or high - low == 1:
            self.groups.append(Group(partition, self.order[low:high], batch))
            return
        pieces = max(2, -(-size // self.bytes_budget), -(-keys // _KEYS_PER_BATCH_MAX))
        bounds = np.linspace(low, high, min(pieces, high - low) + 1).astype(int).tolist()
        for a, b in pairwise(bounds):
            self.cut(partition, a, b)

    def batch(self, low: int, high: int, run: int | None) -> tuple[EventBatch, int]:
        """The batch of events ``low:high`` (encoded), and how many property keys it has;
        ``run``: the partition whose whole run these events are (its facts apply), else None.
        Runs once per batch: numpy calls on views, no copies but the bytes."""
        p, facts = self.packed, self.facts
        if run is not None and (facts.all_codes is None or facts.all_codes[run]):
            table = p.code_table
            if p.code_ids is None:
                assert self.zeros is not None
                index = self.zeros[low:high]
            else:
                index = p.code_ids[low:high]
        else:
            table, index = self.codes(low, high)
        stamps = operations = None
        if p.timestamps is not None:
            stamps = p.timestamps[low:high]
            if run is not None:
                if facts.stamped is not None and not facts.stamped[run]:
                    stamps = None
            elif self.gaps and not np.count_nonzero(stamps != NO_TIMESTAMP):
                stamps = None
        if p.operation_types is not None:
            operations = p.operation_types[low:high]
            if run is not None:
                assert facts.operations is not None
                if not facts.operations[run]:
                    operations = None
            elif not np.count_nonzero(operations):  # count_nonzero: a tenth of any()'s cost
                operations = None
        properties = []
        for column, (lacking, every) in zip(p.properties, facts.properties, strict=True):
            if run is None:
                sliced = _key_slice(column, low, high)
            elif lacking[run] == high - low:
                sliced = None
            elif every[run]:
                sliced = column.key, column.values, column.index[low:high]
            else:
                sliced = _key_slice(column, low, high)
            if sliced is not None:
                properties.append(sliced)
        id_data = id_offsets = None
        if self.id_offsets is not None:
            assert p.id_data is not None
            width = p.id_width
            id_data = p.id_data[low * width : high * width]
            id_offsets = self.id_offsets[: high - low + 1]
        elif p.id_data is not None:
            assert p.id_offsets is not None
            start, end = p.id_offsets[low : high + 1 : high - low].tolist()
            if end > start:
                id_data = p.id_data[start:end]
                id_offsets = (p.id_offsets[low : high + 1] - start).astype(U32)
        accounts, values = p.account_ids[low:high], p.values[low:high]
        raw = batch_bytes(
            table, index, accounts, values, stamps, operations, properties, id_data, id_offsets
        )
        batch = EventBatch.from_columns(
            table,
            index,
            accounts,
            values,
            stamps,
            operations,
            tuple([PropertyColumn(key, values, index) for key, values, index in properties]),
            id_data,
            id_offsets,
            raw,
        )
        return batch, len(properties)

    def codes(self, low: int, high: int) -> tuple[tuple[str, ...], Array]:
        """The codes events ``low:high`` use (in table order) and their index column."""
        p = self.packed
        if p.code_ids is None:
            assert self.zeros is not None
            return p.code_table, self.zeros[low:high]
        ids = p.code_ids[low:high]
        counts = np.bincount(ids, minlength=len(p.code_table))
        if np.count_nonzero(counts) == len(counts):
            return p.code_table, ids
        used = np.flatnonzero(counts)
        lut = np.zeros(len(counts), pk.index_dtype(len(used) - 1))
        lut[used] = np.arange(len(used))
        table = p.code_table
        return tuple([table[i] for i in used.tolist()]), lut[ids]


def _key_slice(
    column: pk.KeyColumn, low: int, high: int
) -> tuple[str, tuple[str, ...], Array] | None:
    """(key, the values events ``low:high`` use, their index column); None if none has it."""
    index = column.index[low:high]
    counts = np.bincount(index, minlength=len(column.values) + 1)
    if counts[0] == high - low:
        return None
    if np.count_nonzero(counts) + (counts[0] == 0) == len(counts):
        return column.key, column.values, index
    used = np.flatnonzero(counts[1:])
    lut = np.zeros(len(counts), pk.index_dtype(len(used)))
    lut[used + 1] = np.arange(1, len(used) + 1)
    values = column.values
    return column.key, tuple([values[i] for i in used.tolist()]), lut[index]


def empty_result() -> IngestResult:
    return IngestResult(n_stored=0, n_duplicates=0, n_rejected=0, rejected=[], last_offset=None)


def merge_results(parts: Sequence[tuple[Group, IngestReply]]) -> IngestResult:
    """Sum the per-group replies; rejections are reported by the caller's event index."""
    n_stored = n_duplicates = n_rejected = 0
    rejected: list[tuple[int, str]] = []
    last_offset: int | None = None
    for group, reply in parts:
        n_stored += reply.n_stored
        n_duplicates += reply.n_duplicates
        n_rejected += reply.n_rejected
        for batch_index, reason in reply.rejected:
            if not 0 <= batch_index < len(group.origin):
                # Reporting it under a made-up index would blame the wrong event.
                raise ProtocolError(
                    f"partition {group.partition} rejected event {batch_index} of a batch of "
                    f"{len(group.origin)}"
                )
            rejected.append((int(group.origin[batch_index]), reason))
        if reply.last_offset is not None and (
            last_offset is None or reply.last_offset > last_offset
        ):
            last_offset = reply.last_offset
    rejected.sort()
    return IngestResult(
        n_stored=n_stored,
        n_duplicates=n_duplicates,
        n_rejected=n_rejected,
        rejected=rejected,
        last_offset=last_offset,
    )
