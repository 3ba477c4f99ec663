"""The partition's applied state as one CBOR item, and back (DESIGN §3.3 snapshots).

Only state is written, never caches (hot-loop period caches, recurring-set caches, cell lookups
by property map): those are rebuilt on demand, so a restored state answers every read exactly
like the original and applies every further entry exactly like it. Roaring sets travel as their
portable serialization; event arrays as little-endian int64 bytes.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any

import cbor2
from pyroaring import BitMap64

from unimeter.actors.aggregates import (
    DeadBucket,
    Instance,
    NumBase,
    NumCell,
    NumRec,
    Record,
    UniqBase,
    UniqRec,
)
from unimeter.actors.entries import LiveMetric
from unimeter.actors.partition_state import PartitionState
from unimeter.model import MetricSchema

FORMAT_VERSION = 2
_NUM, _UNIQ, _DEAD = 0, 1, 2


def _ev_bytes(ev: array[int]) -> bytes:
    if sys.byteorder == "little":
        return ev.tobytes()
    swapped = array("q", ev)
    swapped.byteswap()
    return swapped.tobytes()


def _ev_array(blob: bytes) -> array[int]:
    ev = array("q")
    ev.frombytes(blob)
    if sys.byteorder != "little":
        ev.byteswap()
    return ev


def _fired(fired: dict[str, int] | None) -> list[list[Any]] | None:
    return None if fired is None else [[code, n] for code, n in sorted(fired.items())]


def _unfired(rows: list[list[Any]] | None) -> dict[str, int] | None:
    return None if rows is None else {code: n for code, n in rows}


def _dump_record(rec: Record) -> list[Any]:
    if isinstance(rec, NumRec):
        cells = (
            None
            if rec.cells is None
            else [[c, x.count, x.sum, x.max, x.last] for c, x in sorted(rec.cells.items())]
        )
        return [
            _NUM,
            rec.sum,
            rec.max,
            rec.last,
            _fired(rec.fired),
            _ev_bytes(rec.ev),
            rec.eids,
            cells,
        ]
    if isinstance(rec, UniqRec):
        ucells = (
            None
            if rec.cells is None
            else [[c, members.serialize()] for c, members in sorted(rec.cells.items())]
        )
        removed = None if rec.removed is None else rec.removed.serialize()
        return [
            _UNIQ,
            rec.present.serialize(),
            removed,
            _fired(rec.fired),
            _ev_bytes(rec.ev),
            rec.eids,
            ucells,
        ]
    return [_DEAD, _ev_bytes(rec.ev), rec.eids]


def _load_record(row: list[Any]) -> Record:
    kind = row[0]
    if kind == _NUM:
        _, total, maximum, last, fired, ev, eids, cells = row
        num = NumRec(total, maximum, _ev_array(ev))
        num.last, num.fired, num.eids = last, _unfired(fired), eids
        if cells is not None:
            num.cells = {c: NumCell(n, s, m, r) for c, n, s, m, r in cells}
        return num
    if kind == _UNIQ:
        _, present, removed, fired, ev, eids, cells = row
        uniq = UniqRec(BitMap64.deserialize(present), _ev_array(ev))
        if removed is not None:
            uniq.removed = BitMap64.deserialize(removed)
        uniq.fired, uniq.eids = _unfired(fired), eids
        if cells is not None:
            uniq.cells = {c: BitMap64.deserialize(b) for c, b in cells}
        return uniq
    assert kind == _DEAD, f"unknown record kind {kind}"
    return DeadBucket(_ev_array(row[1]), row[2])


def _dump_base(base: NumBase | UniqBase) -> list[Any]:
    if isinstance(base, NumBase):
        cells = None if base.cells is None else [[c, *x] for c, x in sorted(base.cells.items())]
        return [_NUM, None if base.last is None else list(base.last), cells]
    ucells = (
        None
        if base.cells is None
        else [[c, members.serialize()] for c, members in sorted(base.cells.items())]
    )
    return [_UNIQ, base.present.serialize(), ucells]


def _load_base(row: list[Any]) -> NumBase | UniqBase:
    if row[0] == _NUM:
        num = NumBase()
        num.last = None if row[1] is None else (row[1][0], row[1][1], row[1][2])
        if row[2] is not None:
            num.cells = {c: (ts, off, v) for c, ts, off, v in row[2]}
        return num
    uniq = UniqBase()
    uniq.present = BitMap64.deserialize(row[1])
    if row[2] is not None:
        uniq.cells = {c: BitMap64.deserialize(b) for c, b in row[2]}
    return uniq


def _dump_instance(inst: Instance) -> list[Any]:
    return [
        inst.mid,
        inst.metric.generation,
        inst.metric.schema.to_wire(),
        inst.live,
        [[s, e] for s, e in sorted(inst.period_index.values())],
        [
            [start, [[account, _dump_record(rec)] for account, rec in recs.items()]]
            for start, recs in sorted(inst.periods.items())
        ],
        [[account, _dump_base(base)] for account, base in inst.base.items()],
    ]


def _load_instance(row: list[Any], accounts: dict[int, int]) -> Instance:
    mid, generation, schema, live, period_index, period_maps, bases = row
    metric = LiveMetric(generation=generation, schema=MetricSchema.from_wire(schema))
    inst = Instance(mid, metric)
    inst.live = live
    inst.period_index = {s: (s, e) for s, e in period_index}
    for start, records in period_maps:
        inst.periods[inst.period_index[start][0]] = {
            accounts.setdefault(account, account): _load_record(rec) for account, rec in records
        }
    for account, base in bases:
        inst.base[account] = _load_base(base)
    return inst


def encode(state: PartitionState) -> bytes:
    body = {
        "format": FORMAT_VERSION,
        "partition": state.partition,
        "retention_days": state.retention_days,
        "dedup_window_days": state.dedup_window_days,
        "applied_index": state.applied_index,
        "catalog_version": state.catalog_version,
        "n_stored": state._n_stored,
        "next_mid": state._next_mid,
        "newest_day": state._newest_day,
        "cutoff": state._cutoff,
        "props": [list(m.items()) for m in state._props.maps],
        "cells": [list(c) for c in state._cells.cells],
        "instances": [_dump_instance(inst) for inst in state._instances.values()],
        "event_ids": state._ids.dump(),
        "producers": state._producers.dump(),
        "alerts": state._alerts.dump(),
    }
    return cbor2.dumps(body)


def decode(data: bytes) -> PartitionState:
    body = cbor2.loads(data)
    assert body["format"] == FORMAT_VERSION, f"unknown snapshot format {body['format']}"
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
    state._props.restore([{k: v for k, v in pairs} for pairs in body["props"]])
    state._cells.restore([tuple((k, v) for k, v in cell) for cell in body["cells"]])
    for row in body["instances"]:
        inst = _load_instance(row, state._accounts)
        state._instances[inst.mid] = inst
        if inst.live:
            state._live[inst.code] = inst
    state._ids.load(body["event_ids"])
    state._producers.load(body["producers"])
    state._alerts.load(body["alerts"])
    return state
