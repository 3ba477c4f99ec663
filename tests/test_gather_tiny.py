"""``gather`` of an entry of tiny plain parts (Python lists) against the array path.

Entries of up to a dozen parts of 1-10 events each, with and without timestamps (some events
unstamped), operation types and dropped events (every event of a metric the state does not
know is dropped, as admission drops it): whenever the list path takes an entry, its columns,
dtypes, stamp and named instances are the array path's.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.examples import examples
from unimeter.model import AggType, MetricSchema, PeriodType
from unimeter.state import gather as g
from unimeter.state.entries import BatchEntry, BatchPart, LiveMetric, SchemaEntry
from unimeter.state.partition_state import PartitionState
from unimeter.wire.batch import NO_TIMESTAMP, EventBatch

KNOWN = ("m0", "m1", "m2")
STAMP = 1_765_000_000_000_000


def state() -> PartitionState:
    st_ = PartitionState(0)
    metrics = tuple(
        LiveMetric(generation=1, schema=MetricSchema(
            code=c, agg_type=AggType.SUM, period_type=PeriodType.CALENDAR).normalized())
        for c in KNOWN
    )  # fmt: skip
    st_.apply(1, SchemaEntry(catalog_version=1, metrics=metrics))
    return st_


@st.composite
def parts(draw: st.DrawFn) -> BatchPart:
    n = draw(st.integers(1, g.TINY_PART_EVENTS + 2))
    codes = draw(st.lists(st.sampled_from([*KNOWN, "unknown"]), min_size=1, max_size=3,
                          unique=True))  # fmt: skip
    index = draw(st.lists(st.integers(0, len(codes) - 1), min_size=n, max_size=n))
    stamps = draw(st.none() | st.lists(st.sampled_from([NO_TIMESTAMP, STAMP - 5, STAMP - 9]),
                                       min_size=n, max_size=n))  # fmt: skip
    ops = draw(st.none() | st.lists(st.integers(0, 2), min_size=n, max_size=n))
    dropped = {i for i in range(n) if codes[index[i]] == "unknown"}
    dropped |= set(draw(st.lists(st.integers(0, n - 1), max_size=2)))
    batch = EventBatch(
        metric_codes=codes,
        metric_index=np.array(index, np.uint8),
        account_ids=np.array(
            draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)), np.uint64
        ),
        values=np.array(
            draw(st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n)), np.int64
        ),
        timestamps=None if stamps is None else np.array(stamps, np.int64),
        operation_types=None if ops is None else np.array(ops, np.uint8),
    )
    return BatchPart(
        producer_id=1, seq=1, batch=batch,
        dropped=np.array(sorted(dropped), np.uint32) if dropped else None,
        n_duplicates=0, rejected=(), id_hashes=None,
    )  # fmt: skip


def array_path(entry: BatchEntry, s: PartitionState) -> g.Gathered:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(g, "_tiny_parts", lambda entry, live: None)
        return g.gather(entry, s.live, s.props, s.cells)


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(parts(), min_size=1, max_size=12))
def test_tiny_parts_gather_as_the_array_path_gathers_them(drawn: list[BatchPart]) -> None:
    s = state()
    entry = BatchEntry(stamp_us=STAMP, parts=tuple(drawn))
    tiny = g._tiny_parts(entry, s.live)
    if any(len(p.batch) > g.TINY_PART_EVENTS for p in drawn):
        assert tiny is None
        return
    assert tiny is not None
    arrays = array_path(entry, s)
    assert (tiny.n, tiny.stamp, tiny.mids, tiny.id_data) == (
        arrays.n,
        arrays.stamp,
        arrays.mids,
        arrays.id_data,
    )
    assert tiny.hashes is None and arrays.hashes is None
    for name in g.NAMES:
        a, b = tiny.cols[name], arrays.cols[name]
        assert (a is None) == (b is None), name
        if a is not None and b is not None:
            assert a.dtype == b.dtype and a.tolist() == b.tolist(), name


def test_a_part_with_properties_takes_the_array_path() -> None:
    s = state()
    batch = EventBatch(
        metric_codes=["m0"], metric_index=np.zeros(1, np.uint8),
        account_ids=np.ones(1, np.uint64), values=np.ones(1, np.int64),
        properties=[{"region": "eu"}],
    )  # fmt: skip
    part = BatchPart(producer_id=1, seq=1, batch=batch, dropped=None, n_duplicates=0,
                     rejected=(), id_hashes=None)  # fmt: skip
    assert g._tiny_parts(BatchEntry(stamp_us=STAMP, parts=(part,)), s.live) is None
