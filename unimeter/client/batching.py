"""The caller's list of events -> per-partition columnar batches, and the replies -> one result.

Theory of operation: ``build_groups`` walks the events once, validating each (every event is
checked before anything is sent, so a bad event fails the whole call locally) and noting its
index under its partition. Then each partition's events become columns, one list
comprehension per column. A partition's events are split into several batches (each its own
``Ingest`` with its own sequence number) when they exceed the events-per-batch limit or a
conservative estimate of their encoded size exceeds half a frame. ``Group.origin`` maps an
event's position in its batch back to its index in the caller's list, which is how
``merge_results`` reports rejections in the caller's terms.

``Event.validate`` is the one authority on what is valid. Calling it costs microseconds per
event, so ``_surely_valid`` first tries a cheaper test that only ever *accepts* events
``validate`` accepts too (exact types, and character counts that cannot exceed the byte limits
even at 4 UTF-8 bytes per character); anything it is unsure of goes to ``validate``.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from unimeter import limits, periods
from unimeter.errors import InvalidRequestError, ProtocolError
from unimeter.model import Event, IngestResult, OperationType
from unimeter.wire.messages import NO_TIMESTAMP, EventBatch, IngestReply

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

# Character counts that fit the byte limits whatever the characters (UTF-8: <= 4 bytes each).
_UTF8_BYTES_PER_CHAR_MAX = 4
_EVENT_ID_CHARS_SURE = limits.event_id_bytes_max // _UTF8_BYTES_PER_CHAR_MAX
_KEY_CHARS_SURE = limits.property_key_bytes_max // _UTF8_BYTES_PER_CHAR_MAX
_VALUE_CHARS_SURE = limits.property_value_bytes_max // _UTF8_BYTES_PER_CHAR_MAX
_ACCOUNT_ID_MAX = limits.account_id_max
_VALUE_MIN, _VALUE_MAX = limits.value_min, limits.value_max
_PROPERTIES_MAX = limits.properties_per_event_max


@dataclass(frozen=True, slots=True)
class Group:
    """One ``Ingest`` message worth of events, all of one partition."""

    partition: int
    origin: array[int]  # origin[i]: index in the caller's list of the batch's event i
    batch: EventBatch


def validate_events(events: Sequence[object]) -> None:
    """Raise ``InvalidRequestError`` naming the index and problem of the first bad event."""
    valid_codes: set[str] = set()
    for index, event in enumerate(events):
        if not _surely_valid(event, valid_codes):
            _validate_one(index, event, valid_codes)


def _validate_one(index: int, event: object, valid_codes: set[str]) -> None:
    if not isinstance(event, Event):
        raise InvalidRequestError(f"event {index}: expected an Event, got {type(event).__name__}")
    try:
        event.validate()
    except ValueError as exc:
        raise InvalidRequestError(f"event {index}: {exc}") from None
    valid_codes.add(event.metric_code)


def _surely_valid(event: object, valid_codes: set[str]) -> bool:
    """True only if ``Event.validate`` certainly accepts ``event``; False means "ask it".
    ``valid_codes`` holds metric codes ``validate`` already accepted."""
    if type(event) is not Event:
        return False
    account_id, value = event.account_id, event.value
    if type(account_id) is not int or not 0 <= account_id <= _ACCOUNT_ID_MAX:
        return False
    if type(value) is not int or not _VALUE_MIN <= value <= _VALUE_MAX:
        return False
    if event.metric_code not in valid_codes:
        return False
    timestamp = event.timestamp
    if timestamp is not None and (type(timestamp) is not datetime or timestamp.tzinfo is None):
        return False
    if type(event.operation_type) is not OperationType:
        return False
    event_id = event.event_id
    if event_id is not None and (
        type(event_id) is not str or not 0 < len(event_id) <= _EVENT_ID_CHARS_SURE
    ):
        return False
    properties = event.properties
    if type(properties) is not dict or len(properties) > _PROPERTIES_MAX:
        return False
    for key, text in properties.items():
        if (
            type(key) is not str
            or type(text) is not str
            or not 0 < len(key) <= _KEY_CHARS_SURE
            or len(text) > _VALUE_CHARS_SURE
        ):
            return False
    return True


def build_groups(
    events: Sequence[Event],
    partition_of: Callable[[int], int],
    *,
    events_per_batch_max: int = limits.events_per_batch_max,
    frame_bytes_max: int = limits.frame_bytes_max,
) -> list[Group]:
    """Validate every event, then split them into per-partition batches.

    Groups come out ordered by partition, then by the position of their first event, so the
    order (and so the sequence numbers they receive) is deterministic for a given input.
    """
    assert events_per_batch_max >= 1
    valid_codes: set[str] = set()
    by_partition: dict[int, list[int]] = {}
    for index, event in enumerate(events):
        if not _surely_valid(event, valid_codes):
            _validate_one(index, event, valid_codes)
        partition = partition_of(event.account_id)
        indices = by_partition.get(partition)
        if indices is None:
            by_partition[partition] = [index]
        else:
            indices.append(index)
    bytes_budget = frame_bytes_max // 2
    return [
        _group(partition, events, chunk)
        for partition in sorted(by_partition)
        for chunk in _chunks(events, by_partition[partition], events_per_batch_max, bytes_budget)
    ]


def _chunks(
    events: Sequence[Event], indices: list[int], count_max: int, bytes_budget: int
) -> Iterator[list[int]]:
    if len(indices) <= count_max and len(indices) * _EVENT_BYTES_WORST <= bytes_budget:
        yield indices  # the common case: no event needs a closer look
        return
    chunk: list[int] = []
    size = 0
    codes: set[str] = set()
    for index in indices:
        event = events[index]
        cost = _EVENT_FIXED_BYTES + _PROPERTY_BYTES * len(event.properties)
        if event.event_id is not None:
            cost += _EVENT_ID_BYTES
        new_code = event.metric_code not in codes
        if chunk and (
            len(chunk) >= count_max or size + cost + new_code * _CODE_BYTES > bytes_budget
        ):
            yield chunk
            chunk, size, codes, new_code = [], 0, set(), True
        chunk.append(index)
        size += cost + new_code * _CODE_BYTES
        codes.add(event.metric_code)
    if chunk:
        yield chunk


def _group(partition: int, events: Sequence[Event], indices: list[int]) -> Group:
    chosen = [events[i] for i in indices]
    codes: dict[str, int] = {}
    metric_index = [codes.setdefault(e.metric_code, len(codes)) for e in chosen]
    stamps = [e.timestamp for e in chosen]
    operations = [e.operation_type for e in chosen]
    properties = [e.properties for e in chosen]
    event_ids = [e.event_id for e in chosen]
    batch = EventBatch(
        metric_codes=tuple(codes),
        metric_index=array("B" if len(codes) <= _METRIC_INDEX_B_MAX else "H", metric_index),
        account_ids=array("Q", [e.account_id for e in chosen]),
        values=array("q", [e.value for e in chosen]),
        timestamps=(
            array("q", [NO_TIMESTAMP if t is None else periods.to_us(t) for t in stamps])
            if any(t is not None for t in stamps)
            else None
        ),
        operation_types=array("B", operations) if any(operations) else None,
        properties=(tuple(dict(p) if p else None for p in properties) if any(properties) else None),
        event_ids=tuple(event_ids) if any(i is not None for i in event_ids) else None,
    )
    return Group(partition=partition, origin=array("Q", indices), batch=batch)


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
