"""Load-generator processes that are not the bottleneck.

Each worker is a separate process (multiprocessing, spawn). It connects, says HELLO, learns the
partition count from WELCOME, pre-encodes its whole pool of frames, reports ready and waits for
the common start signal, so the clock never covers encoding. Then either:

- *pipeline*: raw sockets driven by a uvloop ``Protocol``; each connection keeps ``window``
  requests in flight and, as replies arrive, writes the next pre-encoded frames unchanged
  (``writelines``); replies are split by their length prefix and read with ``cbor2.loads``;
- *pingpong*: one blocking socket, one request at a time: the latency of a lone request.

Against a cluster (``LoadSpec.routes``: the leader's address for each partition) a worker
connects to every leader and sends each frame to its partition's leader, as a client that knows
the partition map does; a pipeline worker divides its window among the leaders by the number of
partitions each leads, so every partition has as many requests in flight as against one node.

A run ends at its duration or when the pool is used up, then drains what is in flight. Every
reply is counted by status, and events count as stored only if an OK reply says so (``ns``).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import math
import random
import resource
import socket
import time
import traceback
from array import array
from dataclasses import dataclass, field
from typing import Any

import cbor2
import uvloop

from bench import workload
from bench.settings import LOAD_SLACK_S
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec

LATENCY_SAMPLES_MAX = 2_000_000
_STATUS_OK = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestJob:
    batch: int
    sync: bool
    frames: int
    accounts: int
    catalog_version: int
    cover: bool = False  # every (account, metric) pair once; ``frames`` is then ignored
    with_region: bool = False
    workload: str = "plain"  # workload.PLAIN or workload.REALISTIC (``cover``: plain only)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryJob:
    kind: str
    accounts: int
    frames: int
    now_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EchoJob:
    """64-byte frames for the echo server (no HELLO: it would only echo it)."""

    frame_bytes: int = 64


Job = IngestJob | QueryJob | EchoJob


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    address: str
    partitions: int
    job: Job
    duration_s: float
    conns: int = 1
    window: int = 1
    pingpong: bool = False
    samples_max: int = 0  # pingpong: replies to time (after the warm-up)
    cycle: bool = False  # reuse the pool (only against a server that keeps no producer table)
    seed: int = 1
    # Ingest against a cluster: the "host:port" leading each partition (``address`` is then
    # unused). Empty: every frame goes to ``address``.
    routes: tuple[str, ...] = ()

    def addresses(self) -> list[str]:
        """The servers this worker connects to, each once, in partition order."""
        return list(dict.fromkeys(self.routes)) if self.routes else [self.address]


@dataclass(slots=True)
class WorkerResult:
    index: int
    failure: str | None = None
    started: float = 0.0
    ended: float = 0.0
    sent: int = 0
    replies: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    error_sample: list[str] = field(default_factory=list)
    latencies_us: array[float] = field(default_factory=lambda: array("d"))
    cpu_s: float = 0.0
    exhausted: bool = False
    pool_frames: int = 0
    pool_events: int = 0
    build_s: float = 0.0

    def tally(self, item: Any) -> None:
        status, _, body = item
        self.replies += 1
        if status == _STATUS_OK:
            if type(body) is dict:
                self.stored += body.get("ns", 0)
                self.duplicates += body.get("nd", 0)
                self.rejected += body.get("nr", 0)
            return
        self.errors[status] = self.errors.get(status, 0) + 1
        if len(self.error_sample) < 5:
            self.error_sample.append(f"status {status}: {body!r:.200}")


# --------------------------------------------------------------------------- the pool


def _producer_id(seed: int, index: int) -> int:
    return random.Random(seed * 7919 + index).getrandbits(63) | 1


def _echo_frame(frame_bytes: int, request_id: int) -> bytes:
    pad = b""
    while True:
        payload = cbor2.dumps([_STATUS_OK, request_id, pad])
        if 4 + len(payload) >= frame_bytes:
            return len(payload).to_bytes(4, "big") + payload
        pad += b"x"


@dataclass(slots=True)
class Pool:
    frames: list[bytes]
    ids: list[int]  # each frame's request id
    events: int  # in all the frames (not counted for the parts ``routed`` returns)
    partitions: list[int]  # each frame's partition (ingest pools only, else empty)

    def routed(self, routes: tuple[str, ...]) -> dict[str, Pool]:
        """The frames each partition leader gets, in pool order."""
        assert len(self.partitions) == len(self.frames), "only ingest pools can be routed"
        out = {address: Pool([], [], 0, []) for address in dict.fromkeys(routes)}
        for frame, request_id, p in zip(self.frames, self.ids, self.partitions, strict=True):
            part = out[routes[p]]
            part.frames.append(frame)
            part.ids.append(request_id)
            part.partitions.append(p)
        return out


def build_pool(spec: LoadSpec, index: int, partitions: int) -> Pool:
    job = spec.job
    rng = random.Random(spec.seed * 1_000_003 + index)
    if isinstance(job, EchoJob):
        frames = [_echo_frame(job.frame_bytes, i + 1) for i in range(64)]
        return Pool(frames, list(range(1, 65)), 0, [])
    if isinstance(job, QueryJob):
        frames, ids = workload.encode_queries(
            job.kind,
            rng=rng,
            accounts=job.accounts,
            partitions=partitions,
            now_us=job.now_us,
            count=job.frames,
        )
        return Pool(frames, ids, 0, [])
    by_partition = workload.accounts_by_partition(job.accounts, partitions)
    if job.cover:
        assert job.workload == workload.PLAIN, "only the plain workload covers cells"
        batches = list(
            workload.plain_pairs(workload.covering_batches(rng, by_partition, job.batch))
        )
    else:
        batches = workload.batches_of(
            job.workload,
            rng,
            by_partition,
            job.batch,
            job.frames,
            now_us=time.time_ns() // 1000,
            with_region=job.with_region,
        )
    frames, ids, events = workload.encode_ingest(
        batches,
        partitions=partitions,
        producer_id=_producer_id(spec.seed, index),
        sync=job.sync,
        catalog_version=job.catalog_version,
    )
    return Pool(frames, ids, events, [p for p, _ in batches])


def _hello_frame() -> bytes:
    hello = m.Hello(version=m.PROTOCOL_VERSION, client_name="unimeter-bench")
    return ClientCodec().encode_request(0, hello)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _welcome_partitions(item: Any, expected: int) -> int:
    status, _, body = item
    if status != _STATUS_OK or type(body) is not dict or "np" not in body:
        raise RuntimeError(f"HELLO was answered with {item!r:.300}")
    if body["np"] != expected:
        raise RuntimeError(f"the server has {body['np']} partitions, expected {expected}")
    return int(body["np"])


# --------------------------------------------------------------------------- pipeline


class _Run:
    """What the connections of one pipeline worker share."""

    __slots__ = ("cycle", "deadline", "frames", "ids", "next", "result", "stopping", "window")

    def __init__(self, window: int, cycle: bool, result: WorkerResult) -> None:
        self.frames: list[bytes] = []
        self.ids: list[int] = []
        self.window = window
        self.cycle = cycle
        self.result = result
        self.next = 0
        self.deadline = 0.0
        self.stopping = False


class _Conn(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buf = bytearray()
        self.in_flight = 0
        self.sent_at: dict[int, float] = {}
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.welcome: asyncio.Future[Any] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.welcome, self.done):
            if not fut.done():
                fut.set_exception(ConnectionError(f"the server closed the connection: {exc}"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        now = time.perf_counter()
        run = self.run
        result = run.result
        lat = result.latencies_us
        pos, end_of_data, got = 0, len(buf), 0
        while end_of_data - pos >= 4:
            end = pos + 4 + int.from_bytes(buf[pos : pos + 4], "big")
            if end > end_of_data:
                break
            item = cbor2.loads(buf[pos + 4 : end])
            pos = end
            if not self.welcome.done():
                self.welcome.set_result(item)
                continue
            got += 1
            result.tally(item)
            sent = self.sent_at.pop(item[1], None)
            if sent is not None and len(lat) < LATENCY_SAMPLES_MAX:
                lat.append((now - sent) * 1e6)
        if pos:
            del buf[:pos]
        if got:
            self.in_flight -= got
            self.refill(now)

    def refill(self, now: float) -> None:
        run = self.run
        if not run.stopping and now >= run.deadline:
            run.stopping = True
        if not run.stopping:
            room = run.window - self.in_flight
            first = run.next
            frames = run.frames[first : first + room]
            ids = run.ids[first : first + room]
            run.next = first + len(frames)
            if len(frames) < room and run.cycle:
                run.next = room - len(frames)
                frames += run.frames[: run.next]
                ids += run.ids[: run.next]
            elif len(frames) < room:
                run.result.exhausted = True
            if frames:
                sent_at = self.sent_at
                for request_id in ids:
                    sent_at[request_id] = now
                assert self.transport is not None
                self.transport.writelines(frames)
                self.in_flight += len(frames)
                run.result.sent += len(frames)
        if self.in_flight == 0 and not self.done.done():
            self.done.set_result(None)


async def _pipeline(spec: LoadSpec, index: int, ready: Any, go: Any) -> WorkerResult:
    loop = asyncio.get_running_loop()
    result = WorkerResult(index=index)
    # One run per server; their pools are built once WELCOME names the partitions.
    runs = {address: _Run(spec.window, spec.cycle, result) for address in spec.addresses()}
    conns: list[_Conn] = []
    for address, run in runs.items():
        host, port = _split(address)
        for _ in range(spec.conns):
            _, conn = await loop.create_connection(functools.partial(_Conn, run), host, port)
            conns.append(conn)
    partitions = spec.partitions
    if not isinstance(spec.job, EchoJob):
        hello = _hello_frame()
        for conn in conns:
            assert conn.transport is not None
            conn.transport.write(hello)
        for conn in conns:
            partitions = _welcome_partitions(await conn.welcome, spec.partitions)
    else:
        for conn in conns:
            conn.welcome.set_result(None)
    built = time.perf_counter()
    pool = build_pool(spec, index, partitions)
    result.build_s = time.perf_counter() - built
    result.pool_frames, result.pool_events = len(pool.frames), pool.events
    if spec.routes:
        for address, part in _check_routes(spec, partitions, pool).items():
            run = runs[address]
            run.frames, run.ids = part.frames, part.ids
            # This leader's share of the window: what its partitions had against one node.
            led = sum(1 for a in spec.routes if a == address)
            run.window = max(1, math.ceil(spec.window * led / partitions))
    else:
        runs[spec.address].frames, runs[spec.address].ids = pool.frames, pool.ids
    await _ready_and_wait(ready, go, index)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.started = time.monotonic()
    deadline = time.perf_counter() + spec.duration_s
    for run in runs.values():
        run.deadline = deadline
    for conn in conns:
        conn.refill(time.perf_counter())
    await asyncio.wait_for(asyncio.gather(*(c.done for c in conns)), spec.duration_s + LOAD_SLACK_S)
    result.ended = time.monotonic()
    result.cpu_s = _cpu_since(usage)
    for conn in conns:
        assert conn.transport is not None
        conn.transport.close()
    return result


def _check_routes(spec: LoadSpec, partitions: int, pool: Pool) -> dict[str, Pool]:
    if len(spec.routes) != partitions:
        raise RuntimeError(f"{len(spec.routes)} routes for {partitions} partitions")
    return pool.routed(spec.routes)


async def _ready_and_wait(ready: Any, go: Any, index: int) -> None:
    gc.collect()
    gc.freeze()
    gc.disable()  # the generator's own collections must not show up as server latency
    ready.put(("ready", index, None))
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, go.wait, LOAD_SLACK_S):
        raise RuntimeError("no start signal")


def _cpu_since(before: resource.struct_rusage) -> float:
    now = resource.getrusage(resource.RUSAGE_SELF)
    return (now.ru_utime - before.ru_utime) + (now.ru_stime - before.ru_stime)


# --------------------------------------------------------------------------- pingpong


class _Reader:
    """Reads whole length-prefixed frames from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def item(self) -> Any:
        buf = self.buf
        while True:
            if len(buf) >= 4:
                end = 4 + int.from_bytes(buf[:4], "big")
                if len(buf) >= end:
                    item = cbor2.loads(buf[4:end])
                    del buf[:end]
                    return item
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk


