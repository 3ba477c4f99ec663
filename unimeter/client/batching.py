"""The caller's list of events -> per-partition columnar batches, and the replies -> one result.

Theory of operation: ``build_groups`` walks the events once. Each event is validated (every
event is checked before anything is sent, so a bad event fails the whole call locally) and
appended to the open chunk of its partition. A chunk closes when it reaches the events-per-batch
limit or a conservative estimate of its encoded size reaches half a frame, so a large ingest
becomes several ``Ingest`` messages, each with its own sequence number. ``Group.origin`` maps
an event's position in its batch back to its index in the caller's list, which is how
``merge_results`` reports rejections in the caller's terms.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from unimeter import limits, periods
from unimeter.errors import InvalidRequestError, ProtocolError
from unimeter.model import Event, IngestResult, OperationType
from unimeter.wire.messages import NO_TIMESTAMP, EventBatch, IngestReply

# Upper bounds of an event's encoded size, used to keep a chunk well under a frame. They are
# bounds, not measurements: checking a length is cheap, encoding to measure is not.
_EVENT_FIXED_BYTES = 48  # numeric columns, list and map headers
_PROPERTY_BYTES = limits.property_key_bytes_max + limits.property_value_bytes_max + 8
_EVENT_ID_BYTES = limits.event_id_bytes_max + 8
_CODE_BYTES = limits.metric_code_bytes_max + 8
_METRIC_INDEX_B_MAX = 256  # an 'B' index column addresses at most 256 codes


@dataclass(frozen=True, slots=True)
class Group:
    """One ``Ingest`` message worth of events, all of one partition."""

    partition: int
    origin: array[int]  # origin[i]: index in the caller's list of the batch's event i
    batch: EventBatch


def validate_events(events: Sequence[object]) -> None:
    """Raise ``InvalidRequestError`` naming the index and problem of the first bad event."""
    for index, event in enumerate(events):
        _validate_one(index, event)


def _validate_one(index: int, event: object) -> None:
    if not isinstance(event, Event):
        raise InvalidRequestError(f"event {index}: expected an Event, got {type(event).__name__}")
    try:
        event.validate()
    except ValueError as exc:
        raise InvalidRequestError(f"event {index}: {exc}") from None


class _Chunk:
    """Columns under construction for one partition."""

    __slots__ = (
        "account_ids",
        "bytes_estimate",
        "codes",
        "event_ids",
        "has_event_id",
        "has_operation",
        "has_properties",
        "has_timestamp",
        "metric_index",
        "operation_types",
        "origin",
        "partition",
        "properties",
        "timestamps",
        "values",
    )

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.origin: array[int] = array("Q")
        self.codes: dict[str, int] = {}
        self.metric_index: list[int] = []
        self.account_ids: array[int] = array("Q")
        self.values: array[int] = array("q")
        self.timestamps: array[int] = array("q")
        self.operation_types: array[int] = array("B")
        self.properties: list[dict[str, str] | None] = []
        self.event_ids: list[str | None] = []
        self.has_timestamp = False
        self.has_operation = False
        self.has_properties = False
        self.has_event_id = False
        self.bytes_estimate = 0

    def add(self, index: int, event: Event) -> None:
        code_index = self.codes.get(event.metric_code)
        if code_index is None:
            code_index = self.codes[event.metric_code] = len(self.codes)
            self.bytes_estimate += _CODE_BYTES
        self.bytes_estimate += _EVENT_FIXED_BYTES
        self.origin.append(index)
        self.metric_index.append(code_index)
        self.account_ids.append(event.account_id)
        self.values.append(event.value)
        if event.timestamp is None:
            self.timestamps.append(NO_TIMESTAMP)
        else:
            self.timestamps.append(periods.to_us(event.timestamp))
            self.has_timestamp = True
        operation = int(event.operation_type)
        self.operation_types.append(operation)
        if operation != OperationType.NONE:
            self.has_operation = True
        if event.properties:
            self.properties.append(dict(event.properties))
            self.has_properties = True
            self.bytes_estimate += _PROPERTY_BYTES * len(event.properties)
        else:
            self.properties.append(None)
        self.event_ids.append(event.event_id)
        if event.event_id is not None:
            self.has_event_id = True
            self.bytes_estimate += _EVENT_ID_BYTES

    def __len__(self) -> int:
        return len(self.account_ids)

    def finish(self) -> Group:
        typecode = "B" if len(self.codes) <= _METRIC_INDEX_B_MAX else "H"
        batch = EventBatch(
            metric_codes=tuple(self.codes),
            metric_index=array(typecode, self.metric_index),
            account_ids=self.account_ids,
            values=self.values,
            timestamps=self.timestamps if self.has_timestamp else None,
            operation_types=self.operation_types if self.has_operation else None,
            properties=tuple(self.properties) if self.has_properties else None,
            event_ids=tuple(self.event_ids) if self.has_event_id else None,
        )
        return Group(partition=self.partition, origin=self.origin, batch=batch)


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
    bytes_budget = frame_bytes_max // 2
    open_chunks: dict[int, _Chunk] = {}
    done: list[_Chunk] = []
    for index, event in enumerate(events):
        _validate_one(index, event)
        partition = partition_of(event.account_id)
        chunk = open_chunks.get(partition)
        if chunk is None:
            chunk = open_chunks[partition] = _Chunk(partition)
        chunk.add(index, event)
        if len(chunk) >= events_per_batch_max or chunk.bytes_estimate >= bytes_budget:
            done.append(chunk)
            del open_chunks[partition]
    done.extend(open_chunks.values())
    done.sort(key=lambda c: (c.partition, c.origin[0]))
    return [chunk.finish() for chunk in done]


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
