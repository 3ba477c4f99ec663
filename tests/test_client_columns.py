"""The bulk checks and the column-at-a-time batching of ``client.ingest``, against the rules
(``Event.validate``) and against a straightforward per-event reference batcher."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any
from unittest.mock import ANY

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.examples import examples
from tests.wire_cases import typecode
from unimeter import Event, InvalidRequestError, OperationType, limits, periods
from unimeter.client import batching, columns
from unimeter.client.batching import Group, build_groups
from unimeter.client.cluster_map import Partitioner
from unimeter.routing import partition_of
from unimeter.wire.messages import NO_TIMESTAMP

SETTINGS = settings(max_examples=examples(100), deadline=None)
T0 = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)
GOOD = Event(account_id=1, metric_code="m")


class Index:
    """An integer-like object that is not an int (numpy's integers are like this)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


class Level(enum.IntEnum):
    LOW = 3


# --------------------------------------------------------------------------- bad input


BAD_FIELDS: list[tuple[str, object]] = [
    ("account_id", -1),
    ("account_id", 2**64),
    ("account_id", True),
    ("account_id", 1.0),
    ("account_id", "1"),
    ("account_id", None),
    ("account_id", Index(1)),
    ("metric_code", ""),
    ("metric_code", "no spaces"),
    ("metric_code", "x" * 65),
    ("metric_code", 5),
    ("metric_code", None),
    ("metric_code", ["m"]),  # unhashable
    ("value", 2**63),
    ("value", -(2**63) - 1),
    ("value", False),
    ("value", 1.5),
    ("value", "5"),
    ("value", None),
    ("value", Index(5)),
    ("timestamp", datetime(2026, 1, 1)),
    ("timestamp", date(2026, 1, 1)),
    ("timestamp", 0),
    ("timestamp", "2026-01-01T00:00:00Z"),
    ("operation_type", 3),
    ("operation_type", -1),
    ("operation_type", "ADD"),
    ("operation_type", None),
    ("properties", None),
    ("properties", []),
    ("properties", [("k", "v")]),
    ("properties", {"k": 1}),
    ("properties", {1: "v"}),
    ("properties", {f"k{i}": "v" for i in range(limits.properties_per_event_max + 1)}),
    ("properties", {"": "v"}),
    ("properties", {"k" * 33: "v"}),
    ("properties", {"é" * 17: "v"}),  # 34 bytes
    ("properties", {"k": "v" * 65}),
    ("properties", {"k": "é" * 33}),  # 66 bytes
    ("properties", {"k": "\ud800"}),  # a lone surrogate cannot be encoded
    ("event_id", ""),
    ("event_id", 5),
    ("event_id", "x" * 65),
    ("event_id", "é" * 33),
    # Objects that claim to equal anything must not pass for a default.
    ("timestamp", ANY),
    ("event_id", ANY),
    ("properties", ANY),
]


def with_field(name: str, value: object) -> Event:
    event = Event(account_id=7, metric_code="m")
    object.__setattr__(event, name, value)  # past the type checker, as a caller could
    return event


@pytest.mark.parametrize(("name", "value"), BAD_FIELDS)
def test_each_bad_field_is_refused_with_the_validators_message(name: str, value: object) -> None:
    bad = with_field(name, value)
    with pytest.raises(ValueError) as reference:
        bad.validate()
    expected = f"event 3: {reference.value}"
    events: list[Any] = [GOOD, with_field("value", 3), GOOD, bad, GOOD]
    for check in (
        lambda: build_groups(events, Partitioner(8).many),
        lambda: batching.validate_events(events),
        lambda: columns.columns_of(events),
    ):
        with pytest.raises(InvalidRequestError) as info:
            check()
        assert str(info.value) == expected


@pytest.mark.parametrize(
    "bad", [{"account_id": 1, "metric_code": "m"}, None, (1, "m", 1), GOOD.__class__]
)
def test_what_is_not_an_event_is_refused(bad: object) -> None:
    events: list[Any] = [GOOD, bad]
    with pytest.raises(InvalidRequestError, match=r"^event 1: expected an Event, got "):
        build_groups(events, Partitioner(8).many)
    with pytest.raises(InvalidRequestError, match=r"^event 1: expected an Event, got "):
        batching.validate_events(events)


def test_the_first_bad_event_is_named_whatever_kinds_of_fault_follow() -> None:
    events = [
        GOOD,
        with_field("value", 2**63),  # found only by a range check
        with_field("metric_code", "bad code"),  # found by the code check
        with_field("account_id", True),  # found by the type check
    ]
    for check in (
        lambda: build_groups(events, Partitioner(4).many),
        lambda: columns.columns_of(events),
    ):
        with pytest.raises(InvalidRequestError, match=r"^event 1: value 9223372036854775808"):
            check()


def test_valid_events_of_unusual_types_are_taken_as_validate_takes_them() -> None:
    class Subclassed(Event):
        __slots__ = ()

    events = [
        Event(account_id=Level.LOW, metric_code="m", value=Level.LOW),
        Event(account_id=4, metric_code="m", operation_type=2),  # type: ignore[arg-type]
        Event(account_id=4, metric_code="m", properties=MappingProxyType({"k": "v"})),
        Subclassed(account_id=4, metric_code="m", value=9),
        Event(
            account_id=4, metric_code="m", timestamp=T0.astimezone(timezone(timedelta(hours=-3)))
        ),
    ]
    [group] = build_groups(events, Partitioner(1).many)
    batch = group.batch
    assert list(batch.account_ids) == [3, 4, 4, 4, 4]
    assert list(batch.values) == [3, 1, 1, 9, 1]
    assert batch.operation_types is not None and list(batch.operation_types) == [0, 2, 0, 0, 0]
    assert batch.properties == (None, None, {"k": "v"}, None, None)
    assert type(batch.properties[2]) is dict
    assert batch.timestamps is not None
    assert list(batch.timestamps) == [NO_TIMESTAMP] * 4 + [periods.to_us(T0)]


# --------------------------------------------------------------------------- the reference


def reference_groups(
    events: list[Event], partitions: int, per_batch: int
) -> list[tuple[int, list[int], dict[str, Any]]]:
    """Per-event batching, written the obvious way: (partition, origin, columns) per batch."""
    by_partition: dict[int, list[int]] = {}
    for index, event in enumerate(events):
        event.validate()
        by_partition.setdefault(partition_of(event.account_id, partitions), []).append(index)
    out = []
    for partition in sorted(by_partition):
        indices = by_partition[partition]
        for start in range(0, len(indices), per_batch):
            chunk = indices[start : start + per_batch]
            chosen = [events[i] for i in chunk]
            table = sorted({e.metric_code for e in chosen})
            stamps = [e.timestamp for e in chosen]
            operations = [int(OperationType(e.operation_type)) for e in chosen]
            ids = [e.event_id for e in chosen]
            out.append(
                (
                    partition,
                    chunk,
                    {
                        "metric_codes": tuple(table),
                        "metric_index": (
                            "B" if len(table) <= 256 else "H",
                            [table.index(e.metric_code) for e in chosen],
                        ),
                        "account_ids": ("Q", [e.account_id for e in chosen]),
                        "values": ("q", [e.value for e in chosen]),
                        "timestamps": None
                        if all(t is None for t in stamps)
                        else (
                            "q",
                            [NO_TIMESTAMP if t is None else periods.to_us(t) for t in stamps],
                        ),
                        "operation_types": ("B", operations) if any(operations) else None,
                        "properties": tuple(dict(e.properties) or None for e in chosen)
                        if any(e.properties for e in chosen)
                        else None,
                        "event_ids": tuple(ids) if any(i is not None for i in ids) else None,
                    },
                )
            )
    return out


def observed(group: Group) -> tuple[int, list[int], dict[str, Any]]:
    b = group.batch

    def typed(column: Any) -> tuple[str, list[int]] | None:
        return None if column is None else (typecode(column), column.tolist())

    return (
        group.partition,
        list(group.origin),
        {
            "metric_codes": b.metric_codes,
            "metric_index": typed(b.metric_index),
            "account_ids": typed(b.account_ids),
            "values": typed(b.values),
            "timestamps": typed(b.timestamps),
            "operation_types": typed(b.operation_types),
            "properties": b.properties,
            "event_ids": b.event_ids,
        },
    )


zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
keys = st.one_of(st.text(min_size=1, max_size=8), st.text("kz", min_size=9, max_size=32))
texts = st.one_of(st.text(max_size=16), st.text("vé", min_size=17, max_size=32))
properties: st.SearchStrategy[Mapping[str, str]] = st.one_of(
    st.just({}),
    st.dictionaries(keys, texts, max_size=limits.properties_per_event_max),
    st.dictionaries(keys, texts, min_size=1, max_size=2).map(MappingProxyType),
)
exact_events = st.builds(
    Event,
    account_id=st.one_of(st.integers(0, 30), st.integers(0, limits.account_id_max)),
    metric_code=st.sampled_from(["api_calls", "compute", "seats", "x.y:z-1", "m" * 64]),
    value=st.integers(limits.value_min, limits.value_max),
    timestamp=st.none() | st.datetimes(timezones=zones),
    operation_type=st.sampled_from(OperationType),
    properties=st.one_of(
        st.just({}), st.dictionaries(keys, texts, max_size=limits.properties_per_event_max)
    ),
    event_id=st.none() | st.text(min_size=1, max_size=16) | st.text("ié", min_size=17, max_size=32),
)
# Valid, but of types the bulk checks leave to ``validate``: int subclasses, plain ints for
# operation types, mappings that are not dicts.
unusual_events = st.builds(
    Event,
    account_id=st.just(Level.LOW),
    metric_code=st.just("api_calls"),
    value=st.just(Level.LOW),
    operation_type=st.sampled_from([0, 1, 2]),
    properties=properties,
)
valid_events = st.one_of(exact_events, exact_events, unusual_events)


@SETTINGS
@given(st.lists(exact_events, max_size=30))
def test_valid_events_of_exact_types_take_the_bulk_path(events: list[Event]) -> None:
    columns._bulk(events)  # raises _Unsure when it would fall back


@SETTINGS
@given(
    st.one_of(
        st.lists(valid_events, max_size=40),
        # Mostly plain events: the bulk path's common case, with a few optional fields set.
        st.lists(
            st.builds(Event, account_id=st.integers(0, 50), metric_code=st.just("api_calls")),
            max_size=40,
        ).flatmap(lambda plain: st.lists(valid_events, max_size=3).map(lambda odd: plain + odd)),
    ),
    st.integers(1, 9),
    st.integers(1, 25),
)
def test_batching_matches_the_per_event_reference(
    events: list[Event], partitions: int, per_batch: int
) -> None:
    groups = build_groups(events, Partitioner(partitions).many, events_per_batch_max=per_batch)
    assert [observed(g) for g in groups] == reference_groups(events, partitions, per_batch)


def test_batching_matches_the_reference_past_256_codes() -> None:
    events = [Event(account_id=i % 7, metric_code=f"m{i % 300}", value=i) for i in range(900)]
    groups = build_groups(events, Partitioner(3).many)
    assert [observed(g) for g in groups] == reference_groups(events, 3, limits.events_per_batch_max)


# --------------------------------------------------------------------------- routing


@SETTINGS
@given(st.lists(st.integers(0, limits.account_id_max), max_size=50), st.integers(1, 64))
def test_partitioner_routes_as_the_documented_mix(accounts: list[int], partitions: int) -> None:
    route = Partitioner(partitions, size_max=16)  # small: the memory is dropped and rebuilt
    expected = [partition_of(a, partitions) for a in accounts]
    assert route.many(np.array(accounts, np.uint64)).tolist() == expected
    assert [route(a) for a in accounts] == expected
    assert [route(a) for a in accounts] == expected
    assert len(route._memo) <= max(16, len(set(accounts)))
