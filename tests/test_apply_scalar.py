"""The scalar paths of a few leader-stamped events against the grouped fold.

An entry of at most ``SCALAR_MAX`` events that takes the fold's one-stamp path (no thresholds,
no COUNT_UNIQUE, no cells) is folded event by event (``apply_batch._fold_scalar``), and a lone
request's entry (one part, one such event, into a row that exists) is applied without
gathering columns at all (``apply_batch._lone_event``): numpy's cost per call would dwarf a
few events. The paths must leave the same state, byte for byte: two states get the same random
entries, one with both scalar paths switched off, and their snapshots and answers are compared
after every entry.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.partition_helpers import DAY, T0, E, H, batch_entry, live, schema_entry
from tests.support.examples import examples
from unimeter.model import AggType, PeriodType
from unimeter.state import apply_batch
from unimeter.state.entries import BatchEntry
from unimeter.state.partition_state import ApplyResult, PartitionState

CODES = ("c", "s", "x", "l")
# Small ids (the dense slot table) and one beyond it (the account index), new ones on the way.
ACCOUNTS = st.sampled_from([1, 2, 3, 70, 2**40 + 5, 2**64 - 1])
# Signed values, ones that do not fit a 32-bit limb, and ones near the int64 bounds.
VALUES = st.integers(-5, 9) | st.sampled_from([2**32, 2**32 - 1, -(2**40), 2**63 - 1, -(2**63)])


def fresh_state(chunk_events: int = 65536) -> PartitionState:
    state = PartitionState(0, chunk_events=chunk_events)
    metrics = (
        live("c", agg_type=AggType.COUNT),
        live("s", agg_type=AggType.SUM, period_type=PeriodType.FIXED, period_seconds=2 * 86400),
        live("x", agg_type=AggType.MAX, period_type=PeriodType.DAY),
        live("l", agg_type=AggType.LATEST),
    )
    state.apply(1, schema_entry(1, *metrics))
    return state


entries = st.lists(
    st.tuples(
        st.integers(-3, 8),  # hours the stamp moves (back too: rows may hold later events)
        st.lists(st.tuples(st.sampled_from(CODES), ACCOUNTS, VALUES), max_size=10),
    ),
    min_size=1,
    max_size=25,
)


def grouped_apply(state: PartitionState, index: int, entry: BatchEntry) -> ApplyResult:
    """``state.apply`` with both scalar paths switched off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(apply_batch, "SCALAR_MAX", 0)
        patch.setattr(apply_batch, "_lone_event", lambda *args: None)
        return state.apply(index, entry)


def apply_both(
    steps: list[tuple[int, list[tuple[str, int, int]]]], chunk_events: int = 65536
) -> None:
    """``chunk_events``: small ones make appends open new chunks of the event store."""
    scalar, grouped = fresh_state(chunk_events), fresh_state(chunk_events)
    stamp = T0
    for index, (hours, events) in enumerate(steps, start=2):
        stamp += hours * H // 6 + 1
        entry = batch_entry(
            stamp, [E(code, account, value, stamp) for code, account, value in events],
            producer=(7, index), leader_stamped=True,
        )  # fmt: skip
        assert scalar.apply(index, entry) == grouped_apply(grouped, index, entry)
        assert scalar.snapshot() == grouped.snapshot()
    for code in CODES:
        for account in (1, 70, 2**64 - 1):
            assert scalar.query(code, account, T0 - DAY, stamp + DAY) == grouped.query(
                code, account, T0 - DAY, stamp + DAY
            )
            assert scalar.query_realtime(code, account, stamp) == grouped.query_realtime(
                code, account, stamp
            )


@settings(max_examples=examples(75), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries, st.sampled_from([1, 3, 65536]))
def test_the_scalar_fold_leaves_the_state_the_grouped_fold_leaves(
    steps: list[tuple[int, list[tuple[str, int, int]]]], chunk_events: int
) -> None:
    apply_both(steps, chunk_events)


def test_both_folds_are_taken() -> None:
    """The comparison means something only if the scalar fold folds small entries (a lone
    event making its row too), declines several events needing new rows, and is not tried
    for larger entries."""
    results: list[bool] = []
    original = apply_batch._fold_scalar

    def recording(*args: object) -> bool:
        results.append(original(*args))  # type: ignore[arg-type]
        return results[-1]

    many = [("s", 1, 1)] * (apply_batch.SCALAR_MAX + 1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(apply_batch, "_fold_scalar", recording)
        apply_both(
            [
                (1, [("s", 1, 5)]),
                (1, [("s", 1, 7), ("s", 1, -2)]),
                (1, [("s", 1, 7), ("s", 2, 1)]),
                (1, many),
            ]
        )
    assert results == [True, True, False]


def test_the_lone_event_path_is_taken_for_existing_rows_only() -> None:
    """A lone event takes ``_lone_event`` once its row exists, and declines (None) to make
    one, so both of its branches are compared above."""
    results: list[bool] = []
    original = apply_batch._lone_event

    def recording(*args: object) -> object:
        found = original(*args)  # type: ignore[arg-type]
        results.append(found is not None)
        return found

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(apply_batch, "_lone_event", recording)
        apply_both([(1, [("s", 1, 5)]), (1, [("s", 1, 7)]), (1, [("c", 2, 1)]), (0, [("c", 2, 4)])])
    assert results == [False, True, False, True]
