"""The HTTP ingest fast path (``json_columns``) against its oracle: one ``Event`` per object.

Whatever the JSON, the fast path either declines (None) or gives exactly the columns the
``Event`` path gives; and it never accepts a body the ``Event`` path refuses.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from unimeter.client.columns import columns_of
from unimeter.errors import InvalidRequestError
from unimeter.json_model import event_from_json
from unimeter.server.http.json_columns import json_columns

# Valid spellings of each field (the fast path must take them all)...
_GOOD: dict[str, st.SearchStrategy[Any]] = {
    "value": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "timestamp": st.sampled_from(["2025-03-01T12:00:00Z", "2025-03-01T12:00:00.5+02:00"]),
    "operation_type": st.sampled_from(["none", "add", "remove", "ADD", 0, 1, 2]),
    "properties": st.dictionaries(
        st.sampled_from(["region", "provider", "é"]), st.text(max_size=20), max_size=3
    ),
    "event_id": st.text(min_size=1, max_size=20),
    "offset": st.integers(),
}
# ... and what may go wrong with each (the Event path refuses, or reads differently).
_BAD: dict[str, st.SearchStrategy[Any]] = {
    "account_id": st.sampled_from([-1, 2**64, True, "42", 1.0, None]),
    "metric_code": st.sampled_from(["", "bad code", "x" * 65, 7, None]),
    "value": st.sampled_from([2**63, -(2**63) - 1, 1.5, True, "1", None]),
    "timestamp": st.sampled_from(["2025-03-01", "2025-03-01T12:00:00", "yesterday", 17]),
    "operation_type": st.sampled_from(["Add", 3, True, "x", None]),
    "properties": st.one_of(
        st.sampled_from([[], "x", 0, {"": "v"}, {"k" * 33: "v"}, {"k": "v" * 65}, {"k": 1}]),
        st.dictionaries(st.text(min_size=1, max_size=3), st.just("v"), min_size=17, max_size=18),
    ),
    "event_id": st.sampled_from(["", "x" * 65, 5, "\ud800"]),
    "metric": st.just("typo"),  # an unknown field
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "account_id": draw(st.integers(min_value=0, max_value=2**64 - 1)),
        "metric_code": draw(st.sampled_from(["api_calls", "seats", "a.b:c-d"])),
    }
    for name in draw(st.lists(st.sampled_from(sorted(_GOOD)), unique=True, max_size=4)):
        event[name] = draw(_GOOD[name])
    if draw(st.booleans()):  # one field of every other event goes wrong
        name = draw(st.sampled_from(sorted(_BAD)))
        bad = draw(_BAD[name])
        if bad is None:
            event.pop(name, None)
        else:
            event[name] = bad
    return event


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(events(), st.just([1])), min_size=1, max_size=3))
def test_fast_path_agrees_with_the_event_path(items: list[Any]) -> None:
    try:
        expected = columns_of([event_from_json(item, i) for i, item in enumerate(items)])
    except InvalidRequestError:
        expected = None
    fast = json_columns(items)
    if fast is not None:
        assert expected is not None, "the fast path accepted a body the Event path refuses"
        assert fast == expected


def test_plain_and_full_bodies_take_the_fast_path() -> None:
    plain = [{"account_id": a, "metric_code": "m", "value": a} for a in range(10)]
    assert json_columns(plain) == columns_of([event_from_json(e, i) for i, e in enumerate(plain)])
    full = [
        {"account_id": 1, "metric_code": "seats", "value": 3, "operation_type": "add",
         "timestamp": "2025-03-01T12:00:00Z", "properties": {"region": "eu"}, "event_id": "e1"},
        {"account_id": 2, "metric_code": "calls"},
    ]  # fmt: skip
    fast = json_columns(full)
    assert fast is not None
    assert fast == columns_of([event_from_json(e, i) for i, e in enumerate(full)])
