"""Everything a PartitionState holds except caches, as plain values, written naively.

Two states with equal ``structure`` answer every read and apply every later entry the same
way: the snapshot tests compare a restored state with its original through it. Dicts become
lists of items, so insertion order counts too (it decides, for instance, how property ids are
renumbered when the table is compacted); containers carry their types so an array restored as
a list, or a dict as None, shows. The interned-account table is left out: it only shares int
objects, and a live state keeps accounts in it whose records have expired.
"""

from __future__ import annotations

from typing import Any

from pyroaring import BitMap64

from unimeter.actors.aggregates import DeadBucket, NumBase, NumRec, UniqBase, UniqRec
from unimeter.actors.partition_state import PartitionState


def _bitmap(members: BitMap64 | None) -> Any:
    return None if members is None else ("BitMap64", type(members) is BitMap64, list(members))


def _items(mapping: dict[Any, Any] | None, value: Any = lambda v: v) -> Any:
    if mapping is None:
        return None
    return ("dict", type(mapping) is dict, [(k, value(v)) for k, v in mapping.items()])


def _record(rec: Any) -> Any:
    events = (rec.ev.typecode, list(rec.ev))
    eids = None if rec.eids is None else (type(rec.eids) is list, list(rec.eids))
    if type(rec) is NumRec:
        cells = _items(rec.cells, lambda c: (c.count, c.sum, c.max, c.last))
        return ("num", events, eids, rec.sum, rec.max, rec.last, _items(rec.fired), cells)
    if type(rec) is UniqRec:
        present, removed = _bitmap(rec.present), _bitmap(rec.removed)
        cells = _items(rec.cells, _bitmap)
        return ("uniq", events, eids, present, removed, _items(rec.fired), cells)
    assert type(rec) is DeadBucket, type(rec)
    return ("dead", events, eids)


def _base(base: Any) -> Any:
    if type(base) is NumBase:
        return ("num", base.last, _items(base.cells))
    assert type(base) is UniqBase, type(base)
    return ("uniq", _bitmap(base.present), _items(base.cells, _bitmap))


def _instance(inst: Any) -> Any:
    return (
        inst.mid,
        inst.metric,
        inst.live,
        list(inst.period_index.items()),
        [
            (start, [(account, _record(rec)) for account, rec in recs.items()])
            for start, recs in inst.periods.items()
        ],
        [(account, _base(base)) for account, base in inst.base.items()],
    )


def structure(state: PartitionState) -> dict[str, Any]:
    producers = state._producers._producers
    return {
        "scalars": (
            state.partition,
            state.retention_days,
            state.dedup_window_days,
            state.applied_index,
            state.catalog_version,
            state._n_stored,
            state._next_mid,
            state._newest_day,
            state._cutoff,
        ),
        "props": ([list(m.items()) for m in state._props.maps], state._props._live_at_gc),
        "cells": list(state._cells.cells),
        "instances": [_instance(inst) for inst in state._instances.values()],
        "live": [(code, inst.mid) for code, inst in state._live.items()],
        "event_ids": (
            [(day, _bitmap(ids)) for day, ids in state._ids.days.items()],
            _bitmap(state._ids.combined),
        ),
        "producers": [
            (pid, _bitmap(p.seqs), p.last_day, list(p.replies.items()))
            for pid, p in producers.items()
        ],
        "alerts": (
            state._alerts.next_cursor,
            list(state._alerts.by_account.items()),
            list(state._alerts.ordered),
        ),
    }
