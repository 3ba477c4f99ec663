"""``python -m bench.snapshot_codec``: CPU time and size of a partition snapshot per million cells.

In one process, a ``PartitionState`` is filled through ``apply`` (5 SUM metrics, CALENDAR
periods, batches of 500 judged by the leader's admission and logged eight to an entry, as
``bench/entries.py`` builds them), then ``unimeter.state.snapshot.encode`` and ``decode`` are
timed (``time.process_time``, best of ``--repeat``) and the decoded state is encoded again to
check it gives the same bytes. With ``--baseline FILE`` another version of the snapshot module
is measured on the same states, alternating with the current one.
Workloads, each ``--cells`` (account, metric) cells:

- ``1ev``: one event per cell (the recovery benchmark's shape);
- ``10ev``: ten events per cell;
- ``ids+dims``: one event per cell, each with a UUID event id and a ``region`` property the
  metrics declare as a dimension (id hashes in the dedup index, dimension cells).

Figures are per million cells: seconds to encode, seconds to decode, megabytes.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bench import entries, workload
from bench.settings import METRIC_CODES, REGION_KEY, REGIONS
from unimeter.state import snapshot as state_snapshot
from unimeter.state.partition_state import PartitionState
from unimeter.wire.batch import EventBatch, PropertyColumn

WORKLOADS = ("1ev", "10ev", "ids+dims")


def _batches(kind: str, cells: int) -> Iterator[EventBatch]:
    rng = random.Random(7)
    gen = np.random.default_rng(7)
    accounts = [list(range(1, cells // len(METRIC_CODES) + 1))]
    for _ in range(10 if kind == "10ev" else 1):
        for raw in workload.covering_batches(rng, accounts, 500):
            batch = workload.event_batch(raw)
            if kind == "ids+dims":
                n = len(batch)
                ids, offsets = workload.uuid_ids(gen, n)
                region = gen.integers(1, len(REGIONS) + 1, n).astype(np.uint8)
                batch = EventBatch.from_columns(
                    batch.metric_codes,
                    batch.metric_index,
                    batch.account_ids,
                    batch.values,
                    property_columns=(PropertyColumn(REGION_KEY, REGIONS, region),),
                    event_id_data=ids,
                    event_id_offsets=offsets,
                )
            yield batch


def build(kind: str, cells: int) -> PartitionState:
    state = entries.new_state(workload.PLAIN, with_region=kind == "ids+dims")
    stamp = time.time_ns() // 1000 - 3_600_000_000
    seq = 1
    batches = list(_batches(kind, cells))
    for start in range(0, len(batches), 400):  # admitted a chunk at a time, as they arrive
        chunk = batches[start : start + 400]
        parts = entries.admitted(state, entries.received(chunk, first_seq=seq), stamp + seq)
        entries.apply_entries(state, entries.grouped(parts, 8, stamp + seq))
        seq += len(chunk)
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
        help="another snapshot module to measure alongside, e.g. an older commit's "
        "(git show COMMIT:unimeter/state/snapshot.py > /tmp/old_snapshot.py)",
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
