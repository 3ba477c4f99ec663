"""``python -m bench.httpcpu``: the node's CPU per HTTP event and per usage read.

Wall-clock rates swing with whatever else the machine runs; the CPU the node spends per unit
of work swings much less, so this is the figure to compare two builds with (run them in turn,
several times). A fresh node with its HTTP API serves: ``--ingest`` NDJSON requests of 500
events (``httpbench``'s bodies, over its 8 connections), then ``--usage`` reads of one month
over one connection. Printed: events per second and the node's CPU microseconds per event
(user + system, all threads, the settling after the last answer included), then the usage p50
and the node's CPU per read.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

from bench import procs, scenarios
from bench.httpbench import (
    HTTP_CONNECTIONS,
    exchange,
    http_node,
    ndjson_requests,
    usage_in_process,
)


def measure(work: Path, ingest_requests: int, usage_reads: int) -> None:
    with http_node(work, "httpcpu") as (node, port):
        child = node.child
        # Warm up both paths first (imports, caches, the first JIT-less slow calls).
        uvloop.run(_ingest(port, 16))
        cpu0, wall0 = child.cpu_seconds(), time.perf_counter()
        stored = uvloop.run(_ingest(port, ingest_requests))
        wall = time.perf_counter() - wall0
        # What was acknowledged is applied before the CPU is read (the wait's few status
        # requests are counted too: a small overcount, never an undercount).
        scenarios.settle(child.address)
        cpu = child.cpu_seconds() - cpu0
        print(
            f"ingest: {stored} events, {stored / wall:,.0f} ev/s, "
            f"node CPU {cpu / stored * 1e6:.2f} us/event"
        )
        usage_in_process(port, 200)
        cpu0 = child.cpu_seconds()
        latency = usage_in_process(port, usage_reads)
        cpu = child.cpu_seconds() - cpu0
        print(
            f"usage: {usage_reads} reads, p50 {latency['p50']:.0f} us, "
            f"node CPU {cpu / (usage_reads + 100) * 1e6:.0f} us/read"
        )


async def _ingest(port: int, count: int) -> int:
    """``count`` NDJSON requests of 500 events, one in flight per connection; events stored."""
    requests = ndjson_requests(5)
    links = [await asyncio.open_connection(procs.HOST, port) for _ in range(HTTP_CONNECTIONS)]
    stored = 0

    async def worker(k: int) -> None:
        nonlocal stored
        reader, writer = links[k]
        for i in range(k, count, HTTP_CONNECTIONS):
            status, body = await exchange(reader, writer, requests[i % len(requests)])
            if status != 200:
                raise RuntimeError(body[:300].decode(errors="replace"))
            stored += orjson.loads(body)["n_stored"]

    try:
        await asyncio.gather(*(worker(k) for k in range(HTTP_CONNECTIONS)))
    finally:
        for _, writer in links:
            writer.close()
    return stored


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.httpcpu", description=__doc__)
    p.add_argument("--ingest", type=int, default=800, help="NDJSON requests of 500 events")
    p.add_argument("--usage", type=int, default=3000, help="GET /v1/usage reads")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="httpcpu-"))
    try:
        measure(work, args.ingest, args.usage)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
