"""``python -m bench.snapshot_codec``: CPU time and size of a partition snapshot per million cells.

In one process, a ``PartitionState`` is filled through ``apply`` (batch-500 entries, 5 SUM
metrics, CALENDAR periods, every event stamped as the leader logs it), then
``state_snapshot.encode`` and ``decode`` are timed (``time.process_time``, best of
``--repeat``) and the decoded state is encoded again to check it gives the same bytes.
Workloads, each ``--cells`` (account, metric) cells:

- ``1ev``: one event per cell (the recovery benchmark's shape);
- ``10ev``: ten events per cell;
- ``ids+dims``: one event per cell, each with an event id and a ``region`` property the
  metrics declare as a dimension (the sparse columns: event ids, dimension cells).

Figures are per million cells: seconds to encode, seconds to decode, megabytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import time
from array import array
from collections.abc import Iterator
from typing import Any

from bench import workload
from bench.settings import METRIC_CODES, REGION_KEY, REGIONS
from unimeter.actors import state_snapshot
from unimeter.actors.entries import BatchEntry, LiveMetric, SchemaEntry
from unimeter.actors.partition_state import PartitionState

WORKLOADS = ("1ev", "10ev", "ids+dims")


def _entries(kind: str, cells: int, stamp: int) -> Iterator[BatchEntry]:
    rng = random.Random(7)
    accounts = [list(range(1, cells // len(METRIC_CODES) + 1))]
    rounds = 10 if kind == "10ev" else 1
    serial = 0
    for _ in range(rounds):
        for raw in workload.covering_batches(rng, accounts, 500):
            n = len(raw.accounts)
            batch = workload.event_batch(raw, timestamps=array("q", [stamp]) * n)
            if kind == "ids+dims":
                ids = tuple(f"e{serial + i}" for i in range(n))
                props = tuple({REGION_KEY: rng.choice(REGIONS)} for _ in range(n))
                batch = dataclasses.replace(batch, properties=props, event_ids=ids)
            serial += n
            yield BatchEntry(
                producer_id=0,
                seq=0,
                stamp_us=stamp,
                batch=batch,
                n_duplicates=0,
                n_rejected=0,
                rejected=(),
            )
            stamp += 1


def build(kind: str, cells: int) -> PartitionState:
    state = PartitionState(0)
    schemas = workload.metric_schemas(with_region=kind == "ids+dims")
    metrics = tuple(
        LiveMetric(generation=1, schema=s) for s in sorted(schemas, key=lambda x: x.code)
    )
    state.apply(1, SchemaEntry(catalog_version=1, metrics=metrics))
    stamp = time.time_ns() // 1000 - 3_600_000_000
    for entry in _entries(kind, cells, stamp):
        state.apply(state.applied_index + 1, entry)
    return state


def measure(kind: str, cells: int, repeat: int) -> dict[str, Any]:
    state = build(kind, cells)
    gc.collect()
    encode_s = decode_s = float("inf")
    data = b""
    for _ in range(repeat):
        t0 = time.process_time()
        data = state_snapshot.encode(state)
        encode_s = min(encode_s, time.process_time() - t0)
    del state
    gc.collect()
    restored = None
    for _ in range(repeat):
        restored = None
        gc.collect()
        t0 = time.process_time()
        restored = state_snapshot.decode(data)
        decode_s = min(decode_s, time.process_time() - t0)
    assert restored is not None
    same = state_snapshot.encode(restored) == data
    scale = 1e6 / cells
    return {
        "workload": kind,
        "cells": cells,
        "encode_s_per_m_cells": round(encode_s * scale, 3),
        "decode_s_per_m_cells": round(decode_s * scale, 3),
        "mb_per_m_cells": round(len(data) * scale / 1e6, 1),
        "re_encode_identical": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", default=",".join(WORKLOADS))
    args = parser.parse_args()
    for kind in args.only.split(","):
        assert kind in WORKLOADS, f"unknown workload {kind!r}; one of {WORKLOADS}"
        print(json.dumps(measure(kind, args.cells, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
