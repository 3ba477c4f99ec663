"""The limits of this machine, measured in the same run as the figures compared with them.

- fsync: append 4 KiB or 64 KiB to a file, then ``fdatasync``; rate and latency. The file is
  in the work directory, where the nodes keep their data, so it is the same filesystem.
- loopback: 64-byte ping-pong between a blocking client and a uvloop echo server process.
- codec: encode and decode of 500-event Ingest frames (plain and realistic; and 1-event ones),
  of the WAL record the node writes for a batch (built by the leader's admission, as
  ``bench/entries.py`` does), and of one query with its reply, in this process, nothing else;
  rates are timed in this process's CPU time, so a busy neighbour does not lower the limit.
  Also the least a per-event Python apply loop can cost: one dict update per event.
- raw server: ``bench.rawserver`` driven by the same load generator and windows as the node:
  the ceiling of a Python server that only splits and decodes frames and appends them.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from bench import driver, entries, loadgen, procs, settings, workload
from bench.report import Figure, Results
from bench.settings import Settings
from bench.stats import summary
from unimeter.model import AggValue
from unimeter.state.records import decode_entry, encode_entry
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec, ServerCodec

FSYNC_RUNS = (
    # (key, label, bytes appended, idle seconds before each append)
    ("fsync_4k", "append 4 KiB + fdatasync, back to back", 4096, 0.0),
    ("fsync_64k", "append 64 KiB + fdatasync, back to back", 65536, 0.0),
    ("fsync_4k_idle", "append 4 KiB + fdatasync after 2 ms idle", 4096, 0.002),
)


def fsync(res: Results, work: Path, s: Settings) -> None:
    """Back to back gives the rate one file sustains. A lone SYNC event meets an fdatasync
    that follows an idle moment, and on a VM the two differ, in either direction (we have seen
    4 ms back to back against 0.3 ms isolated while a neighbour loaded the disk, and 0.15 ms
    against 0.33 ms when it did not), so the isolated latency is measured too."""
    directory = work / "fsync"
    directory.mkdir(parents=True, exist_ok=True)
    for key, label, size, idle_s in FSYNC_RUNS:
        path = directory / key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        block = os.urandom(size)
        latencies: list[float] = []
        try:
            started = time.perf_counter()
            deadline = started + s.fsync_time_s_max
            while len(latencies) < s.fsync_ops_max and time.perf_counter() < deadline:
                if idle_s:
                    time.sleep(idle_s)
                t0 = time.perf_counter()
                os.write(fd, block)
                os.fdatasync(fd)
                latencies.append((time.perf_counter() - t0) * 1e6)
            elapsed = time.perf_counter() - started
        finally:
            os.close(fd)
            path.unlink()
        lat = summary(latencies)
        res.detail(f"limit.{key}", {"latency_us": lat, "ops": len(latencies)})
        if not idle_s:
            res.add(
                Figure(
                    key=f"limit.{key}.rate",
                    label=f"limit: {label}, rate",
                    value=len(latencies) / elapsed,
                    unit="ops/s",
                )
            )
        res.add_latency(f"limit.{key}", f"limit: {label}", lat)


def loopback(res: Results, work: Path, s: Settings) -> None:
    server = procs.raw_server(work, "echo", partitions=settings.PARTITIONS)
    server.start()
    try:
        spec = loadgen.LoadSpec(
            address=server.address,
            partitions=settings.PARTITIONS,
            job=loadgen.EchoJob(frame_bytes=64),
            duration_s=s.latency_time_s_max,
            pingpong=True,
            samples_max=s.rtt_pings,
        )
        outcome = driver.run_load([spec], server=server)
    finally:
        server.terminate()
    _raise_failures(outcome)
    lat = outcome.latency()
    res.detail("limit.rtt", outcome.details())
    res.add_latency("limit.rtt", "limit: loopback 64 B round trip (uvloop echo)", lat)


def _ingest_messages(
    count: int, batch: int, rng: random.Random, workload_name: str = workload.PLAIN
) -> list[m.Ingest]:
    by_partition = [list(range(1, settings.ACCOUNTS + 1))]
    now_us = time.time_ns() // 1000
    pairs = workload.batches_of(workload_name, rng, by_partition, batch, count, now_us=now_us)
    return [
        m.Ingest(
            partition=0,
            producer_id=entries.PRODUCER_ID,
            seq=i + 1,
            sync=False,
            catalog_version=1,
            batch=b,
        )
        for i, (_, b) in enumerate(pairs)
    ]


def _codec_rates(messages: list[m.Ingest], workload_name: str) -> dict[str, float]:
    """Messages per second for encode, decode, WAL-record encode and decode. The WAL record is
    the one the leader writes for each request alone: a ``BatchEntry`` of one part, the part
    made by the leader's admission from the decoded request (so the record carries the
    received batch bytes, the verdict and, with event ids, the id hashes)."""
    client = ClientCodec()
    t0 = time.process_time()
    frames = [client.encode_request(i + 1, msg) for i, msg in enumerate(messages)]
    t1 = time.process_time()
    server = ServerCodec()
    decoded: list[m.Ingest] = []
    for frame in frames:
        server.feed(frame)
        request = server.next_frame()
        assert isinstance(request, m.RequestFrame) and isinstance(request.message, m.Ingest)
        decoded.append(request.message)
    t2 = time.process_time()
    stamp = time.time_ns() // 1000
    state = entries.new_state(workload_name)
    parts = entries.admitted(state, decoded, stamp)
    log = entries.grouped(parts, 1, stamp)
    t3 = time.process_time()
    records = [encode_entry(entry) for entry in log]
    t4 = time.process_time()
    for record in records:
        decode_entry(record)
    t5 = time.process_time()
    n = len(messages)
    return {
        "encode": n / (t1 - t0),
        "decode": n / (t2 - t1),
        "wal_encode": n / (t4 - t3),
        "wal_decode": n / (t5 - t4),
        "frame_bytes": sum(map(len, frames)) / n,
        "record_bytes": sum(map(len, records)) / n,
    }


def _query_codec_us(count: int, rng: random.Random) -> dict[str, float]:
    """Server-side codec work of one query: decode the request, encode its AggReply."""
    frames, _ = workload.encode_queries(
        "month",
        rng=rng,
        accounts=settings.ACCOUNTS,
        partitions=1,
        now_us=time.time_ns() // 1000,
        count=count,
    )
    server = ServerCodec()
    value = AggValue(sum=123_456, count=42, max=999, last_value=7, last_timestamp=None)
    took: list[float] = []
    clock = time.perf_counter_ns
    for frame in frames:
        t0 = clock()
        server.feed(frame)
        request = server.next_frame()
        assert isinstance(request, m.RequestFrame) and isinstance(request.message, m.Query)
        reply = m.AggReply(
            value=value,
            period_start_us=request.message.start_us,
            period_end_us=request.message.end_us,
        )
        server.encode_response(request.request_id, 0, reply)
        took.append((clock() - t0) / 1000)
    return summary(took)


def _python_sum_loop(messages: list[m.Ingest]) -> float:
    """Events per CPU second of the least a Python apply loop does per event: one dict
    update of a running sum per (account, metric). Any per-event Python loop costs this."""
    columns = [
        (b.account_ids.tolist(), b.metric_index.tolist(), b.values.tolist())
        for b in (msg.batch for msg in messages)
    ]  # Python ints, as a per-event loop would have them
    sums: dict[int, int] = {}
    get = sums.get
    t0 = time.process_time()
    for accounts, metrics, values in columns:
        for account, metric, value in zip(accounts, metrics, values, strict=True):
            key = account * 8 + metric
            sums[key] = get(key, 0) + value
    return sum(len(msg.batch) for msg in messages) / (time.process_time() - t0)


def codec(res: Results, s: Settings) -> None:
    rng = random.Random(11)
    messages = _ingest_messages(s.codec_frames, 500, rng)
    rates = _codec_rates(messages, workload.PLAIN)
    loop_rate = _python_sum_loop(messages)
    realistic = _codec_rates(
        _ingest_messages(s.codec_frames, 500, rng, workload.REALISTIC), workload.REALISTIC
    )
    singles = _codec_rates(_ingest_messages(s.codec_frames * 10, 1, rng), workload.PLAIN)
    query = _query_codec_us(s.codec_frames * 5, rng)
    res.detail(
        "limit.codec",
        {
            "batch500": rates,
            "realistic_batch500": realistic,
            "batch1": singles,
            "query_us": query,
            "python_sum_loop": loop_rate,
        },
    )
    res.add(
        Figure(
            key="limit.python.sum_loop",
            label="limit: pure-Python loop, one dict sum update per event",
            value=loop_rate,
            unit="ev/s",
        )
    )
    for name, label in (
        ("encode", "Ingest encode (ClientCodec)"),
        ("decode", "Ingest decode (ServerCodec)"),
        ("wal_encode", "WAL record encode"),
        ("wal_decode", "WAL record decode"),
    ):
        res.add(
            Figure(
                key=f"limit.codec.{name}.b500",
                label=f"limit: {label}, batch 500",
                value=rates[name] * 500,
                unit="ev/s",
            )
        )
        res.add(
            Figure(
                key=f"limit.codec.{name}.realistic.b500",
                label=f"limit: {label}, realistic workload, batch 500",
                value=realistic[name] * 500,
                unit="ev/s",
            )
        )
    for name in ("encode", "decode"):
        res.add(
            Figure(
                key=f"limit.codec.{name}.b1",
                label=f"limit: Ingest {name}, batch 1",
                value=singles[name],
                unit="ev/s",
            )
        )
    res.add_latency("limit.codec.query", "limit: query decode + reply encode", query)


RAW_RUNS = (
    ("async", 500, settings.WINDOW_ASYNC_B500),
    ("sync", 500, settings.WINDOW_SYNC_B500),
    ("async", 1, settings.WINDOW_ASYNC_B1),
    ("sync", 1, settings.WINDOW_SYNC_B1),
)


def raw_server(res: Results, work: Path, s: Settings) -> None:
    for mode, batch, window in RAW_RUNS:
        server = procs.raw_server(work, mode, partitions=settings.PARTITIONS)
        server.start()
        try:
            outcome = _raw_run(server, mode, batch, window, s)
            latency = None
            if mode == "sync" and batch == 1:
                latency = _raw_latency(server, s)
        finally:
            server.terminate()
            for path in work.glob(f"raw-{mode}-{server.port}.p*"):
                path.unlink()
        key = f"limit.raw.{mode}.b{batch}"
        res.detail(key, outcome.details())
        res.add(
            Figure(
                key=key,
                label=f"limit: raw Python server, {mode.upper()} batch {batch}",
                value=outcome.events_per_s,
                unit="ev/s",
            )
        )
        if latency is not None:
            res.detail("limit.raw.sync.latency", latency.details())
            lat = latency.latency()
            res.add_latency(
                "limit.raw.sync.latency", "limit: raw Python server, SYNC 1 event alone", lat
            )


def _raw_run(server: procs.Child, mode: str, batch: int, window: int, s: Settings) -> Any:
    job = loadgen.IngestJob(
        batch=batch,
        sync=mode == "sync",
        frames=min(s.pool_frames_b500, 400) if batch > 1 else min(s.pool_frames_b1, 20_000),
        accounts=settings.ACCOUNTS,
        catalog_version=0,
    )
    spec = loadgen.LoadSpec(
        address=server.address,
        partitions=settings.PARTITIONS,
        job=job,
        duration_s=s.raw_duration_s,
        window=window,
        cycle=True,
    )
    outcome = driver.run_load([spec], server=server)
    _raise_failures(outcome)
    return outcome


def _raw_latency(server: procs.Child, s: Settings) -> driver.LoadOutcome:
    job = loadgen.IngestJob(
        batch=1,
        sync=True,
        frames=s.latency_samples + 200,
        accounts=settings.ACCOUNTS,
        catalog_version=0,
    )
    spec = loadgen.LoadSpec(
        address=server.address,
        partitions=settings.PARTITIONS,
        job=job,
        duration_s=s.latency_time_s_max,
        pingpong=True,
        samples_max=s.latency_samples,
    )
    outcome = driver.run_load([spec], server=server)
    _raise_failures(outcome)
    return outcome


def _raise_failures(outcome: driver.LoadOutcome) -> None:
    if outcome.failures:
        raise RuntimeError("load generator failed:\n" + "\n".join(outcome.failures))


def derived(res: Results) -> None:
    """The physical floor of one SYNC event: one round trip plus one fdatasync, taking the
    faster of the back-to-back and the isolated fdatasync (which one is faster varies); and
    issue 11's floor, the round trip plus the fdatasync after idle (what a lone event meets),
    which the lone SYNC event's bar is a ratio to."""
    for p in ("p50", "p99"):
        rtt = res.value(f"limit.rtt.{p}")
        idle = res.value(f"limit.fsync_4k_idle.{p}")
        if rtt is not None and idle is not None:
            res.add(
                Figure(
                    key=f"limit.floor.sync_idle.{p}",
                    label=f"limit: loopback round trip + 4 KiB fdatasync after idle, {p}",
                    value=rtt + idle,
                    unit="us",
                    lower_is_better=True,
                )
            )
        syncs = [res.value(f"limit.fsync_4k.{p}"), res.value(f"limit.fsync_4k_idle.{p}")]
        known = [v for v in syncs if v is not None]
        if rtt is not None and known:
            res.add(
                Figure(
                    key=f"limit.floor.sync_event.{p}",
                    label=f"limit: loopback round trip + fastest 4 KiB fdatasync, {p}",
                    value=rtt + min(known),
                    unit="us",
                    lower_is_better=True,
                )
            )
