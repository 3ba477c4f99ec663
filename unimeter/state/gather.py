"""A BatchEntry's stored events as parallel columns, ready for the event store and the rows.

Each part's batch arrives as the client encoded it; the leader's verdict (``dropped``) picks
the stored events, missing timestamps become the entry's stamp, metric codes become instance
ids, property columns become interned property-map ids and (for instances with dimensions)
cell ids. Everything is array work plus one Python step per metric code, per distinct property
combination and per part.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from unimeter.state.entries import BatchEntry, BatchPart
from unimeter.state.instances import Instance
from unimeter.state.props import CellTable, PropsTable, cell_ids, props_ids
from unimeter.wire.batch import NO_TIMESTAMP

Array = npt.NDArray[Any]
I32 = np.dtype("<i4")
I64 = np.dtype("<i8")
U64 = np.dtype("<u8")

# The columns of gathered events, in the order the event store keeps them.
NAMES = ("mid", "account", "ts", "value", "op", "cell", "props", "id_start", "id_len")


class Gathered:
    """The stored events of one entry: ``cols`` by name (optional ones None when unused)."""

    __slots__ = ("cols", "hashes", "id_data", "mids", "n", "stamp")

    def __init__(
        self,
        cols: dict[str, Array | None],
        id_data: bytes | None,
        hashes: Array | None,
        stamp: int | None,
    ) -> None:
        self.cols = cols
        self.id_data = id_data
        self.hashes = hashes  # uint64 keys of the stored ids, in event order
        self.stamp = stamp  # every event's timestamp, when they all have the entry's stamp
        self.mids: set[int] = set()  # the instances the parts' code tables name
        mids = cols["mid"]
        assert mids is not None
        self.n = len(mids)

    def col(self, name: str) -> Array:
        found = self.cols[name]
        assert found is not None
        return found


def _part(
    part: BatchPart,
    stamp_us: int,
    live: dict[str, Instance],
    props: PropsTable,
    cells: CellTable,
    mids_named: set[int],
) -> tuple[dict[str, Array | None], bytes | None]:
    b = part.batch
    n = len(b)
    keep = part.stored_mask()

    def pick(column: Array) -> Array:
        return column if keep is None else column[keep]

    insts = [live.get(code) for code in b.metric_codes]
    mids_named.update(i.mid for i in insts if i is not None)
    mid_of_code = np.array([-1 if i is None else i.mid for i in insts], I64)
    mids = pick(mid_of_code[b.metric_index])
    assert not len(mids) or int(mids.min()) >= 0, "a stored event for a metric not known"
    cols: dict[str, Array | None] = dict.fromkeys(NAMES)
    cols["mid"] = mids
    cols["account"] = pick(b.account_ids)
    cols["value"] = pick(b.values)
    if b.timestamps is not None:  # else ``gather`` fills in the entry's stamp
        stamps = pick(b.timestamps)
        cols["ts"] = np.where(stamps == NO_TIMESTAMP, np.int64(stamp_us), stamps)
    if b.operation_types is not None:
        ops = pick(b.operation_types)
        cols["op"] = ops if ops.any() else None
    if b.property_columns:
        cols["props"] = _pick_or_none(props_ids(b.property_columns, n, props), keep)
        cell = np.zeros(n, I32)
        for j, inst in enumerate(insts):
            if inst is None or not inst.dims:
                continue
            found = cell_ids(inst.dims, b.property_columns, n, cells)
            if found is not None:
                mine = b.metric_index == j
                cell[mine] = found[mine]
        cols["cell"] = _pick_or_none(cell, keep)
    id_data = None
    if b.event_id_data is not None:
        offsets = b.event_id_offsets
        assert offsets is not None
        lengths = pick(np.diff(offsets.astype(I64)))
        if lengths.any():
            cols["id_start"] = pick(offsets[:-1].astype(np.uint32))
            cols["id_len"] = lengths.astype(np.uint8)
            id_data = b.event_id_data
    return cols, id_data


def _pick_or_none(column: Array | None, keep: Array | None) -> Array | None:
    if column is None:
        return None
    picked = column if keep is None else column[keep]
    return picked if picked.any() else None


# An entry whose parts all hold at most this many plain events (no properties, no event ids)
# is gathered with Python lists: producers sending one event per request fill an entry with
# dozens of such parts, and a part's array steps cost more than its events.
TINY_PART_EVENTS = 8
U8 = np.dtype("u1")


def _tiny_parts(entry: BatchEntry, live: dict[str, Instance]) -> Gathered | None:
    """``gather`` of an entry of tiny plain parts, or None when a part is not one."""
    named: set[int] = set()
    mids: list[int] = []
    accounts: list[int] = []
    values: list[int] = []
    stamps: list[int] = []
    ops: list[int] = []
    stamp = entry.stamp_us
    any_stamp = any_op = False
    for part in entry.parts:
        b = part.batch
        index = b.metric_index
        if (
            len(index) > TINY_PART_EVENTS
            or b.property_columns
            or b.event_id_data is not None
            or part.id_hashes is not None
        ):
            return None
        mid_of_code = []
        for code in b.metric_codes:
            inst = live.get(code)
            mid_of_code.append(-1 if inst is None else inst.mid)
            if inst is not None:
                named.add(inst.mid)
        part_mids = [mid_of_code[j] for j in index.tolist()]
        part_accounts = b.account_ids.tolist()
        part_values = b.values.tolist()
        ts = b.timestamps
        part_stamps = (
            [stamp] * len(index)
            if ts is None
            else [stamp if t == NO_TIMESTAMP else t for t in ts.tolist()]
        )
        any_stamp = any_stamp or ts is not None
        part_ops = [0] * len(index) if b.operation_types is None else b.operation_types.tolist()
        dropped = part.dropped
        if dropped is not None and len(dropped):
            gone = set(dropped.tolist())
            kept = [i for i in range(len(index)) if i not in gone]
            part_mids = [part_mids[i] for i in kept]
            part_accounts = [part_accounts[i] for i in kept]
            part_values = [part_values[i] for i in kept]
            part_stamps = [part_stamps[i] for i in kept]
            part_ops = [part_ops[i] for i in kept]
        assert min(part_mids, default=0) >= 0, "a stored event for a metric not known"
        any_op = any_op or any(part_ops)  # of the stored events, as the array path counts
        mids += part_mids
        accounts += part_accounts
        values += part_values
        stamps += part_stamps
        ops += part_ops
    cols: dict[str, Array | None] = dict.fromkeys(NAMES)
    cols["mid"] = np.array(mids, I64)
    cols["account"] = np.array(accounts, U64)
    cols["value"] = np.array(values, I64)
    cols["ts"] = np.array(stamps, I64)
    if any_op:
        cols["op"] = np.array(ops, U8)
    gathered = Gathered(cols, None, None, None if any_stamp else stamp)
    gathered.mids = named
    return gathered


def gather(
    entry: BatchEntry, live: dict[str, Instance], props: PropsTable, cells: CellTable
) -> Gathered:
    tiny = _tiny_parts(entry, live)
    if tiny is not None:
        return tiny
    named: set[int] = set()
    parts = [_part(p, entry.stamp_us, live, props, cells, named) for p in entry.parts]
    hashes = [p.id_hashes for p in entry.parts if p.id_hashes is not None and len(p.id_hashes)]
    all_hashes = None if not hashes else hashes[0] if len(hashes) == 1 else np.concatenate(hashes)
    stamp = entry.stamp_us if all(p.batch.timestamps is None for p in entry.parts) else None
    lengths = [len(p[0]["mid"]) for p in parts]  # type: ignore[arg-type]
    if len(parts) == 1:
        if parts[0][0]["ts"] is None:
            parts[0][0]["ts"] = np.full(lengths[0], entry.stamp_us, I64)
        single = Gathered(parts[0][0], parts[0][1], all_hashes, stamp)
        single.mids = named
        return single
    cols: dict[str, Array | None] = {}
    id_base = 0
    id_bufs: list[bytes] = []
    for name in NAMES:
        if name == "ts" and stamp is not None:  # one column of the stamp, not one per part
            cols[name] = np.full(sum(lengths), stamp, I64)
            continue
        columns = [p[0][name] for p in parts]
        if all(c is None for c in columns):
            cols[name] = None
            continue
        filled: list[Array] = []
        for (part_cols, data), column, length in zip(parts, columns, lengths, strict=True):
            if column is None and name == "ts":  # a part without timestamps, among others
                column = np.full(length, entry.stamp_us, I64)
            elif column is None:
                dtype = next(c.dtype for c in columns if c is not None)
                column = np.zeros(length, dtype)
            elif name == "id_start":
                column = column + id_base
                assert data is not None
                id_base += len(data)
                id_bufs.append(data)
            filled.append(column)
            del part_cols
        cols[name] = np.concatenate(filled)
    gathered = Gathered(cols, b"".join(id_bufs) if id_bufs else None, all_hashes, stamp)
    gathered.mids = named
    return gathered
