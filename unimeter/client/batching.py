"""The caller's list of events -> per-partition columnar batches, and the replies -> one result.

Theory of operation: ``columns_of`` checks every event (before anything is sent, so a bad
event fails the whole call locally) and takes the events apart into one list per field. The
account column is routed in one go (``Partitioner.many``) and one loop notes each event's index
under its partition (the only Python code run per event). Each batch's slice of every column is
then picked with one ``operator.itemgetter`` and becomes a typed array; building the arrays is
also the range check of account ids and values (they raise OverflowError, and the events are
then validated one by one to name the culprit).

A partition's events are split into several batches (each its own ``Ingest`` with its own
sequence number) when they exceed the events-per-batch limit or a conservative estimate of
their encoded size exceeds half a frame. ``Group.origin`` maps an event's position in its batch
back to its index in the caller's list, which is how ``merge_results`` reports rejections in
the caller's terms.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from unimeter import limits
from unimeter.errors import ProtocolError
from unimeter.model import Event, IngestResult
from unimeter.wire.messages import NO_TIMESTAMP, EventBatch, IngestReply

from .columns import Columns, columns_of, validate_each

# Upper bounds of an event's encoded size, used to keep a batch well under a frame. They are
# bounds, not measurements: checking a length is cheap, encoding to measure is not.
_EVENT_FIXED_BYTES = 48  # numeric columns, list and map headers
_PROPERTY_BYTES = limits.property_key_bytes_max + limits.property_value_bytes_max + 8
_EVENT_ID_BYTES = limits.event_id_bytes_max + 8
_CODE_BYTES = limits.metric_code_bytes_max + 8
_EVENT_BYTES_WORST = (
    _EVENT_FIXED_BYTES
    + limits.properties_per_event_max * _PROPERTY_BYTES
    + _EVENT_ID_BYTES
    + _CODE_BYTES
)
_METRIC_INDEX_B_MAX = 256  # an 'B' index column addresses at most 256 codes

# Routes a column of (valid) account ids to their partitions, e.g. ``Partitioner.many``.
Route = Callable[[list[int]], list[int]]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a microsecond more
class Group:
    """One ``Ingest`` message worth of events, all of one partition (never changed)."""

    partition: int
    origin: Sequence[int]  # origin[i]: index in the caller's list of the batch's event i
    batch: EventBatch


def validate_events(events: Sequence[object]) -> None:
    """Raise ``InvalidRequestError`` naming the index and problem of the first bad event."""
    columns_of(events)


def build_groups(
    events: Sequence[Event],
    route: Route,
    *,
    events_per_batch_max: int = limits.events_per_batch_max,
    frame_bytes_max: int = limits.frame_bytes_max,
) -> list[Group]:
    """Validate every event, then split them into per-partition batches.

    Groups come out ordered by partition, then by the position of their first event, so the
    order (and so the sequence numbers they receive) is deterministic for a given input.
    """
    columns = columns_of(events, ranges=False)
    try:
        return split_columns(
            columns,
            route,
            events_per_batch_max=events_per_batch_max,
            frame_bytes_max=frame_bytes_max,
        )
    except OverflowError:
        validate_each(events)  # raises, naming the event out of range
        raise AssertionError("a column overflowed its array but every event is valid") from None


def split_columns(
    columns: Columns,
    route: Route,
    *,
    events_per_batch_max: int = limits.events_per_batch_max,
    frame_bytes_max: int = limits.frame_bytes_max,
) -> list[Group]:
    """``build_groups`` for events already taken apart (by ``columns_of``, or by a reader of
    another format, such as the HTTP API's JSON). OverflowError if an account id or a value
    does not fit its column (only possible for columns made with ``ranges=False``)."""
    assert events_per_batch_max >= 1
    n = len(columns)
    if n == 0:
        return []
    partitions = route(columns.account_ids)
    first = partitions[0]
    by_partition: list[tuple[int, Sequence[int]]]
    if partitions.count(first) == n:
        by_partition = [(first, range(n))]
    else:
        top = max(partitions)
        # A list indexed by partition while that is small, else a dict (4096 partitions).
        buckets: list[list[int]] | dict[int, list[int]] = (
            [[] for _ in range(top + 1)] if top < n else {p: [] for p in set(partitions)}
        )
        # A counter instead of enumerate: a third cheaper, and this is the one loop run per event.
        index = 0
        for partition in partitions:
            buckets[partition].append(index)
            index += 1  # noqa: SIM113
        pairs = enumerate(buckets) if isinstance(buckets, list) else sorted(buckets.items())
        by_partition = [(partition, indices) for partition, indices in pairs if indices]
    bytes_budget = frame_bytes_max // 2
    return [
        _group(partition, columns, chunk)
        for partition, indices in by_partition
        for chunk in _chunks(columns, indices, events_per_batch_max, bytes_budget)
    ]


def _chunks(
    columns: Columns, indices: Sequence[int], count_max: int, bytes_budget: int
) -> Iterator[Sequence[int]]:
    if len(indices) <= count_max and len(indices) * _EVENT_BYTES_WORST <= bytes_budget:
        yield indices  # the common case: no event needs a closer look
        return
    properties, event_ids, code_ids = columns.properties, columns.event_ids, columns.code_ids
    chunk: list[int] = []
    size = 0
    codes: set[int] = set()
    for index in indices:
        cost = _EVENT_FIXED_BYTES
        if properties is not None and (mapping := properties[index]) is not None:
            cost += _PROPERTY_BYTES * len(mapping)
        if event_ids is not None and event_ids[index] is not None:
            cost += _EVENT_ID_BYTES
        code = 0 if code_ids is None else code_ids[index]
        new_code = code not in codes
        if chunk and (
            len(chunk) >= count_max or size + cost + new_code * _CODE_BYTES > bytes_budget
        ):
            yield chunk
            chunk, size, codes, new_code = [], 0, set(), True
        chunk.append(index)
        size += cost + new_code * _CODE_BYTES
        codes.add(code)
    if chunk:
        yield chunk


def _signed64(column: Sequence[int]) -> array[int]:
    """``array("q", column)``; building it through struct is half the cost. OverflowError
    for an int out of range, as ``array`` raises."""
    try:
        return array("q", struct.pack(f"={len(column)}q", *column))
    except struct.error:
        raise OverflowError("a column entry does not fit a signed 64-bit integer") from None


def _whole(column: Sequence[Any]) -> Sequence[Any]:
    return column


def _group(partition: int, columns: Columns, indices: Sequence[int]) -> Group:
    """The batch of the events at ``indices``; OverflowError if an account id or a value is
    out of range."""
    n = len(indices)
    pick: Callable[[Sequence[Any]], Sequence[Any]]
    if n == len(columns):
        pick = _whole  # indices is every index, in order
    elif n == 1:
        only = indices[0]

        def pick(column: Sequence[Any]) -> Sequence[Any]:
            return (column[only],)

    else:
        pick = itemgetter(*indices)
    codes = len(columns.code_table)
    table: Sequence[str] = columns.code_table
    if columns.code_ids is None:
        metric_index = array("B", bytes(n))
    elif codes <= _METRIC_INDEX_B_MAX:
        raw = bytes(pick(columns.code_ids))
        present = [i for i in range(codes) if i in raw]  # `in` on bytes is a memchr
        if len(present) < codes:  # renumber the codes this batch uses from 0
            table = [table[i] for i in present]
            raw = raw.translate(bytes.maketrans(bytes(present), bytes(range(len(present)))))
        metric_index = array("B", raw)
    else:
        code_ids = pick(columns.code_ids)
        position = {old: new for new, old in enumerate(sorted(set(code_ids)))}
        table = [table[i] for i in position]
        metric_index = array(
            "B" if len(table) <= _METRIC_INDEX_B_MAX else "H",
            map(position.__getitem__, code_ids),
        )
    timestamps = None
    if columns.timestamps_us is not None:
        stamps = pick(columns.timestamps_us)
        if stamps.count(NO_TIMESTAMP) != n:
            timestamps = _signed64(stamps)
    operation_types = None
    if columns.operation_types is not None:
        operations = pick(columns.operation_types)
        if any(operations):
            operation_types = array("B", operations)
    properties = None
    if columns.properties is not None:
        mappings = tuple(pick(columns.properties))
        if mappings.count(None) != n:
            properties = mappings
    event_ids = None
    if columns.event_ids is not None:
        ids = tuple(pick(columns.event_ids))
        if ids.count(None) != n:
            event_ids = ids
    batch = EventBatch(
        metric_codes=tuple(table),
        metric_index=metric_index,
        account_ids=array("Q", pick(columns.account_ids)),
        values=_signed64(pick(columns.values)),
        timestamps=timestamps,
        operation_types=operation_types,
        properties=properties,
        event_ids=event_ids,
    )
    return Group(partition=partition, origin=indices, batch=batch)


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
            rejected.append((group.origin[batch_index], reason))
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
