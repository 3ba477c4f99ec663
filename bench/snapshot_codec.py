"""``python -m bench.snapshot_codec``: CPU time and size of a partition snapshot per million cells.

In one process, a ``PartitionState`` is filled through ``apply`` (batch-500 entries, 5 SUM
metrics, CALENDAR periods, every event stamped as the leader logs it), then
``state_snapshot.encode`` and ``decode`` are timed (``time.process_time``, best of
``--repeat``) and the decoded state is encoded again to check it gives the same bytes. With
``--baseline FILE`` another version of ``state_snapshot.py`` is measured on the same states,
alternating with the current one.
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
import importlib.util
import json
import random
import time
from array import array
from collections.abc import Callable, Iterator
from typing import Any

from bench import workload
from bench.settings import METRIC_CODES, REGION_KEY, REGIONS
from unimeter.state import snapshot as state_snapshot
from unimeter.state.entries import BatchEntry, LiveMetric, SchemaEntry
from unimeter.state.partition_state import PartitionState

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


def _load_codec(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("baseline_state_snapshot", path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.process_time()
    result = call()
    return time.process_time() - t0, result


def measure(kind: str, cells: int, repeat: int, codecs: dict[str, Any]) -> dict[str, Any]:
    """Each codec encodes the same state and decodes its own bytes, ``repeat`` rounds with the
    codecs alternating (so a busy neighbour weighs on all of them alike); best round kept."""
    state = build(kind, cells)
    encode_s = dict.fromkeys(codecs, float("inf"))
    decode_s = dict.fromkeys(codecs, float("inf"))
    data: dict[str, bytes] = {}
    for _ in range(repeat):
        for name, codec in codecs.items():
            took, data[name] = _timed(lambda codec=codec, state=state: codec.encode(state))
            encode_s[name] = min(encode_s[name], took)
    del state
    same = {}
    for _ in range(repeat):
        for name, codec in codecs.items():
            took, restored = _timed(lambda codec=codec, name=name: codec.decode(data[name]))
            decode_s[name] = min(decode_s[name], took)
            same[name] = codec.encode(restored) == data[name]
            del restored
    scale = 1e6 / cells
    out: dict[str, Any] = {"workload": kind, "cells": cells}
    for name in codecs:
        out[name] = {
            "encode_s_per_m_cells": round(encode_s[name] * scale, 3),
            "decode_s_per_m_cells": round(decode_s[name] * scale, 3),
            "mb_per_m_cells": round(len(data[name]) * scale / 1e6, 1),
            "re_encode_identical": same[name],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument(
        "--baseline",
        metavar="FILE",
        help="another state_snapshot.py to measure alongside, e.g. an older commit's "
        "(git show COMMIT:unimeter/actors/state_snapshot.py > /tmp/old_snapshot.py)",
    )
    args = parser.parse_args()
    codecs: dict[str, Any] = {}
    if args.baseline:
        codecs["baseline"] = _load_codec(args.baseline)
    codecs["current"] = state_snapshot
    for kind in args.only.split(","):
        assert kind in WORKLOADS, f"unknown workload {kind!r}; one of {WORKLOADS}"
        print(json.dumps(measure(kind, args.cells, args.repeat, codecs)), flush=True)


if __name__ == "__main__":
    main()
