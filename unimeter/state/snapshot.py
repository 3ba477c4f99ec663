"""The partition's applied state as bytes, and back (docs/operations.md, snapshots).

Format 4, little-endian: ``b"UMPS" | u16 version | u64 n | n bytes: one CBOR map | blobs``.
A node refuses any other version (``SnapshotFormatError``) rather than guess.

The map holds the partition's scalars, its instances (schema, periods and tables, carried
bases), the interned property maps and cells, the producer table and the alert log. Every
numpy column -- aggregate rows, key indexes, stored event chunks, event-id keys -- is one raw
byte string in the blob area after the map, referenced by ``[offset, length, dtype]``, so
encoding is a memory copy per column and decoding a memory copy per column: a snapshot loads
far faster than replaying the log it replaces. Roaring sets are their portable serialisation.

Only state is written, never caches or indexes that are rebuilt on demand (recurring-set
caches, the sorted order of sealed event chunks: chunks are written in log order). Dicts are
written in insertion order and rows in id order, so ``encode(decode(b)) == b`` and a restored
replica's later snapshots are byte-identical to those of a replica that never restarted.
"""

from __future__ import annotations

import gc
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cbor2
import numpy as np
import numpy.typing as npt
from pyroaring import BitMap64

from unimeter.model import MetricSchema
from unimeter.state.aggregates import UniqRow
from unimeter.state.entries import LiveMetric
from unimeter.state.events import REQUIRED, Chunk
from unimeter.state.instances import Base, Instance, NumBase, UniqBase
from unimeter.state.keyindex import KeyIndex
from unimeter.state.partition_state import PartitionState
from unimeter.state.rows import COLUMNS, RowStore
from unimeter.wire.messages import StoredAlert

Array = npt.NDArray[Any]
FORMAT_VERSION = 4
_MAGIC = b"UMPS"
_PREFIX = struct.Struct("<4sH")  # every version starts so
_BODY_BYTES = struct.Struct("<Q")


class SnapshotFormatError(Exception):
    """Partition-state bytes in a format this code does not read; nothing was loaded."""

    def __init__(self, version: int | None, path: str | None = None) -> None:
        where = f"snapshot file {path}" if path else "partition snapshot"
        found = (
            "has no partition-state format header (written before format 3, or not a snapshot)"
            if version is None
            else f"has partition-state format version {version}"
        )
        super().__init__(f"{where} {found}; this node reads only version {FORMAT_VERSION}")
        self.version = version
        self.path = path


def format_version(data: bytes) -> int | None:
    """The format version ``data`` declares, or None when it has no header."""
    if len(data) < _PREFIX.size or data[: len(_MAGIC)] != _MAGIC:
        return None
    version: int = _PREFIX.unpack_from(data)[1]
    return version


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cycle collection while many acyclic objects are made or walked (and, in a forked
    snapshot child, no collector writing to every page it walks, defeating copy-on-write)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Blobs:
    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, column: Array) -> list[Any]:
        raw = np.ascontiguousarray(column).tobytes()
        self.parts.append(raw)
        self.size += len(raw)
        return [self.size - len(raw), len(raw), column.dtype.str]


def _array(blobs: memoryview, ref: list[Any]) -> Array:
    """A writable array from a blob reference (one copy)."""
    offset, length, dtype = ref
    assert offset >= 0 and offset + length <= len(blobs), "blob outside the snapshot"
    return np.frombuffer(blobs[offset : offset + length], dtype=np.dtype(dtype)).copy()


# --------------------------------------------------------------------------- parts


def _dump_base(base: Base) -> list[Any]:
    if isinstance(base, UniqBase):
        cells = None if base.cells is None else [[c, s.serialize()] for c, s in base.cells.items()]
        return [1, base.present.serialize(), cells]
    cells_n = None if base.cells is None else [[c, list(v)] for c, v in base.cells.items()]
    return [0, None if base.last is None else list(base.last), cells_n]


def _load_base(row: list[Any]) -> Base:
    if row[0] == 1:
        ubase = UniqBase()
        ubase.present = BitMap64.deserialize(row[1])
        if row[2] is not None:
            ubase.cells = {c: BitMap64.deserialize(s) for c, s in row[2]}
        return ubase
    nbase = NumBase()
    nbase.last = None if row[1] is None else tuple(row[1])
    if row[2] is not None:
        nbase.cells = {c: tuple(v) for c, v in row[2]}
    return nbase


