"""The aggregate row store's memory-saving shapes: a threshold-level column made only when a
row needs one, zero columns not copied while untouched, and the 32-bit lookup tables."""

from __future__ import annotations

import numpy as np

from unimeter.state.aggregates import RowCache, Tables
from unimeter.state.rows import INT64_MAX, RowStore

I64 = np.dtype("<i8")


def test_levels_read_int64_max_until_a_row_needs_one() -> None:
    rows = RowStore(capacity=4)
    rows.allocate(3)
    assert "next_level" not in rows.cols
    assert rows.levels(np.array([0, 2])).tolist() == [INT64_MAX, INT64_MAX]
    assert rows.column("next_level").tolist() == [INT64_MAX] * 3
    rows.set_level(1, INT64_MAX)  # nothing to remember: still no column
    assert "next_level" not in rows.cols
    rows.set_level(1, 50)
    assert rows.levels(np.array([0, 1, 2])).tolist() == [INT64_MAX, 50, INT64_MAX]


def test_allocate_with_levels_makes_the_column_and_keeps_it_through_growth() -> None:
    rows = RowStore(capacity=2)
    rows.allocate(2)
    rows.allocate(3, np.array([INT64_MAX, 7, INT64_MAX], I64))  # grows past the capacity
    assert rows.levels(np.arange(5)).tolist() == [INT64_MAX, INT64_MAX, INT64_MAX, 7, INT64_MAX]
    rows.allocate(4)  # once made, new rows get INT64_MAX written
    assert rows.column("next_level").tolist()[5:] == [INT64_MAX] * 4


def test_load_column_makes_the_level_column_only_when_a_level_is_set() -> None:
    rows = RowStore(capacity=3)
    rows.size = 3
    rows.load_column("next_level", np.full(3, INT64_MAX, I64))
    assert "next_level" not in rows.cols
    rows.load_column("next_level", np.array([INT64_MAX, 4, 9], I64))
    assert rows.column("next_level").tolist() == [INT64_MAX, 4, 9]
    rows.load_column("count", np.array([1, 2, 3], I64))
    assert rows.column("count").tolist() == [1, 2, 3]


def test_growth_keeps_zero_columns_whether_or_not_any_row_wrote_them() -> None:
    rows = RowStore(capacity=2)
    ids = rows.allocate(2)
    values = np.array([5, -(2**40)], I64)  # the second needs a high limb
    rows.accumulate(ids, values, np.array([10, 11], I64), np.array([0, 1], I64))
    assert rows.sum_hi[:2].any()
    rows.allocate(10)  # grows: sum_hi is copied (it holds non-zero limbs), count too
    assert [rows.total_sum(0), rows.total_sum(1)] == [5, -(2**40)]
    assert rows.count[:12].tolist() == [1, 1] + [0] * 10
    fresh = RowStore(capacity=2)
    ids = fresh.allocate(2)
    fresh.accumulate(ids, np.array([3, 4], I64), np.array([1, 1], I64), np.array([0, 1], I64))
    fresh.allocate(10)  # sum_hi never written: not copied, still all zero
    assert not fresh.sum_hi[:12].any()
    assert [fresh.total_sum(0), fresh.total_sum(1)] == [3, 4]


def test_row_cache_hands_back_int64_rows_and_skips_rows_beyond_32_bits() -> None:
    cache = RowCache()
    mids = np.array([1, 1, 2], np.int32)
    tables = np.array([7, 7, 8], I64)
    slots = np.array([0, 3, 1], I64)
    cache.put(mids, tables, slots, np.array([10, 11, 12], I64), {1: 7, 2: 8})
    got = cache.get(mids, tables, slots, {1: 7, 2: 8})
    assert got.dtype == I64 and got.tolist() == [10, 11, 12]
    assert cache.get(mids, tables, slots, None).tolist() == [10, 11, 12]
    cache.put(mids[:1], tables[:1], np.array([5], I64), np.array([2**31], I64), {1: 7})
    assert cache.get(mids[:1], tables[:1], np.array([5], I64), None).tolist() == [-1]


def test_dense_slots_number_accounts_as_the_index_does() -> None:
    tabs = Tables()
    first = tabs.slots(np.array([3, 90_000, 3, 17], np.uint64))
    assert first.dtype == I64 and first.tolist() == [0, 2, 0, 1]
    again = tabs.slots(np.array([17, 5, 90_000], np.uint64))
    assert again.tolist() == [1, 3, 2]
    assert tabs.dense_slots.dtype == np.dtype("<i4")
    assert [tabs.slot_of(a) for a in (3, 17, 90_000, 5, 6)] == [0, 1, 2, 3, -1]


def test_slot_accounts_grow_in_place_and_after_a_snapshot_load() -> None:
    tabs = Tables()
    seen: list[int] = []
    for start in range(0, 3000, 700):  # past the first buffer of 1024 slots
        batch = np.arange(10**12 + start, 10**12 + start + 700, dtype=np.uint64)
        tabs.slots(batch)
        seen.extend(batch.tolist())
    assert tabs.slot_accounts.tolist() == seen
    loaded = np.frombuffer(np.array(seen, np.uint64).tobytes(), np.uint64)  # read-only
    tabs.slot_accounts = loaded
    tabs._append_accounts(np.array([7, 8], np.uint64))
    assert tabs.slot_accounts.tolist() == [*seen, 7, 8]
    assert loaded.tolist() == seen
