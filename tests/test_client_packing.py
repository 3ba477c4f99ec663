"""The client's packed columns and batch bytes: ``batch_bytes`` against the wire's own
``encode_batch`` (byte for byte), the dictionary and id packers against per-event oracles, and
the batch limits (property keys per batch, bytes per frame) on the way out."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.examples import examples
from tests.wire_cases import empty_batch, full_batch, minimal_batch
from unimeter import Event, limits
from unimeter.client import packed as pk
from unimeter.client.batch_bytes import batch_bytes
from unimeter.client.batching import build_groups
from unimeter.client.cluster_map import Partitioner
from unimeter.wire.batch import NO_TIMESTAMP, EventBatch, decode_batch, encode_batch

SETTINGS = settings(max_examples=examples(75), deadline=None)


def our_bytes(batch: EventBatch) -> bytes:
    return batch_bytes(
        batch.metric_codes,
        batch.metric_index,
        batch.account_ids,
        batch.values,
        batch.timestamps,
        batch.operation_types,
        [(c.key, c.values, c.index) for c in batch.property_columns],
        batch.event_id_data,
        batch.event_id_offsets,
    )


def test_the_wire_tables_batches_encode_to_the_same_bytes() -> None:
    for batch in (full_batch(), minimal_batch(), empty_batch()):
        assert our_bytes(batch) == encode_batch(batch)


texts = st.text(max_size=6) | st.text("é€x", min_size=20, max_size=40)


@st.composite
def batches(draw: st.DrawFn) -> EventBatch:
    n = draw(st.sampled_from([0, 1, 5, 23, 24, 40]) | st.integers(0, 300))
    many_codes = draw(st.booleans())
    codes = tuple(f"c{i}" for i in range(300 if many_codes else draw(st.integers(1, 4))))
    index = draw(st.lists(st.integers(0, len(codes) - 1), min_size=n, max_size=n))
    keys = draw(st.lists(st.text(min_size=1, max_size=4), max_size=3, unique=True))
    return EventBatch(
        metric_codes=codes,
        metric_index=np.array(index, np.uint16 if many_codes else np.uint8),
        account_ids=draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)),
        values=draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)),
        timestamps=draw(
            st.none() | st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)
        ),
        operation_types=draw(st.none() | st.lists(st.integers(0, 2), min_size=n, max_size=n)),
        properties=draw(
            st.none()
            | st.lists(
                st.none() | st.dictionaries(st.sampled_from(keys or ["k"]), texts, max_size=3),
                min_size=n,
                max_size=n,
            )
        ),
        event_ids=draw(
            st.none()
            | st.lists(st.none() | st.text(min_size=1, max_size=8), min_size=n, max_size=n)
        ),
    )


@SETTINGS
@given(batches())
def test_batch_bytes_are_encode_batch_bytes(batch: EventBatch) -> None:
    assert our_bytes(batch) == encode_batch(batch)


def test_long_columns_take_the_wide_length_heads() -> None:
    n = 9000  # 72,000-byte columns: a 4-byte length in their heads
    batch = EventBatch(
        metric_codes=("m",),
        metric_index=np.zeros(n, np.uint8),
        account_ids=np.arange(n, dtype=np.uint64),
        values=np.arange(n, dtype=np.int64),
        timestamps=np.full(n, NO_TIMESTAMP, np.int64),
    )
    assert our_bytes(batch) == encode_batch(batch)


# --------------------------------------------------------------------------- packers


column_values = st.lists(st.none() | st.sampled_from(["a", "b", "é", ""]) | st.text(max_size=3))


@SETTINGS
@given(column_values)
def test_a_key_column_reads_back_as_its_values(values: list[str | None]) -> None:
    column = pk.key_column("k", values, absent=None)
    if all(v is None for v in values):
        assert column is None
        return
    assert column is not None
    assert len(set(column.values)) == len(column.values)
    table = (None, *column.values)
    assert [table[j] for j in column.index.tolist()] == values
    assert column.index.dtype == pk.index_dtype(len(column.values))


@SETTINGS
@given(
    st.lists(st.none() | st.text(min_size=1, max_size=6), min_size=1, max_size=30),
    st.randoms(use_true_random=False),
)
def test_ids_gathered_in_any_order_are_the_ids_in_that_order(
    ids: list[str | None], rnd: Any
) -> None:
    texts = ["" if i is None else i for i in ids]
    data, lengths = pk.utf8_lengths(texts)
    data, offsets, width = pk.packed_ids(texts, lengths, data)
    events = pk.Packed(
        np.zeros(len(ids), np.uint64), np.zeros(len(ids), np.int64), ("m",), None, None, None,
        (), data, offsets, width,
    )  # fmt: skip
    assert events.event_ids() == ids
    order = list(range(len(ids)))
    rnd.shuffle(order)
    taken = events.take(np.array(order))
    assert taken.event_ids() == [ids[i] for i in order]
    if taken.id_data is None:
        assert all(i is None for i in ids)


# --------------------------------------------------------------------------- batch limits


def test_a_batch_never_holds_more_property_keys_than_a_batch_may() -> None:
    keys = limits.property_keys_per_batch_max
    events = [
        Event(account_id=5, metric_code="m", properties={f"k{i}": "v", f"j{i}": "w"})
        for i in range(keys)
    ]
    groups = build_groups(events, Partitioner(1).many)
    assert len(groups) > 1
    assert all(len(g.batch.property_columns) <= keys for g in groups)
    assert sorted(i for g in groups for i in g.origin.tolist()) == list(range(len(events)))
    for g in groups:  # each decodes as the node would, limits checked
        decoded = decode_batch(g.batch.raw, "batch")
        assert decoded.properties == tuple(events[i].properties for i in g.origin.tolist())


def test_every_batch_fits_half_a_frame_whatever_the_events() -> None:
    frame = 64 * 1024
    events = [
        Event(account_id=5, metric_code="m", event_id=f"{i:064}", properties={"k": f"{i:064}"})
        for i in range(3000)
    ]
    groups = build_groups(events, Partitioner(1).many, frame_bytes_max=frame)
    assert len(groups) > 2
    assert all(len(g.batch.raw) <= frame // 2 for g in groups)
    assert [i for g in groups for i in g.origin.tolist()] == list(range(len(events)))
