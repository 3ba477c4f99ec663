"""Python function calls the node makes per request: a lone one-event SYNC ingest, a query.

Issue 11's rows. In a fresh spawned process, a whole node (``unimeter.node.Node``, the class
``python -m unimeter.node`` runs: connection, partition and catalog actors, WAL, the storage
thread that runs the fsyncs, under a supervisor) serves on 127.0.0.1 from this process's
uvloop, in the main thread; a driver thread of the same process is its client, on a blocking
socket, one request at a time with pre-encoded frames (the load generator's ping-pong).
``cProfile`` is switched on and off *on the loop thread* (``call_soon_threadsafe``), and a
profiler only sees the thread it was enabled in, so what it counts is the node's event loop:
decode, dispatch, admission, the log append, the reply, and the completion of the fsync as it
comes back to the loop (the fsync itself runs in the storage thread, not counted). cProfile
counts every call, of Python functions and of C functions (builtins, methods of built-in types)
alike; both totals are kept, the figure is the sum (as the earlier "376 calls per one-event
request" was).

Each phase is timed, and the node's calls over an idle stretch of the same length (timers,
Raft ticks, the disk watch) are measured separately and subtracted. Before each counted phase
the same kind of request is sent ``WARMUP`` times uncounted.

Requests: one-event SYNC Ingests of the plain workload (each with its own producer sequence
number, to random accounts of all partitions); whole-month Queries of cells those events wrote.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import random
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from bench import loadgen, procs, settings, workload
from bench.report import Figure, Results
from bench.scenarios import create_metrics
from bench.settings import Settings
from unimeter.wire.codec import ClientCodec

WARMUP = 200
TOP = 20
TARGET_CALLS_SYNC_EVENT = 80.0
TARGET_CALLS_QUERY = 40.0
_OK = 0


def _on_loop(loop: asyncio.AbstractEventLoop, call: Any) -> None:
    """Run ``call()`` on the loop thread and wait until it has run."""
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    loop.call_soon_threadsafe(run)
    if not done.wait(30):
        raise TimeoutError("the node's loop did not run the profiler switch")


def _counts(profile: cProfile.Profile) -> tuple[int, int, list[tuple[str, int]]]:
    """(all calls, calls of Python functions, the most called functions)."""
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = python = 0
    ranked: list[tuple[str, int]] = []
    for (path, line, name), (_, calls, *_rest) in stats.items():
        total += calls
        if path != "~":  # cProfile files C functions under "~"
            python += calls
            where = f"{Path(path).name}:{line}"
        else:
            where = "C"
        ranked.append((f"{name} ({where})", calls))
    ranked.sort(key=lambda item: -item[1])
    return total, python, ranked[:TOP]


class _Driver:
    def __init__(self, loop: asyncio.AbstractEventLoop, address: str) -> None:
        self.loop = loop
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = loadgen._Reader(self.sock)

    def send(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.sock.sendall(frame)
            status, _, body = self.reader.item()
            if status != _OK:
                raise RuntimeError(f"the node answered status {status}: {body!r:.200}")

    def counted(self, call: Any) -> dict[str, Any]:
        profile = cProfile.Profile()
        _on_loop(self.loop, profile.enable)
        started = time.perf_counter()
        call()
        took = time.perf_counter() - started
        _on_loop(self.loop, profile.disable)
        total, python, top = _counts(profile)
        return {"seconds": took, "calls": total, "python_calls": python, "top": top}

    def phase(self, frames: list[bytes]) -> dict[str, Any]:
        """Count one request after another; subtract what an idle stretch as long costs."""
        self.send(frames[:WARMUP])
        busy = self.counted(lambda: self.send(frames[WARMUP:]))
        idle = self.counted(lambda: time.sleep(busy["seconds"]))
        n = len(frames) - WARMUP
        return {
            "requests": n,
            "calls_per_request": (busy["calls"] - idle["calls"]) / n,
            "python_calls_per_request": (busy["python_calls"] - idle["python_calls"]) / n,
            "busy": busy,
            "idle": idle,
        }


def _drive(loop: asyncio.AbstractEventLoop, address: str, requests: int) -> dict[str, Any]:
    version = asyncio.run(create_metrics(address, False))
    rng = random.Random(5)
    by_partition = workload.accounts_by_partition(settings.ACCOUNTS, settings.PARTITIONS)
    raws = list(workload.random_batches(rng, by_partition, 1, WARMUP + requests))
    frames, _, _ = workload.encode_ingest(
        workload.plain_pairs(raws),
        partitions=settings.PARTITIONS,
        producer_id=0x0CA1_15,
        sync=True,
        catalog_version=version,
    )
    now_us = time.time_ns() // 1000
    codec = ClientCodec()
    queries = [
        codec.encode_request(
            i + 1,
            workload.query_message(
                "month",
                raw.accounts[0],
                settings.METRIC_CODES[raw.metrics[0]],
                settings.PARTITIONS,
                now_us,
            ),
        )
        for i, raw in enumerate(raws)
    ]
    driver = _Driver(loop, address)
    try:
        driver.sock.sendall(loadgen._hello_frame())
        driver.reader.item()
        return {"sync_event": driver.phase(frames), "query": driver.phase(queries)}
    finally:
        driver.sock.close()


async def _serve_and_count(argv: list[str], address: str, requests: int) -> dict[str, Any]:
    from unimeter.node import Node
    from unimeter.node_cli import parse_args, tune_gc
    from unimeter.supervisor import Supervisor

    tune_gc(recovered=False)
    supervisor = Supervisor()
    supervisor.install(asyncio.get_running_loop())
    node = Node(parse_args(argv), supervisor)
    await node.start()
    tune_gc(recovered=True)
    loop = asyncio.get_running_loop()
    result: asyncio.Future[dict[str, Any]] = loop.create_future()

    def drive() -> None:
        try:
            out = _drive(loop, address, requests)
        except BaseException as exc:  # handed to the loop, which raises it
            loop.call_soon_threadsafe(result.set_exception, exc)
        else:
            loop.call_soon_threadsafe(result.set_result, out)

    thread = threading.Thread(target=drive, name="bench-driver", daemon=True)
    thread.start()
    try:
        return await asyncio.wait_for(result, timeout=600)
    finally:
        await node.stop()
        thread.join(timeout=10)


def count_calls(data_dir: str, requests: int) -> dict[str, Any]:
    """Runs in its own process (``procs.call_in_process``)."""
    import uvloop

    port = procs.free_port()
    address = f"{procs.HOST}:{port}"
    argv = ["--listen", address, "--data-dir", data_dir, "--partitions",
            str(settings.PARTITIONS), "--disk-reserve-bytes", "0", "--http", "off",
            "--log-level", "warning"]  # fmt: skip
    return uvloop.run(_serve_and_count(argv, address, requests))


def call_figures(res: Results, work: Path, s: Settings) -> None:
    data_dir = work / "callcount"
    try:
        out = procs.call_in_process(
            count_calls, str(data_dir), s.call_count_requests, timeout_s=900
        )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    res.detail("calls", out)
    for key, label, target in (
        ("sync_event", "node Python calls per one-event SYNC ingest (cProfile, loop thread)",
         TARGET_CALLS_SYNC_EVENT),
        ("query", "node Python calls per query, whole month (cProfile, loop thread)",
         TARGET_CALLS_QUERY),
    ):  # fmt: skip
        phase = out[key]
        res.add(
            Figure(
                key=f"calls.{key}",
                label=label,
                value=phase["calls_per_request"],
                unit="calls",
                target=target,
                lower_is_better=True,
                note=f"{phase['python_calls_per_request']:.1f} of them Python functions, the rest "
                f"C; {phase['requests']} requests, idle calls subtracted "
                f"({phase['idle']['calls']} in {phase['idle']['seconds']:.2f}s)",
            )
        )
