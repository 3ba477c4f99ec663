"""A range query cutting a period, as the account's history grows: 10k, 100k and 1M events.

In a fresh spawned process per size, a ``PartitionState`` with the plain workload's metrics is
given one account holding N events of one SUM metric, all in one CALENDAR period (the month
before the current one, so every timestamp is in the past and accepted): producer timestamps
spread evenly over the period's first five days, in rising order (a producer sending as it
goes), batches of 500 made into entries of eight parts by the leader's admission
(``bench/entries.py``). Each read asks for four of those five days: a range that starts half a
day in (plus a random jitter of up to an hour, so no two reads are the same) and is four days
long, so both of its ends cut the period and the answer cannot come from the period's total.

Timed as the ``server-queries`` section times reads (``time.perf_counter_ns``, this process):
the ``PartitionState.query`` call alone, and decode of the Query frame + the state call +
``encode_response`` of its AggReply. The first reads (``WARMUP``) are not kept: a state may
build an index the first time a read needs it. Bounded by a count and a time per size.

The bar (issue 10): at 1M events, p50 <= 1 ms server side, and within 2x of the same read at
10k events.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np

from bench import entries, procs, settings, workload
from bench.inprocess import read
from bench.report import Figure, Results
from bench.settings import Settings
from bench.stats import summary
from unimeter import periods
from unimeter.wire import messages as m
from unimeter.wire.batch import EventBatch
from unimeter.wire.codec import ClientCodec, ServerCodec

SIZES = (10_000, 100_000, 1_000_000)
ACCOUNT = 4242
METRIC = settings.METRIC_CODES[0]
DAYS = 5
WARMUP = 3
TARGET_P50_US = 1_000.0
TARGET_RATIO_TO_10K = 2.0
US_PER_HOUR = 3_600_000_000


def _period(now_us: int) -> tuple[int, int]:
    """The calendar month before the one holding ``now_us``."""
    this_start, _ = periods.calendar_bounds(now_us, 1)
    return periods.calendar_bounds(this_start - 1, 1)


def _batches(n: int, start_us: int, rng: np.random.Generator) -> list[EventBatch]:
    stamps = start_us + np.sort(rng.integers(0, DAYS * periods.US_PER_DAY, n))
    values = rng.integers(1, settings.VALUE_MAX + 1, n)
    return [
        EventBatch(
            metric_codes=(METRIC,),
            metric_index=np.zeros(min(500, n - i), np.uint8),
            account_ids=np.full(min(500, n - i), ACCOUNT, np.uint64),
            values=values[i : i + 500],
            timestamps=stamps[i : i + 500],
        )
        for i in range(0, n, 500)
    ]


def measure(n: int, samples: int, time_s_max: float) -> dict[str, Any]:
    now_us = time.time_ns() // 1000
    start_us, end_us = _period(now_us)
    gen = np.random.default_rng(n)
    state = entries.new_state(workload.PLAIN)
    built = time.perf_counter()
    batch_entries = entries.grouped(
        entries.admitted(state, entries.received(_batches(n, start_us, gen)), now_us), 8, now_us
    )
    stored = entries.apply_entries(state, batch_entries)
    assert stored == n, (stored, n)
    build_s = time.perf_counter() - built
    del batch_entries
    entries.node_gc()
    rng = random.Random(n)
    client, server = ClientCodec(), ServerCodec()
    clock = time.perf_counter_ns
    state_us: list[float] = []
    path_us: list[float] = []
    deadline = time.perf_counter() + time_s_max
    i = 0
    while i < WARMUP + samples and (i < WARMUP + 5 or time.perf_counter() < deadline):
        first = start_us + US_PER_HOUR * 12 + rng.randrange(US_PER_HOUR)
        query = m.Query(
            partition=0,
            account_id=ACCOUNT,
            metric_code=METRIC,
            start_us=first,
            end_us=first + 4 * periods.US_PER_DAY,
        )
        frame = client.encode_request(i + 1, query)
        t0 = clock()
        server.feed(frame)
        request = server.next_frame()
        assert isinstance(request, m.RequestFrame)
        t1 = clock()
        reply = read(state, request.message, now_us)
        t2 = clock()
        server.encode_response(request.request_id, 0, reply)
        t3 = clock()
        assert 0 < reply.value.count < n, reply.value  # the range cuts the events
        if i >= WARMUP:
            state_us.append((t2 - t1) / 1000)
            path_us.append((t3 - t0) / 1000)
        i += 1
    return {
        "events": n,
        "period": [start_us, end_us],
        "build_s": round(build_s, 3),
        "state_us": summary(state_us),
        "server_path_us": summary(path_us),
    }


def range_read_figures(res: Results, s: Settings) -> None:
    for n in SIZES:
        out = procs.call_in_process(
            measure, n, s.range_read_samples, s.range_read_time_s_max, timeout_s=900
        )
        res.detail(f"query.range_cut.{n}", out)
        state, path = out["state_us"], out["server_path_us"]
        first = n == SIZES[0]
        last = n == SIZES[-1]
        res.add(
            Figure(
                key=f"query.range_cut.{n}.p50",
                label=f"server-side range query cutting a period, one account with {n:,} "
                "events: codec + PartitionState, p50",
                value=path["p50"],
                unit="us",
                limit_key="limit.codec.query.p50" if first else f"query.range_cut.{SIZES[0]}.p50",
                target=TARGET_P50_US if last else None,
                target_ratio=TARGET_RATIO_TO_10K if last else None,
                lower_is_better=True,
                note=f"PartitionState.query alone p50 {state['p50']:.1f} us, p99 "
                f"{state['p99']:.1f} us; codec + state p99 {path['p99']:.1f} us; "
                f"{int(path['n'])} reads",
            )
        )