def _dump_instance(inst: Instance) -> list[Any]:
    return [
        inst.mid,
        inst.metric.generation,
        inst.metric.schema.to_wire(),
        inst.live,
        [[start, end, table] for start, (end, table) in inst.periods.items()],
        [inst.ps, inst.pe, inst.table],
        [[account, _dump_base(base)] for account, base in inst.base.items()],
    ]


def _load_instance(row: list[Any]) -> Instance:
    mid, generation, schema, live, periods, current, bases = row
    inst = Instance(mid, LiveMetric(generation=generation, schema=MetricSchema.from_wire(schema)))
    inst.live = live
    inst.periods = {start: (end, table) for start, end, table in periods}
    inst.ps, inst.pe, inst.table = current
    inst.base = {account: _load_base(base) for account, base in bases}
    return inst


def _dump_chunks(chunk: Chunk, blobs: _Blobs) -> list[list[Any]]:
    """The chunk in log order -- or, for a merged run, each chunk it was made of -- so the
    snapshot is the same whatever reads sorted or merged; an optional column that is all
    zeros (its default) is left out."""
    out = []
    for piece in chunk.split():
        mine = piece.log_columns()
        # ``id_start`` means something only beside ``id_len``: kept exactly when it is.
        starts = mine.pop("id_start", None)
        mine = {name: col for name, col in mine.items() if name in REQUIRED or col.any()}
        if "id_len" in mine and starts is not None:
            mine["id_start"] = starts
        out.append([
            piece.first_offset,
            piece.size,
            {name: blobs.add(col) for name, col in sorted(mine.items())},
            bytes(piece.id_data),
        ])  # fmt: skip
    return out


def _load_chunk(row: list[Any], blobs: memoryview) -> Chunk:
    first_offset, n, cols, id_data = row
    chunk = Chunk(first_offset, capacity=1)
    chunk.cols = {name: _array(blobs, ref) for name, ref in cols.items()}
    chunk.size = n
    chunk.id_data = bytearray(id_data)
    return chunk


def _dump_alerts(state: PartitionState) -> list[Any]:
    log = state.alerts
    return [
        log.next_cursor,
        [
            [
                a.account_id,
                a.metric_code,
                a.threshold_code,
                a.value_at_cross,
                a.triggered_at_us,
                a.cursor,
            ]
            for a in log.ordered
        ],
    ]


def _load_alerts(state: PartitionState, row: list[Any]) -> None:
    log = state.alerts
    log.next_cursor = row[0]
    for account, metric, threshold, value, at_us, cursor in row[1]:
        alert = StoredAlert(
            account_id=account,
            metric_code=metric,
            threshold_code=threshold,
            value_at_cross=value,
            triggered_at_us=at_us,
            cursor=cursor,
        )
        log.ordered.append(alert)
        log.by_account.setdefault(account, []).append(alert)


def _dump_rows(rows: RowStore, blobs: _Blobs) -> list[Any]:
    return [
        rows.size,
        {name: blobs.add(rows.column(name)) for name in COLUMNS},
        sorted([row, total] for row, total in rows.big_sums.items()),
        sorted([row, dict(fired)] for row, fired in rows.fired.items()),
        rows.since_settle,
    ]


def _load_rows(row: list[Any], blobs: memoryview) -> RowStore:
    size, cols, big_sums, fired, since_settle = row
    rows = RowStore(capacity=max(size, 1))
    for name, ref in cols.items():
        rows.load_column(name, _array(blobs, ref))
    rows.size = size
    rows.big_sums = {r: total for r, total in big_sums}
    rows.fired = {r: f for r, f in fired}
    rows.since_settle = since_settle
    rows.newest_ts = int(rows.cols["last_ts"][:size].max()) if size else rows.newest_ts
    return rows


def _dump_index(index: KeyIndex, blobs: _Blobs) -> list[Any]:
    keys, vals = index.items()
    return [blobs.add(keys), blobs.add(vals)]


def _load_index(row: list[Any], blobs: memoryview) -> KeyIndex:
    return KeyIndex(_array(blobs, row[0]), _array(blobs, row[1]))


# --------------------------------------------------------------------------- the whole state


