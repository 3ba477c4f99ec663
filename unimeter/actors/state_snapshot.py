"""The partition's applied state as bytes, and back (docs/operations.md §1).

Format 3, little-endian: ``b"UMPS" | u16 version | u64 n | n bytes: one CBOR map | blobs``.
A node refuses any other version (``SnapshotFormatError``) rather than guess.

The map holds the partition's scalars and tables and, per metric instance and period, its
records as *columns* (``snapshot_columns``): accounts, event counts, sums, maxima, latest rows,
unique sets as roaring bytes, and sparse columns (positions plus values) for what only some
records carry: fired thresholds, event ids, dimension cells, removed sets. A period's events are
one int64 byte string in the blob area, referenced from the map by offset and length, so neither
encoding nor decoding copies them through CBOR. Encoding and decoding do C-level work per
column, not Python work per record: a snapshot must load faster than replaying the log it
replaces. Event-id hashes are sorted uint64 arrays, not roaring bytes: random 64-bit hashes put
one value in each roaring container, and serializing those costs more than listing them.

Only state is written, never caches (hot-loop period caches, recurring-set caches, cell lookups
by property map): those are rebuilt on demand, so a restored state answers every read exactly
like the original and applies every further entry exactly like it. Every dict is written and
read back in its insertion order, so ``encode(decode(b)) == b`` and a restored replica's later
snapshots are byte-identical to those of a replica that never restarted.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from itertools import chain, repeat, starmap
from operator import attrgetter, itemgetter, rshift
from typing import Any

import cbor2
from pyroaring import BitMap64

from unimeter.actors import snapshot_columns as c
from unimeter.actors.aggregates import (
    Base,
    DeadBucket,
    Instance,
    NumBase,
    NumCell,
    NumRec,
    Record,
    UniqBase,
    UniqRec,
)
from unimeter.actors.alerts import AlertLog
from unimeter.actors.entries import LiveMetric
from unimeter.actors.partition_state import PartitionState
from unimeter.actors.snapshot_columns import IntColumn
from unimeter.model import MetricSchema
from unimeter.wire.messages import StoredAlert

FORMAT_VERSION = 3
_MAGIC = b"UMPS"
_PREFIX = struct.Struct("<4sH")  # every version starts so
_BODY_BYTES = struct.Struct("<Q")
_NUM, _UNIQ, _DEAD = 0, 1, 2
_RECORD_CLASS: dict[int, type] = {_NUM: NumRec, _UNIQ: UniqRec, _DEAD: DeadBucket}
_BASE_CLASS: dict[int, type] = {_NUM: NumBase, _UNIQ: UniqBase}


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


def _kind(inst: Instance) -> int:
    return _DEAD if not inst.live else _UNIQ if inst.unique else _NUM


# --------------------------------------------------------------------------- record columns


def _dump_eids(eids: list[Any]) -> list[Any] | None:
    where, lists = c.present(eids)
    return [c.ints(where), list(chain.from_iterable(lists))] if where else None


def _load_eids(records: list[Any], lengths: Sequence[int], column: list[Any] | None) -> None:
    if column is not None:
        where = c.ints_of(column[0])
        rows = map(rshift, map(lengths.__getitem__, where), repeat(2))
        c.set_at(records, "eids", where, c.lists(column[1], list(rows)))


def _dump_fired(fired: list[Any]) -> list[Any] | None:
    where, maps = c.present(fired)
    if not where:
        return None
    lengths, codes, multiples, _ = c.dicts(maps)
    return [c.ints(where), lengths, c.strs(codes), c.ints(multiples)]


def _load_fired(records: list[Any], column: list[Any] | None) -> None:
    if column is not None:
        where, lengths, codes, multiples = column
        maps = c.dicts_of(lengths, c.strs_of(codes), c.ints_of(multiples))
        c.set_at(records, "fired", c.ints_of(where), maps)


def _dump_bitmap_cells(cells: list[Any]) -> list[Any] | None:
    where, maps = c.present(cells)
    if not where:
        return None
    lengths, ids, members, _ = c.dicts(maps)
    return [c.ints(where), lengths, c.ints(ids), list(map(BitMap64.serialize, members))]


def _load_bitmap_cells(owners: list[Any], column: list[Any] | None) -> None:
    if column is not None:
        where, lengths, ids, blobs = column
        maps = c.dicts_of(lengths, c.ints_of(ids), list(map(BitMap64.deserialize, blobs)))
        c.set_at(owners, "cells", c.ints_of(where), maps)


_NUM_INTS = ("sum", "max", "last")
_NUM_CELL_INTS = ("count", "sum", "max", "last")


def _dump_num(records: list[NumRec]) -> tuple[IntColumn, bytes, list[Any]]:
    lengths, events, ints, refs = c.gather(records, _NUM_INTS, ("eids", "fired", "cells"))
    where, maps = c.present(refs["cells"])
    cells: list[Any] | None = None
    if where:
        cell_lengths, ids, _, columns = c.dicts(maps, _NUM_CELL_INTS)
        cells = [c.ints(where), cell_lengths, c.ints(ids), *columns]
    block = [
        _dump_eids(refs["eids"]),
        *(ints[name] for name in _NUM_INTS),
        _dump_fired(refs["fired"]),
        cells,
    ]
    return lengths, events, block


def _load_num(block: list[Any], sizes: Sequence[int], evs: list[array[int]]) -> list[Any]:
    eids, sums, maxima, lasts, fired, cells = block
    records = list(map(NumRec, c.ints_of(sums), c.ints_of(maxima), evs))
    last_rows = c.ints_of(lasts)
    if any(last_rows):
        c.set_attrs(records, "last", last_rows)
    _load_eids(records, sizes, eids)
    _load_fired(records, fired)
    if cells is not None:
        where, cell_lengths, ids, *columns = cells
        flat = list(map(NumCell, *map(c.ints_of, columns)))
        maps = c.dicts_of(cell_lengths, c.ints_of(ids), flat)
        c.set_at(records, "cells", c.ints_of(where), maps)
    return records


def _dump_uniq(records: list[UniqRec]) -> tuple[IntColumn, bytes, list[Any]]:
    names = ("eids", "present", "removed", "fired", "cells")
    lengths, events, _, refs = c.gather(records, (), names)
    where, removed = c.present(refs["removed"])
    block = [
        _dump_eids(refs["eids"]),
        list(map(BitMap64.serialize, refs["present"])),
        [c.ints(where), list(map(BitMap64.serialize, removed))] if where else None,
        _dump_fired(refs["fired"]),
        _dump_bitmap_cells(refs["cells"]),
    ]
    return lengths, events, block


def _load_uniq(block: list[Any], sizes: Sequence[int], evs: list[array[int]]) -> list[Any]:
    eids, present, removed, fired, cells = block
    records = list(map(UniqRec, map(BitMap64.deserialize, present), evs))
    _load_eids(records, sizes, eids)
    if removed is not None:
        where, blobs = removed
        c.set_at(records, "removed", c.ints_of(where), map(BitMap64.deserialize, blobs))
    _load_fired(records, fired)
    _load_bitmap_cells(records, cells)
    return records


def _dump_dead(records: list[DeadBucket]) -> tuple[IntColumn, bytes, list[Any]]:
    lengths, events, _, refs = c.gather(records, (), ("eids",))
    return lengths, events, [_dump_eids(refs["eids"])]


def _load_dead(block: list[Any], sizes: Sequence[int], evs: list[array[int]]) -> list[Any]:
    records = list(map(DeadBucket, evs, repeat(None)))
    _load_eids(records, sizes, block[0])
    return records


_DUMP_RECORDS: dict[int, Any] = {_NUM: _dump_num, _UNIQ: _dump_uniq, _DEAD: _dump_dead}
_LOAD_RECORDS: dict[int, Any] = {_NUM: _load_num, _UNIQ: _load_uniq, _DEAD: _load_dead}


def _dump_period(kind: int, recs: dict[int, Record], blobs: c.BlobWriter) -> list[Any]:
    records = list(recs.values())
    assert set(map(type, records)) <= {_RECORD_CLASS[kind]}, "records of another kind"
    lengths, events, block = _DUMP_RECORDS[kind](records)
    return [c.ints(recs.keys()), lengths, blobs.add(events), block]


def _load_period(
    kind: int, row: list[Any], interned: dict[int, int], blobs: memoryview
) -> dict[int, Record]:
    accounts_column, lengths, events, block = row
    accounts = c.ints_of(accounts_column)
    sizes, evs = c.events_of(lengths, c.blob_at(blobs, events))
    records: list[Record] = _LOAD_RECORDS[kind](block, sizes, evs)
    return dict(zip(map(interned.setdefault, accounts, accounts), records, strict=True))


# --------------------------------------------------------------------------- bases


def _latest_columns(latests: list[tuple[int, int, int]]) -> list[IntColumn]:
    return [c.ints(map(itemgetter(i), latests)) for i in range(3)]


def _latests_of(columns: list[IntColumn]) -> list[tuple[int, int, int]]:
    ts, offset, value = map(c.ints_of, columns)
    return list(zip(ts, offset, value, strict=True))


def _dump_bases(kind: int, bases: dict[int, Base]) -> list[Any] | None:
    if not bases:
        return None
    owners = list(bases.values())
    assert set(map(type, owners)) <= {_BASE_CLASS[kind]}, "bases of another kind"
    accounts = c.ints(bases.keys())
    if kind == _UNIQ:
        present = list(map(BitMap64.serialize, c.attrs(owners, "present")))
        return [accounts, present, _dump_bitmap_cells(c.attrs(owners, "cells"))]
    where, lasts = c.present(c.attrs(owners, "last"))
    cell_where, maps = c.present(c.attrs(owners, "cells"))
    cells: list[Any] | None = None
    if cell_where:
        lengths, ids, flat, _ = c.dicts(maps)
        cells = [c.ints(cell_where), lengths, c.ints(ids), *_latest_columns(flat)]
    return [accounts, [c.ints(where), *_latest_columns(lasts)], cells]


def _load_bases(kind: int, row: list[Any]) -> dict[int, Base]:
    accounts = c.ints_of(row[0])
    owners: list[Any] = list(starmap(_BASE_CLASS[kind], repeat((), len(accounts))))
    if kind == _UNIQ:
        c.set_attrs(owners, "present", map(BitMap64.deserialize, row[1]))
        _load_bitmap_cells(owners, row[2])
    else:
        where, *lasts = row[1]
        c.set_at(owners, "last", c.ints_of(where), _latests_of(lasts))
        if row[2] is not None:
            cell_where, lengths, ids, *latest = row[2]
            maps = c.dicts_of(lengths, c.ints_of(ids), _latests_of(latest))
            c.set_at(owners, "cells", c.ints_of(cell_where), maps)
    return dict(zip(accounts, owners, strict=True))


# --------------------------------------------------------------------------- instances


def _dump_instance(inst: Instance, blobs: c.BlobWriter) -> list[Any]:
    kind = _kind(inst)
    return [
        inst.mid,
        inst.metric.generation,
        inst.metric.schema.to_wire(),
        inst.live,
        c.ints(inst.period_index.keys()),
        c.ints(map(itemgetter(1), inst.period_index.values())),
        [[start, _dump_period(kind, recs, blobs)] for start, recs in inst.periods.items()],
        _dump_bases(kind, inst.base),
    ]


def _load_instance(row: list[Any], interned: dict[int, int], blobs: memoryview) -> Instance:
    mid, generation, schema, live, starts, ends, periods, bases = row
    inst = Instance(mid, LiveMetric(generation=generation, schema=MetricSchema.from_wire(schema)))
    inst.live = live
    kind = _kind(inst)
    inst.period_index = {s: (s, e) for s, e in zip(c.ints_of(starts), c.ints_of(ends), strict=True)}
    for start, period in periods:
        inst.periods[inst.period_index[start][0]] = _load_period(kind, period, interned, blobs)
    if bases is not None:
        inst.base = _load_bases(kind, bases)
    return inst


# --------------------------------------------------------------------------- alerts


def _dump_alerts(log: AlertLog) -> list[Any]:
    lists = list(log.by_account.values())
    flat = list(chain.from_iterable(lists))
    return [
        log.next_cursor,
        c.ints(log.by_account.keys()),
        c.ints(map(len, lists)),
        c.strs(c.attrs(flat, "metric_code")),
        c.strs(c.attrs(flat, "threshold_code")),
        c.ints(c.attrs(flat, "value_at_cross")),
        c.ints(c.attrs(flat, "triggered_at_us")),
        c.ints(c.attrs(flat, "cursor")),
    ]


def _load_alerts(log: AlertLog, row: list[Any]) -> None:
    next_cursor, accounts_col, lengths_col, metrics, thresholds, values, stamps, cursors = row
    accounts = c.ints_of(accounts_col)
    lengths = c.ints_of(lengths_col)
    owners = chain.from_iterable(map(repeat, accounts, lengths))
    columns = zip(
        owners,
        c.strs_of(metrics),
        c.strs_of(thresholds),
        c.ints_of(values),
        c.ints_of(stamps),
        c.ints_of(cursors),
        strict=True,
    )
    alerts = [
        StoredAlert(
            account_id=account,
            metric_code=metric,
            threshold_code=threshold,
            value_at_cross=value,
            triggered_at_us=at_us,
            cursor=cursor,
        )
        for account, metric, threshold, value, at_us, cursor in columns
    ]
    log.next_cursor = next_cursor
    log.by_account = dict(zip(accounts, c.split(alerts, lengths), strict=True))
    log.ordered = sorted(alerts, key=attrgetter("cursor"))  # cursors follow append order


# --------------------------------------------------------------------------- the whole state


def encode(state: PartitionState) -> bytes:
    with c.gc_paused():
        blobs = c.BlobWriter()
        props = state._props
        prop_lengths, prop_keys, prop_values, _ = c.dicts(props.maps)
        body = {
            "partition": state.partition,
            "retention_days": state.retention_days,
            "dedup_window_days": state.dedup_window_days,
            "applied_index": state.applied_index,
            "catalog_version": state.catalog_version,
            "n_stored": state._n_stored,
            "next_mid": state._next_mid,
            "newest_day": state._newest_day,
            "cutoff": state._cutoff,
            # The live count at the last compaction decides when the next one runs.
            "props": [prop_lengths, c.strs(prop_keys), c.strs(prop_values), props._live_at_gc],
            "cells": [list(cell) for cell in state._cells.cells],
            "instances": [_dump_instance(inst, blobs) for inst in state._instances.values()],
            "event_ids": [[day, c.u64s(ids)] for day, ids in state._ids.days.items()],
            "producers": state._producers.dump(),
            "alerts": _dump_alerts(state._alerts),
        }
        encoded = cbor2.dumps(body)
        head = _PREFIX.pack(_MAGIC, FORMAT_VERSION) + _BODY_BYTES.pack(len(encoded))
        return b"".join([head, encoded, *blobs.parts])


def decode(data: bytes) -> PartitionState:
    """The state ``encode`` wrote; SnapshotFormatError for another format version."""
    version = format_version(data)
    if version != FORMAT_VERSION:
        raise SnapshotFormatError(version)
    with c.gc_paused():
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
        state._n_stored = body["n_stored"]
        state._next_mid = body["next_mid"]
        state._newest_day = body["newest_day"]
        state._cutoff = body["cutoff"]
        prop_lengths, prop_keys, prop_values, live_at_gc = body["props"]
        state._props.restore(c.dicts_of(prop_lengths, c.strs_of(prop_keys), c.strs_of(prop_values)))
        state._props._live_at_gc = live_at_gc
        state._cells.restore([tuple(map(tuple, cell)) for cell in body["cells"]])
        for row in body["instances"]:
            inst = _load_instance(row, state._accounts, blobs)
            state._instances[inst.mid] = inst
            if inst.live:
                state._live[inst.code] = inst
        event_ids = state._ids
        for day, blob in body["event_ids"]:
            event_ids.days[day] = BitMap64(c.u64s_of(blob))
            event_ids.combined |= event_ids.days[day]
        state._producers.load(body["producers"])
        _load_alerts(state._alerts, body["alerts"])
        return state