def _pingpong(spec: LoadSpec, index: int, ready: Any, go: Any) -> WorkerResult:
    result = WorkerResult(index=index)
    readers: dict[str, _Reader] = {}
    partitions = spec.partitions
    try:
        for address in spec.addresses():
            sock = socket.create_connection(_split(address), timeout=LOAD_SLACK_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            readers[address] = reader = _Reader(sock)
            if not isinstance(spec.job, EchoJob):
                sock.sendall(_hello_frame())
                partitions = _welcome_partitions(reader.item(), spec.partitions)
        built = time.perf_counter()
        pool = build_pool(spec, index, partitions)
        result.build_s = time.perf_counter() - built
        result.pool_frames, result.pool_events = len(pool.frames), pool.events
        frames = pool.frames
        if spec.routes:
            _check_routes(spec, partitions, pool)
            targets = [readers[spec.routes[p]] for p in pool.partitions]
        else:
            targets = [readers[spec.address]] * len(frames)
        _time_pingpong(spec, frames, targets, result, ready, go, index)
    finally:
        for reader in readers.values():
            reader.sock.close()
    return result


def _time_pingpong(
    spec: LoadSpec,
    frames: list[bytes],
    targets: list[_Reader],
    result: WorkerResult,
    ready: Any,
    go: Any,
    index: int,
) -> None:
    """Send ``frames[i]`` to ``targets[i]`` one at a time, timing each round trip."""
    warmup = min(200, spec.samples_max // 10)
    # An ingest frame sent twice is a retry to the node, so ingest pools are only reused when
    # the spec says the server keeps no producer table (the raw server).
    cycle = spec.cycle or not isinstance(spec.job, IngestJob)
    gc.collect()
    gc.freeze()
    gc.disable()
    ready.put(("ready", index, None))
    if not go.wait(LOAD_SLACK_S):
        raise RuntimeError("no start signal")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.started = time.monotonic()
    deadline = time.perf_counter() + spec.duration_s
    lat = result.latencies_us
    clock = time.perf_counter
    i = 0
    while len(lat) < spec.samples_max and clock() < deadline:
        if i >= len(frames) and not cycle:
            result.exhausted = True
            break
        frame = frames[i % len(frames)]
        target = targets[i % len(frames)]
        sent = clock()
        target.sock.sendall(frame)
        item = target.item()
        took = clock() - sent
        result.sent += 1
        result.tally(item)
        if i >= warmup:
            lat.append(took * 1e6)
        i += 1
    result.ended = time.monotonic()
    result.cpu_s = _cpu_since(usage)


# --------------------------------------------------------------------------- processes


def worker_main(spec: LoadSpec, index: int, ready: Any, go: Any) -> None:
    """Entry point of one load-generator process; always reports one result."""
    try:
        if spec.pingpong:
            result = _pingpong(spec, index, ready, go)
        else:
            result = uvloop.run(_pipeline(spec, index, ready, go))
    except BaseException as exc:  # reported to the parent, which fails the figure
        result = WorkerResult(index=index, failure=f"{exc!r}\n{traceback.format_exc()}")
    ready.put(("result", index, result))
