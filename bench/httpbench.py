"""The HTTP API's speed against the binary protocol's, on one node in the same run.

- Ingest: NDJSON bodies of 500 events (the plain workload: random accounts of all partitions,
  five SUM metrics, no ids), sent by a load generator in its own process over several
  keep-alive connections, one request in flight on each. The binary figure is taken in this
  section too, on the same node, with the binary load generator (batch 500, ASYNC), so the
  ratio compares the two protocols under the same conditions. The HTTP requests mix every
  partition (the node splits each into per-partition batches); the binary frames each hold one
  partition's events, as ``AsyncClient`` sends them after its own split.
- Usage: ``GET /v1/usage`` for the current month of a random account, one request at a time
  over one keep-alive connection on a blocking socket (as the loopback round trip
  ``limit.rtt`` and the binary query are timed), against the loopback round trip.
- The cost of counting for ``/metrics`` on the ingest path: what ``Reply.send`` adds per
  batch (a request histogram and the ingest counters), timed in this process.

The load generators write pre-built HTTP/1.1 requests and read each answer's head and
``Content-Length`` body (the ingest one with asyncio streams over its connections, the usage one
on a blocking socket): the least a client can cost, so the figure is the server's.
"""

from __future__ import annotations

import asyncio
import random
import resource
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from bench import clientbench, driver, limits, loadgen, procs, scenarios, settings
from bench.report import Figure, Results
from bench.settings import Settings
from bench.stats import summary

HTTP_CONNECTIONS = 8
BODIES = 64  # distinct request bodies, sent in turn
TARGET_RATIO = 0.3  # of the binary figure
TARGET_USAGE_RTT = 3.0  # times the loopback round trip


@contextmanager
def http_node(work: Path, name: str) -> Iterator[tuple[scenarios.RunningNode, int]]:
    data_dir = work / name
    http_port = procs.free_port()
    child = procs.node(
        data_dir, partitions=settings.PARTITIONS, extra=("--http", f"{procs.HOST}:{http_port}")
    )
    start_s = child.start()
    try:
        version = asyncio.run(scenarios.create_metrics(child.address, False))
        yield scenarios.RunningNode(child, data_dir, version, start_s), http_port
    finally:
        child.kill()


