"""``ingest_columns`` against ``ingest``: the same events given as columns, in any of the forms
the columnar entry point takes, make the same batches; a bad entry is refused with the message
``ingest`` gives for the same events, naming the same event."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from unittest.mock import ANY

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.examples import examples
from tests.test_client_columns import Index, exact_events, observed, with_field
from tests.test_client_unit_surface import closed_address
from unimeter import AsyncClient, Event, InvalidRequestError, OperationType, periods
from unimeter.client.arrays import pack_arrays
from unimeter.client.batching import build_groups, split_packed
from unimeter.client.cluster_map import Partitioner
from unimeter.client.columns import pack_events, to_lists

SETTINGS = settings(max_examples=examples(100), deadline=None)


def as_columns(events: list[Event], data: st.DataObject) -> dict[str, Any]:
    """The columns describing ``events``, each in one of the forms ``ingest_columns`` takes,
    drawn by ``data``."""
    n = len(events)
    draw = data.draw
    accounts = [e.account_id for e in events]
    account_form = draw(st.sampled_from(["list", "u64", "i64"]))
    if account_form == "i64" and max(accounts, default=0) >= 2**63:
        account_form = "u64"
    out: dict[str, Any] = {
        "account_ids": accounts
        if account_form == "list"
        else np.array(accounts, np.uint64 if account_form == "u64" else np.int64)
    }
    codes = [e.metric_code for e in events]
    forms = ["list", "str_array", "object_array"] + (["one"] if len(set(codes)) == 1 else [])
    form = draw(st.sampled_from(forms))
    out["metric_codes"] = {
        "list": lambda: codes,
        "str_array": lambda: np.array(codes, dtype=str),
        "object_array": lambda: np.array(codes, dtype=object),
        "one": lambda: codes[0],
    }[form]()
    values = [e.value for e in events]
    forms = ["list", "array"] + (["one"] if len(set(values)) == 1 else [])
    form = draw(st.sampled_from(forms))
    out["values"] = {
        "list": lambda: values,
        "array": lambda: np.array(values, np.int64),
        "one": lambda: values[0],
    }[form]()
    stamps = [e.timestamp for e in events]
    if any(t is not None for t in stamps):
        micros = [None if t is None else periods.to_us(t) for t in stamps]
        forms = ["datetimes", "micros", "datetime64"]
        if None not in micros:
            forms.append("int_array")
        form = draw(st.sampled_from(forms))
        out["timestamps"] = {
            "datetimes": lambda: stamps,
            "micros": lambda: micros,
            "datetime64": lambda: np.array(
                [np.datetime64("NaT") if t is None else np.datetime64(t, "us") for t in micros],
                "datetime64[us]",
            ),
            "int_array": lambda: np.array(micros, np.int64),
        }[form]()
    operations = [e.operation_type for e in events]
    if any(operations):
        forms = ["list", "array"] + (["one"] if len(set(operations)) == 1 else [])
        form = draw(st.sampled_from(forms))
        out["operation_types"] = {
            "list": lambda: operations,
            "array": lambda: np.array([int(o) for o in operations], np.uint8),
            "one": lambda: operations[0],
        }[form]()
    maps = [e.properties for e in events]
    if any(maps):
        if draw(st.booleans()):
            out["properties"] = [p or draw(st.sampled_from([None, {}])) for p in maps]
        else:
            keys = sorted({k for p in maps for k in p})
            out["properties"] = {k: [p.get(k) for p in maps] for k in keys}
    ids = [e.event_id for e in events]
    if any(i is not None for i in ids):
        out["event_ids"] = ids if draw(st.booleans()) else np.array(ids, dtype=object)
    assert all(len(c) == n for c in out.values() if isinstance(c, list | np.ndarray))
    return out


@SETTINGS
@given(st.lists(exact_events, max_size=40), st.data(), st.integers(1, 9), st.integers(1, 25))
def test_columns_make_the_batches_the_events_make(
    events: list[Event], data: st.DataObject, partitions: int, per_batch: int
) -> None:
    columns = as_columns(events, data)
    packed = pack_arrays(**columns)
    assert to_lists(packed) == to_lists(pack_events(events))
    route = Partitioner(partitions).many
    got = split_packed(packed, route, events_per_batch_max=per_batch)
    expected = build_groups(events, route, events_per_batch_max=per_batch)
    assert [observed(g) for g in got] == [observed(g) for g in expected]


def test_numpy_columns_of_other_integer_types_are_taken() -> None:
    packed = pack_arrays(
        account_ids=np.array([3, 4], np.int32),
        metric_codes=np.array(["a", "b"]),
        values=np.array([7, 2**64 - 1 >> 1], np.uint64),
        operation_types=np.array([1, 2], np.int64),
        timestamps=np.array(["2026-03-14T15:09:26.535897", "NaT"], "datetime64[ns]"),
    )
    assert to_lists(packed) == to_lists(
        pack_events(
            [
                Event(
                    account_id=3,
                    metric_code="a",
                    value=7,
                    operation_type=OperationType.ADD,
                    timestamp=datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC),
                ),
                Event(
                    account_id=4,
                    metric_code="b",
                    value=2**63 - 1,
                    operation_type=OperationType.REMOVE,
                ),
            ]
        )
    )


# --------------------------------------------------------------------------- bad input

# (field, a bad entry) that ``Event.validate`` refuses and a column refuses too. Not here: an
# int timestamp (microseconds, in a column) and None properties (none, in a column).
BAD: list[tuple[str, object]] = [
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
    ("metric_code", ["m"]),
    ("value", 2**63),
    ("value", -(2**63) - 1),
    ("value", False),
    ("value", 1.5),
    ("value", "5"),
    ("value", None),
    ("value", Index(5)),
    ("timestamp", datetime(2026, 1, 1)),
    ("timestamp", "2026-01-01T00:00:00Z"),
    ("timestamp", ANY),
    ("operation_type", 3),
    ("operation_type", -1),
    ("operation_type", "ADD"),
    ("operation_type", None),
    ("properties", []),
    ("properties", {"k": 1}),
    ("properties", {1: "v"}),
    ("properties", {f"k{i}": "v" for i in range(17)}),
    ("properties", {"": "v"}),
    ("properties", {"k" * 33: "v"}),
    ("properties", {"k": "é" * 33}),
    ("properties", {"k": "\ud800"}),
    ("properties", ANY),
    ("event_id", ""),
    ("event_id", 5),
    ("event_id", "x" * 65),
    ("event_id", "é" * 33),
    ("event_id", ANY),
]
COLUMN = {
    "account_id": "account_ids",
    "metric_code": "metric_codes",
    "value": "values",
    "timestamp": "timestamps",
    "operation_type": "operation_types",
    "properties": "properties",
    "event_id": "event_ids",
}


def plain_columns(events: list[Any]) -> dict[str, Any]:
    """Every field of ``events`` as a list (bad entries included)."""
    return {COLUMN[field]: [getattr(e, field) for e in events] for field in COLUMN}


def message_of(check: Any) -> str:
    with pytest.raises(InvalidRequestError) as info:
        check()
    return str(info.value)


@SETTINGS
@given(
    st.lists(exact_events, min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 7), st.sampled_from(BAD)), min_size=1, max_size=3),
)
def test_a_bad_entry_is_named_as_ingest_names_it(
    events: list[Event], faults: list[tuple[int, tuple[str, object]]]
) -> None:
    bad: list[Any] = list(events)
    for position, (field, value) in faults:
        i = position % len(bad)
        broken = with_field(field, value)
        for other in COLUMN:  # the event's other fields stay as they were
            if other != field:
                object.__setattr__(broken, other, getattr(bad[i], other))
        bad[i] = broken
    expected = message_of(lambda: pack_events(bad))
    assert expected.startswith("event ")
    assert message_of(lambda: pack_arrays(**plain_columns(bad))) == expected


def test_columns_of_the_wrong_length_or_shape_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="values has 1 entries, account_ids has 2"):
        pack_arrays(account_ids=[1, 2], metric_codes="m", values=[1])
    with pytest.raises(InvalidRequestError, match="event_ids has 3 entries"):
        pack_arrays(account_ids=[1, 2], metric_codes="m", values=1, event_ids=["a", "b", "c"])
    with pytest.raises(InvalidRequestError, match=r"properties\['k'\] has 1 entries"):
        pack_arrays(account_ids=[1, 2], metric_codes="m", values=1, properties={"k": ["v"]})
    with pytest.raises(InvalidRequestError, match="one-dimensional"):
        pack_arrays(account_ids=np.zeros((2, 2), np.uint64), metric_codes="m", values=1)
    with pytest.raises(InvalidRequestError, match="account_ids must be a sequence"):
        pack_arrays(account_ids=5, metric_codes="m", values=1)
    with pytest.raises(InvalidRequestError, match=r"^event 0: metric code"):
        pack_arrays(account_ids=[1, 2], metric_codes="bad code", values=1)
    with pytest.raises(InvalidRequestError, match=r"^event 0: value must be an integer"):
        pack_arrays(account_ids=[1, 2], metric_codes="m", values=2.5)


def test_out_of_range_columns_name_their_first_bad_entry() -> None:
    with pytest.raises(
        InvalidRequestError, match=r"^event 2: account_id must be in \[0, 2\*\*64\)"
    ):
        pack_arrays(account_ids=np.array([1, 2, -3, -4]), metric_codes="m", values=1)
    with pytest.raises(InvalidRequestError, match=r"^event 1: value 9223372036854775808 does"):
        pack_arrays(account_ids=[1, 2], metric_codes="m", values=np.array([1, 2**63], np.uint64))
    with pytest.raises(InvalidRequestError, match=r"^event 1: 7 is not a valid OperationType"):
        pack_arrays(
            account_ids=[1, 2], metric_codes="m", values=1, operation_types=np.array([1, 7])
        )
    with pytest.raises(InvalidRequestError, match=r"^event 1: timestamp .* outside the years"):
        pack_arrays(account_ids=[1, 2], metric_codes="m", values=1, timestamps=[0, 2**62])
    with pytest.raises(InvalidRequestError, match=r"^event 3: an event has at most 16"):
        pack_arrays(
            account_ids=[1, 2, 3, 4],
            metric_codes="m",
            values=1,
            properties={f"k{i}": [None, None, None, "v"] for i in range(17)},
        )


async def test_bad_columns_fail_before_anything_is_sent() -> None:
    # The seed refuses connections: reaching the network would raise UnavailableError.
    client = AsyncClient([closed_address()], request_timeout=2)
    with pytest.raises(InvalidRequestError, match=r"^event 1: event_id"):
        await client.ingest_columns(
            account_ids=[1, 2], metric_codes="m", values=[1, 2], event_ids=["a", ""]
        )
    empty = await client.ingest_columns(account_ids=[], metric_codes="m", values=[])
    assert (empty.n_stored, empty.rejected) == (0, [])
    with pytest.raises(InvalidRequestError, match="delivery"):
        await client.ingest_columns(
            account_ids=[1],
            metric_codes="m",
            values=1,
            delivery=9,  # type: ignore[arg-type]
        )
    await client.close()