def encode(state: PartitionState) -> bytes:
    with gc_paused():
        blobs = _Blobs()
        tabs = state.tables
        id_keys, id_days = state.ids.dump()
        body = {
            "partition": state.partition,
            "retention_days": state.retention_days,
            "dedup_window_days": state.dedup_window_days,
            "applied_index": state.applied_index,
            "catalog_version": state.catalog_version,
            "next_mid": state.next_mid,
            "next_table": state.next_table,
            "newest_day": state.newest_day,
            "cutoff": state.cutoff,
            # The live count at the last compaction decides when the next one runs.
            "props": [[list(m.items()) for m in state.props.maps], state.props.live_at_gc],
            "cells": [list(cell) for cell in state.cells.cells],
            "instances": [_dump_instance(inst) for inst in state.instances.values()],
            "live": [inst.mid for inst in state.live.values()],
            "slot_accounts": blobs.add(tabs.slot_accounts),
            "totals": _dump_index(tabs.totals, blobs),
            "cell_index": _dump_index(tabs.cells, blobs),
            "rows": _dump_rows(tabs.rows, blobs),
            "uniq": [
                [row, u.present.serialize(), None if u.removed is None else u.removed.serialize()]
                for row, u in sorted(tabs.uniq.items())
            ],
            "events": [
                state.events.chunk_events,
                state.events.next_offset,
                [row for chunk in state.events.chunks for row in _dump_chunks(chunk, blobs)],
            ],
            "event_ids": [blobs.add(id_keys), blobs.add(id_days)],
            "producers": state.producers.dump(),
            "alerts": _dump_alerts(state),
            "webhook_next": state.webhook_next,
        }
        encoded = cbor2.dumps(body)
        head = _PREFIX.pack(_MAGIC, FORMAT_VERSION) + _BODY_BYTES.pack(len(encoded))
        return b"".join([head, encoded, *blobs.parts])


def decode(data: bytes) -> PartitionState:
    """The state ``encode`` wrote; SnapshotFormatError for another format version."""
    version = format_version(data)
    if version != FORMAT_VERSION:
        raise SnapshotFormatError(version)
    with gc_paused():
        view = memoryview(data)
        (body_bytes,) = _BODY_BYTES.unpack_from(view, _PREFIX.size)
        start = _PREFIX.size + _BODY_BYTES.size
        body = cbor2.loads(view[start : start + body_bytes])
        blobs = view[start + body_bytes :]
        state = PartitionState(
            body["partition"],
            retention_days=body["retention_days"],
            dedup_window_days=body["dedup_window_days"],
        )
        state.applied_index = body["applied_index"]
        state.catalog_version = body["catalog_version"]
        state.next_mid = body["next_mid"]
        state.next_table = body["next_table"]
        state.newest_day = body["newest_day"]
        state.cutoff = body["cutoff"]
        maps, live_at_gc = body["props"]
        state.props.restore([dict(pairs) for pairs in maps])
        state.props.live_at_gc = live_at_gc
        state.cells.restore([tuple(tuple(p) for p in cell) for cell in body["cells"]])
        for row in body["instances"]:
            inst = _load_instance(row)
            state.instances[inst.mid] = inst
        for mid in body["live"]:
            inst = state.instances[mid]
            state.live[inst.code] = inst
        tabs = state.tables
        tabs.slot_accounts = _array(blobs, body["slot_accounts"])
        order = np.argsort(tabs.slot_accounts, kind="stable")
        tabs.accounts = KeyIndex(tabs.slot_accounts[order], order.astype(np.int64))
        tabs.totals = _load_index(body["totals"], blobs)
        tabs.cells = _load_index(body["cell_index"], blobs)
        tabs.rows = _load_rows(body["rows"], blobs)
        cell_keys, _ = tabs.cells.items()
        tabs.rows.has_cells[(cell_keys >> np.uint64(16)).astype(np.int64)] = 1
        for row, present, removed in body["uniq"]:
            urow = tabs.uniq[row] = UniqRow(BitMap64.deserialize(present))
            urow.removed = None if removed is None else BitMap64.deserialize(removed)
        chunk_events, next_offset, chunks = body["events"]
        state.events.chunk_events = chunk_events
        state.events.chunks = [_load_chunk(row, blobs) for row in chunks]
        state.events.next_offset = next_offset
        for chunk in state.events.chunks[:-1]:
            chunk.seal()
        state.ids.load(_array(blobs, body["event_ids"][0]), _array(blobs, body["event_ids"][1]))
        state.producers.load(body["producers"])
        _load_alerts(state, body["alerts"])
        # Absent from snapshots written before webhooks: nothing was delivered then.
        state.webhook_next = body.get("webhook_next", 0)
        return state