def _bodies(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(BODIES):
        lines = [
            orjson.dumps(
                {
                    "account_id": rng.randint(1, settings.ACCOUNTS),
                    "metric_code": rng.choice(settings.METRIC_CODES),
                    "value": rng.randint(1, settings.VALUE_MAX),
                }
            )
            for _ in range(500)
        ]
        out.append(b"\n".join(lines) + b"\n")
    return out


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ndjson_requests(seed: int) -> list[bytes]:
    """``BODIES`` whole HTTP requests, each a POST of 500 NDJSON events."""
    return [
        b"POST /v1/events HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-ndjson\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        for body in _bodies(seed)
    ]


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    """Write one request, read its answer: (status, body)."""
    return await _exchange(reader, writer, request)


def ingest_in_process(port: int, duration_s: float, seed: int) -> dict[str, Any]:
    import uvloop

    requests = ndjson_requests(seed)

    async def run() -> dict[str, Any]:
        stored = calls = 0
        failures: list[str] = []
        links = [await asyncio.open_connection(procs.HOST, port) for _ in range(HTTP_CONNECTIONS)]
        cpu0, t0 = _cpu(), time.perf_counter()
        deadline = t0 + duration_s

        async def worker(k: int) -> None:
            nonlocal stored, calls
            reader, writer = links[k]
            i = k
            while time.perf_counter() < deadline:
                status, body = await _exchange(reader, writer, requests[i % BODIES])
                if status != 200:
                    failures.append(body[:300].decode(errors="replace"))
                    return
                stored += orjson.loads(body)["n_stored"]
                calls += 1
                i += HTTP_CONNECTIONS

        await asyncio.gather(*(worker(k) for k in range(HTTP_CONNECTIONS)))
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
        for _, writer in links:
            writer.close()
        return {
            "stored": stored,
            "calls": calls,
            "wall_s": wall,
            "cpu_s": cpu,
            "failures": failures,
        }

    return uvloop.run(run())


def usage_in_process(port: int, samples: int) -> dict[str, float]:
    """``GET /v1/usage`` round trips over one keep-alive connection, one request at a time, on
    a blocking socket: the client the loopback limit and the binary query are timed with, so
    the three figures differ only by what the servers do."""
    rng = random.Random(11)
    requests = [
        b"GET /v1/usage?account_id=%d&metric=%s HTTP/1.1\r\nHost: bench\r\n\r\n"
        % (rng.randint(1, settings.ACCOUNTS), rng.choice(settings.METRIC_CODES).encode())
        for _ in range(1000)
    ]
    latencies: list[float] = []
    with socket.create_connection((procs.HOST, port), timeout=settings.LOAD_SLACK_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answers = _Answers(sock)
        for i in range(samples + 100):
            started = time.perf_counter()
            sock.sendall(requests[i % len(requests)])
            status, body = answers.next()
            if status != 200:
                raise RuntimeError(body[:300].decode(errors="replace"))
            if i >= 100:  # the first ones warm the connection and the caches
                latencies.append((time.perf_counter() - started) * 1e6)
    return summary(latencies)


class _Answers:
    """Reads whole HTTP/1.1 answers (a head and a ``Content-Length`` body) off a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def next(self) -> tuple[int, bytes]:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buf[:end]
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                stop = end + 4 + length
                if len(self.buf) >= stop:
                    body, self.buf = self.buf[end + 4 : stop], self.buf[stop:]
                    return int(head[9:12]), body
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk


def metrics_cost_per_batch_us(rounds: int = 20_000) -> float:
    """What ``Reply.send`` adds per ingest batch for /metrics (histogram + ingest counters)."""
    from bench import workload
    from unimeter.observe import NodeStats
    from unimeter.wire.messages import IngestReply

    batch = workload.event_batch(
        next(workload.random_batches(random.Random(3), [list(range(1, 1001))], 500, 1))
    )
    reply = IngestReply(
        n_stored=500, n_duplicates=0, n_rejected=0, rejected=(), last_offset=1, log_index=1
    )
    stats = NodeStats()
    kind = stats.request("binary", "ingest")
    started = time.perf_counter()
    for _ in range(rounds):
        t = time.perf_counter()
        kind.done(0, time.perf_counter() - t)
        stats.ingest.note(batch, reply)
    return (time.perf_counter() - started) / rounds * 1e6


def http(res: Results, work: Path, s: Settings) -> None:
    if res.value("limit.rtt.p50") is None:
        limits.loopback(res, work, s)
    aiohttp_floor(res, work, s)
    with http_node(work, "http") as (node, http_port):
        _ingest(res, s, node, http_port)
        scenarios.settle(node.child.address)
        _usage(res, s, node, http_port)
    res.add(
        Figure(
            key="http.metrics_cost_per_batch",
            label="/metrics counting added to one ingest batch (in process)",
            value=metrics_cost_per_batch_us(),
            unit="us",
            lower_is_better=True,
        )
    )


def _ingest(res: Results, s: Settings, node: scenarios.RunningNode, http_port: int) -> None:
    specs = scenarios.ingest_specs(
        node, batch=500, sync=False, processes=1, window=settings.WINDOW_ASYNC_B500,
        conns=1, duration_s=s.ingest_duration_s, frames=s.pool_frames_b500,
    )  # fmt: skip
    binary = scenarios._checked(driver.run_load(specs, server=node.child))
    res.detail("http.binary.async.b500", binary.details())
    res.add(
        Figure(
            key="http.binary.async.b500",
            label="binary ASYNC ingest, batch 500 of one partition (this section's node)",
            value=binary.events_per_s,
            unit="ev/s",
            note=f"node CPU {binary.details()['server_cpu_share']} (cores busy)",
        )
    )
    client = procs.call_in_process(
        clientbench.ingest_in_process, node.child.address, s.ingest_duration_s,
        timeout_s=s.ingest_duration_s + settings.LOAD_SLACK_S,
    )  # fmt: skip
    res.detail("http.binary.client.b500", client)
    res.add(
        Figure(
            key="http.binary.client.b500",
            label="binary AsyncClient.ingest, 500 events of all partitions (same node)",
            value=client["stored"] / client["wall_s"],
            unit="ev/s",
        )
    )
    cpu0 = node.child.cpu_seconds()
    out = procs.call_in_process(
        ingest_in_process, http_port, s.ingest_duration_s, 5,
        timeout_s=s.ingest_duration_s + settings.LOAD_SLACK_S,
    )  # fmt: skip
    node_cpu = node.child.cpu_seconds() - cpu0
    if out["failures"]:
        raise RuntimeError("HTTP ingest failed: " + out["failures"][0])
    res.detail("http.ingest.ndjson.b500", {**out, "node_cpu_s": node_cpu})
    note = (
        f"node CPU {node_cpu / out['wall_s']:.2f}, loadgen CPU {out['cpu_s'] / out['wall_s']:.2f} "
        "(cores busy)"
    )
    for key in ("http.binary.async.b500", "http.binary.client.b500"):
        res.add(
            Figure(
                key=f"http.ingest.ndjson.b500.vs.{key.rsplit('.', 2)[1]}",
                label=f"HTTP NDJSON ingest, 500 events of all partitions, {HTTP_CONNECTIONS} "
                "connections",
                value=out["stored"] / out["wall_s"],
                unit="ev/s",
                baseline_key=key,
                note=f"bar: >= {TARGET_RATIO} x binary; {note}",
            )
        )


def _usage(res: Results, s: Settings, node: scenarios.RunningNode, http_port: int) -> None:
    job = loadgen.QueryJob(
        kind="month", accounts=settings.ACCOUNTS, frames=1000, now_us=time.time_ns() // 1000
    )
    spec = loadgen.LoadSpec(
        address=node.child.address, partitions=settings.PARTITIONS, job=job,
        duration_s=s.latency_time_s_max, pingpong=True, samples_max=s.query_samples,
    )  # fmt: skip
    binary = scenarios._checked(driver.run_load([spec], server=node.child))
    res.add_latency(
        "http.binary.query", "binary query round trip (month), raw socket", binary.latency(),
        limit_key="limit.rtt",
    )  # fmt: skip
    lat = procs.call_in_process(usage_in_process, http_port, s.query_samples, timeout_s=300)
    res.detail("http.usage", lat)
    res.add_latency(
        "http.usage",
        "GET /v1/usage round trip (month), one connection",
        lat,
        limit_key="limit.rtt",
        notes={"p50": f"bar: <= {TARGET_USAGE_RTT} x limit.rtt.p50", "p99": ""},
    )


def aiohttp_floor(res: Results, work: Path, s: Settings) -> None:
    """The same client against an aiohttp server that answers a fixed body at once."""
    port = procs.free_port()
    argv = [sys.executable, "-m", "bench.httpfloor", "--listen", f"{procs.HOST}:{port}"]
    server = procs.Child("aiohttp floor", argv, port, work / f"httpfloor-{port}.out")
    server.start()
    try:
        lat = procs.call_in_process(usage_in_process, port, s.query_samples, timeout_s=300)
    finally:
        server.kill()
    res.detail("http.floor", lat)
    res.add_latency(
        "http.floor", "limit: aiohttp round trip, empty handler, one connection", lat,
        limit_key="limit.rtt",
    )  # fmt: skip
