"""KeyIndex against a dict: adds in sorted or shuffled batches, across tail and delta merges,
then every lookup (column, single key, range, the unmerged ``pairs_in``) and the final items."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.examples import examples
from unimeter.state.keyindex import _DELTA_MIN, MISSING, KeyIndex

U64 = np.dtype("<u8")
# Small keys collide often (the batches must skip present ones); a few near 2**64 check the
# unsigned ends.
KEYS = st.integers(0, 3000) | st.integers(2**64 - 8, 2**64 - 1)


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[list[int], bool]]:
    """Batches of keys (some big enough to force a merge of the delta, many of one key as a
    lone request adds them, filling and spilling the tail), each sorted or not."""
    out = []
    for _ in range(draw(st.integers(1, 20))):
        kind = draw(st.integers(0, 4))
        if kind == 1:
            keys = [draw(KEYS)]
        elif kind == 0:
            start = draw(st.integers(0, 2**40))
            size = draw(st.integers(_DELTA_MIN, 3 * _DELTA_MIN))
            keys = list(range(start, start + size * 3, 3))
        else:
            keys = draw(st.lists(KEYS, max_size=40))
        out.append((keys, draw(st.booleans())))
    return out


@settings(max_examples=examples(75), deadline=None)
@given(batches(), st.lists(KEYS, max_size=30), st.randoms(use_true_random=False))
def test_the_index_answers_like_a_dict(
    adds: list[tuple[list[int], bool]], probes: list[int], rng: object
) -> None:
    index = KeyIndex()
    model: dict[int, int] = {}
    next_value = 0
    for keys, in_order in adds:
        fresh = sorted({k for k in keys if k not in model})
        if not in_order:
            rng.shuffle(fresh)  # type: ignore[attr-defined]
        values = list(range(next_value, next_value + len(fresh)))
        next_value += len(fresh)
        index.add(np.array(fresh, U64), np.array(values, np.int64))
        model.update(zip(fresh, values, strict=True))
        assert len(index) == len(model)
        asked = [*probes, *fresh[:5]]
        got = index.get(np.array(asked, U64)).tolist()
        assert got == [model.get(k, MISSING) for k in asked]
        assert [index.get1(k) for k in asked] == [model.get(k, MISSING) for k in asked]
        low, high = sorted(rng.sample([0, 2**64 - 1, *asked, *model], 2))  # type: ignore[attr-defined]
        assert sorted(index.pairs_in(low, high)) == [
            (k, v) for k, v in sorted(model.items()) if low <= k < high
        ]
    keys, values = index.items()
    assert keys.tolist() == sorted(model)
    assert values.tolist() == [model[k] for k in sorted(model)]
    if model:
        low, high = sorted(rng.sample(sorted(model) * 2, 2))  # type: ignore[attr-defined]
        keys, values = index.range(low, high)
        assert keys.tolist() == [k for k in sorted(model) if low <= k < high]


def test_an_added_batch_is_not_shared_with_the_caller() -> None:
    index = KeyIndex()
    keys = np.array([1, 2, 3], U64)
    values = np.array([10, 20, 30], np.int64)
    index.add(keys, values)
    keys[:] = 7
    values[:] = 0
    assert index.get(np.array([1, 2, 3], U64)).tolist() == [10, 20, 30]
