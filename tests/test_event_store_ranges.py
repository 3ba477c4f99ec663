"""Range totals over stored events, against a plain recomputation: sealed runs, and the open
chunk's read index (sorted runs of the rows appended between reads, plus a scanned tail)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from unimeter.state.events import OPEN_SCAN_MAX, EventStore, Totals, combined

Event = tuple[int, int, int, int, int]  # (offset, account, mid, ts, value)


def _append(store: EventStore, rng: random.Random, n: int, log: list[Event]) -> None:
    accounts = [rng.choice([1, 2, 3, 2**63 + 5]) for _ in range(n)]
    mids = [rng.choice([1, 2]) for _ in range(n)]
    stamps = [rng.randrange(0, 1000) for _ in range(n)]  # not in log order
    values = [rng.choice([0, 7, -3, 2**40, -(2**50), rng.randrange(-100, 100)]) for _ in range(n)]
    first = store.next_offset
    store.append(
        {
            "mid": np.array(mids, np.int32),
            "account": np.array(accounts, np.uint64),
            "ts": np.array(stamps, np.int64),
            "value": np.array(values, np.int64),
        },
        None,
    )
    log.extend(zip(range(first, first + n), accounts, mids, stamps, values, strict=True))


def _expected(log: list[Event], account: int, mid: int, lo: int, hi: int) -> Totals | None:
    mine = [e for e in log if e[1] == account and e[2] == mid and lo <= e[3] < hi]
    if not mine:
        return None
    latest = max((e[3], e[0], e[4]) for e in mine)
    return len(mine), sum(e[4] for e in mine), max(e[4] for e in mine), latest


def _check_reads(store: EventStore, rng: random.Random, log: list[Event], reads: int) -> None:
    for _ in range(reads):
        lo = rng.randrange(-10, 1000)
        hi = lo + rng.randrange(1, 600)
        account = rng.choice([1, 2, 3, 4, 2**63 + 5])
        mid = rng.choice([1, 2, 3])
        assert store.range_totals(account, mid, lo, hi) == _expected(log, account, mid, lo, hi)


@pytest.mark.parametrize("chunk_events", [64, 640, 65536])
def test_range_totals_match_a_recount_while_reads_and_appends_interleave(
    chunk_events: int,
) -> None:
    rng = random.Random(chunk_events)
    store = EventStore(1000, chunk_events)
    log: list[Event] = []
    for _ in range(60):
        _append(store, rng, rng.choice([1, 2, 5, 9, 30, 64]), log)
        _check_reads(store, rng, log, rng.choice([0, 1, 3]))
    _check_reads(store, rng, log, 50)


def test_the_open_chunk_index_grows_as_a_binary_counter_and_leaves_a_short_tail() -> None:
    rng = random.Random(5)
    store = EventStore(0, 640)  # scan at most 10 rows unindexed
    log: list[Event] = []
    for _ in range(12):
        _append(store, rng, 11, log)  # each read finds 11 new rows: one more run
        _check_reads(store, rng, log, 1)
    (chunk,) = store.chunks
    runs = chunk._open_runs
    sizes = [run.size for run in runs]
    assert sum(sizes) == chunk.size == 132
    assert all(a > 2 * b for a, b in itertools.pairwise(sizes)), sizes
    _append(store, rng, 10, log)  # a tail of 10: scanned, not indexed
    _check_reads(store, rng, log, 20)
    assert sum(run.size for run in chunk._open_runs) == 132


def test_sealing_drops_the_open_chunk_index() -> None:
    rng = random.Random(9)
    store = EventStore(0, 128)
    log: list[Event] = []
    _append(store, rng, 100, log)
    _check_reads(store, rng, log, 3)
    first = store.chunks[0]
    assert first._open_runs
    _append(store, rng, 100, log)  # does not fit: the first chunk is sealed
    assert not first._open_runs and len(store.chunks) == 2
    _check_reads(store, rng, log, 30)


def test_the_default_open_scan_limit_is_a_64th_of_a_default_chunk() -> None:
    assert OPEN_SCAN_MAX == 65536 // 64


def test_combined_adds_counts_and_sums_and_keeps_the_largest_and_latest() -> None:
    a: Totals = (2, 10, 7, (5, 100, 3))
    b: Totals = (1, -4, 9, (5, 101, -4))
    assert combined([None, a, None, b]) == (3, 6, 9, (5, 101, -4))
    assert combined([None, a]) == a
    assert combined([None, None]) is None
