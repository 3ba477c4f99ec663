"""The event-id key table against a dict: what is stored, on which day, what expiry keeps.

Tables start with 2 to 16 buckets and keys are drawn from small ranges of bucket bits, so
buckets fill, keys spill to their other bucket, pairs of buckets run full and the table grows
-- the paths a table of millions of random keys takes rarely.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from unimeter.state.dedup import EventIdIndex, stored_form

U64 = np.dtype("<u8")

# A key's first bucket is its top bits, its second its low bits: draw both from few values
# so that many keys share buckets.
_key = st.builds(
    lambda top, middle, low: (top << 60) | (middle << 8) | low,
    st.integers(0, 15),
    st.integers(0, 3),
    st.integers(0, 15),
)
_batch = st.lists(_key, unique=True, max_size=40)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), _batch, st.integers(0, 5)),
        st.tuples(st.just("expire"), st.integers(0, 6)),
        st.tuples(st.just("add_new"), _batch, st.integers(0, 5)),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(bits=st.integers(1, 4), ops=_ops, probes=_batch)
def test_table_holds_what_a_dict_holds(bits: int, ops: list[tuple], probes: list[int]) -> None:
    table = EventIdIndex(bits)
    model: dict[int, int] = {}  # stored form -> day
    for op in ops:
        if op[0] == "add":
            _, keys, day = op
            # ``add`` takes keys not stored yet and distinct as stored (0 is stored as 1).
            fresh = {int(k): None for k in stored_form(np.array(keys, U64)).tolist()}
            fresh_keys = [k for k in fresh if k not in model]
            table.add(np.array(fresh_keys, U64), day)
            for k in fresh_keys:
                model[k] = day
        elif op[0] == "add_new":
            # ``add_new`` stores all of them or, when one is stored already, none.
            _, keys, day = op
            distinct = list({int(k): None for k in stored_form(np.array(keys, U64)).tolist()})
            fresh = not any(k in model for k in distinct)
            assert table.add_new(np.array(distinct, U64), day) == fresh
            if fresh:
                model.update(dict.fromkeys(distinct, day))
        else:
            oldest = op[1]
            table.expire(oldest)
            model = {k: d for k, d in model.items() if d >= oldest}
        assert len(table) == len(model)
    keys, days = table.dump()
    assert dict(zip(keys.tolist(), days.tolist(), strict=True)) == model
    assert keys.tolist() == sorted(model)
    asked = np.array(probes + list(model), U64)
    expected = [int(k) in model for k in stored_form(asked).tolist()]
    assert table.contains(asked).tolist() == expected


def test_many_random_keys_grow_the_table_and_stay_found() -> None:
    rng = np.random.default_rng(7)
    table = EventIdIndex()
    keys = rng.integers(0, 2**64, 200_000, dtype=U64, endpoint=False)
    keys = np.unique(keys)
    for start in range(0, len(keys), 5_000):
        chunk = keys[start : start + 5_000]
        assert not table.contains(chunk).any()
        table.add(chunk, start // 5_000)
    assert len(table) == len(keys)
    assert table.contains(keys).all()
    others = rng.integers(0, 2**64, 10_000, dtype=U64, endpoint=False)
    assert table.contains(others).tolist() == np.isin(others, keys).tolist()
