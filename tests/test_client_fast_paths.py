"""The packing shortcuts against the paths they stand in for: metric codes of a numpy string
array numbered by whole-array compares, all-ASCII event ids measured in one pass, properties
present on every event read without asking, and per-partition facts standing in for a look at
each batch. Each either gives what the general path gives or leaves the input to it, and a bad
entry is named as ``ingest`` names it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.examples import examples
from unimeter import Event, InvalidRequestError, limits
from unimeter.client import arrays, columns
from unimeter.client import packed as packed_module
from unimeter.client.arrays import pack_arrays
from unimeter.client.batching import split_packed
from unimeter.client.cluster_map import Partitioner
from unimeter.client.columns import pack_events, to_lists

SETTINGS = settings(max_examples=examples(100), deadline=None)


def all_valid(events: list[Event]) -> bool:
    """Whether ``validate`` takes every event; if not, ``pack_events`` names one."""
    try:
        for event in events:
            event.validate()
    except ValueError:
        assert message_of(lambda: pack_events(events)).startswith("event ")
        return False
    return True


codes = st.sampled_from(["a", "b.c", "x:y-z", "m" * 64, "bad code", "", "é", "m" * 65])


def message_of(call: Any) -> str:
    with pytest.raises(InvalidRequestError) as info:
        call()
    return str(info.value)


@SETTINGS
@given(st.lists(st.one_of(codes, st.text("pqrstuvw", min_size=1, max_size=2)), min_size=1,
                max_size=40))  # fmt: skip
def test_a_string_array_of_codes_packs_as_the_list_of_them(metric_codes: list[str]) -> None:
    n = len(metric_codes)
    listed = dict(account_ids=list(range(n)), metric_codes=metric_codes, values=1)
    as_array = dict(listed, metric_codes=np.array(metric_codes, dtype=str))
    try:
        expected = to_lists(pack_arrays(**listed))
    except InvalidRequestError as exc:
        assert message_of(lambda: pack_arrays(**as_array)) == str(exc)
        return
    assert to_lists(pack_arrays(**as_array)) == expected


def test_codes_of_a_string_array_are_found_beyond_the_first_events() -> None:
    late = np.array(["b", "a"] * 1000 + ["c", "a"], dtype=str)  # "c" after the seed
    found = arrays._array_codes(late)
    assert found is not None
    table, index = found
    assert table == ("a", "b", "c") and index is not None
    assert index.tolist() == [1, 0] * 1000 + [2, 0]
    assert arrays._array_codes(np.array(["a"] * 2000 + ["not ok"], dtype=str)) is None
    assert arrays._array_codes(np.array(["one"] * 3, dtype=str)) == (("one",), None)
    many = [f"m{i}" for i in range(300)] * 2
    found = arrays._array_codes(np.array(many, dtype=str))
    assert found is not None and found[1] is not None and found[1].dtype == np.uint16
    assert [found[0][i] for i in found[1].tolist()] == many


ascii_ids = st.text("abc-0123456789", min_size=0, max_size=70)


@SETTINGS
@given(st.lists(st.one_of(ascii_ids, st.just("x" * 300), st.text(max_size=3)), min_size=1,
                max_size=30))  # fmt: skip
def test_ids_pack_as_validate_and_the_general_path_take_them(ids: list[str]) -> None:
    events = [Event(account_id=i, metric_code="m", event_id=e) for i, e in enumerate(ids)]
    if not all_valid(events):
        assert message_of(lambda: pack_events(events)) == message_of(
            lambda: pack_arrays(account_ids=list(range(len(ids))), metric_codes="m", values=1,
                                event_ids=ids)
        )  # fmt: skip
        return
    packed = pack_events(events)
    assert packed.event_ids() == ids
    general = columns.pack_lists(columns._each(events))
    assert packed.id_data == general.id_data and packed.id_width == general.id_width
    assert packed.id_offsets is not None and general.id_offsets is not None
    assert packed.id_offsets.tolist() == general.id_offsets.tolist()


keys = st.sampled_from(["region", "endpoint", "k"])
values = st.sampled_from(["eu", "us", "", "v" * 64, "v" * 65])


@SETTINGS
@given(st.lists(st.dictionaries(keys, values, max_size=3), min_size=1, max_size=30),
       st.integers(1, 9))  # fmt: skip
def test_properties_pack_as_the_general_path_packs_them(
    maps: list[dict[str, str]], partitions: int
) -> None:
    events = [Event(account_id=i, metric_code="m", properties=p) for i, p in enumerate(maps)]
    if not all_valid(events):
        return
    packed = pack_events(events)
    assert to_lists(packed) == to_lists(columns.pack_lists(columns._each(events)))
    # Batches of whole partitions (the facts) and of parts of them (looked at each) agree
    # with the per-event reference in tests/test_client_columns.py; here: with each other.
    route = Partitioner(partitions).many
    whole = split_packed(packed, route)
    assert sum(len(g.origin) for g in whole) == len(events)
    for group in whole:
        assert list(group.batch.properties or [None] * len(group.origin)) == [
            maps[i] or None for i in group.origin.tolist()
        ]


def test_an_event_with_too_many_properties_is_named() -> None:
    many = {f"k{i}": "v" for i in range(limits.properties_per_event_max + 1)}
    events = [Event(account_id=1, metric_code="m", properties=many)] * 2
    assert message_of(lambda: pack_events(events)).startswith("event 0: ")


def test_strided_columns_encode_as_their_contiguous_copies() -> None:
    accounts = np.arange(80, dtype=np.uint64)
    values = np.arange(80, dtype=np.int64)
    strided = pack_arrays(account_ids=accounts[::2], metric_codes="m", values=values[::2])
    copied = pack_arrays(
        account_ids=accounts[::2].copy(), metric_codes="m", values=values[::2].copy()
    )
    route = Partitioner(1).many
    assert [g.batch.raw for g in split_packed(strided, route)] == [
        g.batch.raw for g in split_packed(copied, route)
    ]


@SETTINGS
@given(st.integers(1, 64), st.integers(0, 40), st.randoms())
def test_ids_of_one_width_are_gathered_as_bytes_are(width: int, n: int, rnd: Any) -> None:
    data = bytes(rnd.getrandbits(8) for _ in range(width * n))
    order = np.array(rnd.sample(range(n), n), dtype=np.intp)
    expected = b"".join(data[i * width : (i + 1) * width] for i in order.tolist())
    assert packed_module.gather_rows(data, width, order) == expected
