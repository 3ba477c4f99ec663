"""``python -m bench.apply_layouts``: what the per-record event arrays cost the apply loop.

Gap 1 of docs/benchmarks.md proposes keeping each batch's columns as one segment instead of
copying every event into its (account, period) record. This measures the two loop shapes on the
benchmark's workload (10,000 accounts, 5 SUM metrics, batches of 500, one stamp per batch), in
CPU time, single process, cycle collector off, best of ``--repeat``:

- ``records``: the shape of ``PartitionState._apply_plain`` today: find the record, append the
  event's four words to its ``array('q')``, update sum, max and the latest row;
- ``aggregates``: the same record lookup and aggregate updates, with the latest event kept as
  three fields instead of a row, and no per-event copy (the segment layout's apply);
- ``partition_state``: the real ``PartitionState.apply`` on the same batches, for reference.

The two loops are sketches of the layouts, not the product's code; only ``partition_state`` is.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from array import array
from collections.abc import Callable

from bench import settings, workload
from unimeter.actors.entries import BatchEntry, LiveMetric, SchemaEntry
from unimeter.actors.partition_state import PartitionState

# The first offset and the columns (metric index, account, stamp, value) of one batch.
Batch = tuple[int, "array[int]", "array[int]", "array[int]", "array[int]"]


class _WithEvents:
    __slots__ = ("ev", "last", "max", "sum")

    def __init__(self, value: int, ev: array[int]) -> None:
        self.sum = value
        self.max = value
        self.last = 0
        self.ev = ev


class _AggregatesOnly:
    __slots__ = ("count", "last_offset", "last_ts", "last_value", "max", "sum")

    def __init__(self, offset: int, ts: int, value: int) -> None:
        self.sum = self.max = self.last_value = value
        self.count = 1
        self.last_ts = ts
        self.last_offset = offset


def _records(batches: list[Batch]) -> None:
    maps: list[dict[int, _WithEvents]] = [{} for _ in range(len(settings.METRIC_CODES))]
    for first, metrics, accounts, stamps, values in batches:
        offsets = range(first, first + len(accounts))
        columns = zip(offsets, metrics, accounts, stamps, values, strict=True)
        for offset, metric, account, ts, value in columns:
            recs = maps[metric]
            rec = recs.get(account)
            if rec is None:
                recs[account] = _WithEvents(value, array("q", (offset, ts, value, 0)))
                continue
            ev = rec.ev
            ev.extend((offset, ts, value, 0))
            rec.sum += value
            if value > rec.max:
                rec.max = value
            if ts >= ev[(rec.last << 2) + 1]:
                rec.last = (len(ev) >> 2) - 1


def _aggregates(batches: list[Batch]) -> None:
    maps: list[dict[int, _AggregatesOnly]] = [{} for _ in range(len(settings.METRIC_CODES))]
    for first, metrics, accounts, stamps, values in batches:
        offsets = range(first, first + len(accounts))
        columns = zip(offsets, metrics, accounts, stamps, values, strict=True)
        for offset, metric, account, ts, value in columns:
            recs = maps[metric]
            rec = recs.get(account)
            if rec is None:
                recs[account] = _AggregatesOnly(offset, ts, value)
                continue
            rec.sum += value
            rec.count += 1
            if value > rec.max:
                rec.max = value
            if ts >= rec.last_ts:
                rec.last_ts = ts
                rec.last_value = value
                rec.last_offset = offset


def _timed(run: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        t0 = time.process_time()
        run()
        best = min(best, time.process_time() - t0)
        gc.enable()
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.apply_layouts", description=__doc__)
    p.add_argument("--frames", type=int, default=2000, help="batches of 500 (default 2000)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    rng = random.Random(51)
    accounts = [list(range(1, settings.ACCOUNTS + 1))]
    stamp = time.time_ns() // 1000
    raws = list(workload.random_batches(rng, accounts, 500, args.frames))
    batches: list[Batch] = []
    entries: list[BatchEntry] = []
    first = 0
    for i, raw in enumerate(raws):
        batch = workload.event_batch(raw, timestamps=array("q", [stamp]) * len(raw.accounts))
        assert batch.timestamps is not None
        batches.append(
            (first, batch.metric_index, batch.account_ids, batch.timestamps, batch.values)
        )
        entries.append(
            BatchEntry(producer_id=1, seq=i + 1, stamp_us=stamp, batch=batch,
                       n_duplicates=0, n_rejected=0, rejected=())
        )  # fmt: skip
        first += len(raw.accounts)
    schemas = sorted(workload.metric_schemas(), key=lambda x: x.code)
    metrics = tuple(LiveMetric(generation=1, schema=schema) for schema in schemas)

    def real() -> None:
        state = PartitionState(0)
        state.apply(1, SchemaEntry(catalog_version=1, metrics=metrics))
        for index, entry in enumerate(entries, start=2):
            state.apply(index, entry)

    events = first
    codes = len(settings.METRIC_CODES)
    print(f"{events:,} events, {settings.ACCOUNTS:,} accounts, {codes} SUM metrics")
    for name, run in (
        ("records", lambda: _records(batches)),
        ("aggregates", lambda: _aggregates(batches)),
        ("partition_state", real),
    ):
        took = _timed(run, args.repeat)
        print(f"  {name:16} {events / took:12,.0f} events/s  {took / events * 1e6:6.2f} us/event")


if __name__ == "__main__":
    main()
