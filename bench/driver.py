"""The parent side of a load run: start the load-generator processes together, collect.

Workers (``loadgen.worker_main``) are spawned, report "ready" once connected and with their
frames encoded, and all get the same start signal; the run's wall time spans from the first
start to the last drained reply. The servers' CPU time (one node, or every node of a cluster)
is read from /proc around the run, so every result says how busy the nodes and the generator
were. Everything is bounded: a worker
that does not report in time, or dies silently, fails the run, and any worker still alive at
the end is killed by its PID.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.loadgen import LoadSpec, WorkerResult, worker_main
from bench.procs import Child
from bench.settings import LOAD_SLACK_S
from bench.stats import summary


@dataclass(slots=True)
class LoadOutcome:
    workers: list[WorkerResult]
    wall_s: float
    server_cpu_s: float | None  # all the servers together
    server_cpu_each_s: tuple[float, ...] = ()  # per server, when there are several

    @property
    def failures(self) -> list[str]:
        return [w.failure for w in self.workers if w.failure]

    @property
    def stored(self) -> int:
        return sum(w.stored for w in self.workers)

    @property
    def replies(self) -> int:
        return sum(w.replies for w in self.workers)

    @property
    def events_per_s(self) -> float:
        return self.stored / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def replies_per_s(self) -> float:
        return self.replies / self.wall_s if self.wall_s > 0 else 0.0

    def latency(self) -> dict[str, float]:
        merged: list[float] = []
        for w in self.workers:
            merged.extend(w.latencies_us)
        return summary(merged)

    def details(self) -> dict[str, Any]:
        errors: dict[int, int] = {}
        for w in self.workers:
            for status, n in w.errors.items():
                errors[status] = errors.get(status, 0) + n
        loadgen_cpu = sum(w.cpu_s for w in self.workers)
        return {
            "wall_s": round(self.wall_s, 4),
            "events_stored": self.stored,
            "events_per_s": round(self.events_per_s, 1),
            "replies": self.replies,
            "replies_per_s": round(self.replies_per_s, 1),
            "duplicates": sum(w.duplicates for w in self.workers),
            "rejected": sum(w.rejected for w in self.workers),
            "error_statuses": {str(k): v for k, v in errors.items()},
            "error_sample": [s for w in self.workers for s in w.error_sample][:5],
            "pool_exhausted": any(w.exhausted for w in self.workers),
            "pool_frames": sum(w.pool_frames for w in self.workers),
            "pool_build_s": round(max((w.build_s for w in self.workers), default=0.0), 3),
            "server_cpu_s": None if self.server_cpu_s is None else round(self.server_cpu_s, 3),
            "server_cpu_share": (
                None
                if self.server_cpu_s is None or self.wall_s <= 0
                else round(self.server_cpu_s / self.wall_s, 3)
            ),
            **self._cpu_each(),
            "loadgen_cpu_s": round(loadgen_cpu, 3),
            "loadgen_cpu_share": round(loadgen_cpu / self.wall_s, 3) if self.wall_s else None,
            "latency_us": {k: round(v, 1) for k, v in self.latency().items()},
        }

    def _cpu_each(self) -> dict[str, Any]:
        """Each server's CPU time and share, in the order given (only when there are several)."""
        if not self.server_cpu_each_s:
            return {}
        return {
            "server_cpu_each_s": [round(c, 3) for c in self.server_cpu_each_s],
            "server_cpu_share_each": [
                round(c / self.wall_s, 3) if self.wall_s > 0 else None
                for c in self.server_cpu_each_s
            ],
        }


def run_load(
    specs: Sequence[LoadSpec],
    *,
    server: Child | None = None,
    servers: Sequence[Child] = (),
    on_start: Callable[[], None] | None = None,
) -> LoadOutcome:
    """Start one process per spec, start them together, wait (bounded) and collect.

    The CPU time of ``server`` and of every one of ``servers`` (a cluster's nodes) is recorded.
    ``on_start`` runs right after the start signal (the profiler attaches there)."""
    measured = ([server] if server is not None else []) + list(servers)
    ctx = mp.get_context("spawn")
    inbox: Any = ctx.Queue()
    go = ctx.Event()
    procs = [
        ctx.Process(target=worker_main, args=(spec, i, inbox, go), daemon=True)
        for i, spec in enumerate(specs)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, WorkerResult] = {}
    try:
        ready: set[int] = set()
        deadline = time.monotonic() + LOAD_SLACK_S * 2
        while len(ready | set(results)) < len(procs):
            _receive(inbox, deadline, procs, ready, results)
        cpu_before = [child.cpu_seconds() for child in measured]
        go.set()
        if on_start is not None:
            on_start()
        deadline = time.monotonic() + max(s.duration_s for s in specs) + LOAD_SLACK_S
        while len(results) < len(procs):
            _receive(inbox, deadline, procs, ready, results)
        cpu_after = [child.cpu_seconds() for child in measured]
    finally:
        go.set()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()  # SIGKILL to this worker's own PID
                proc.join(timeout=10)
    workers = [results[i] for i in range(len(procs))]
    live = [w for w in workers if not w.failure and w.ended > 0]
    wall = max(w.ended for w in live) - min(w.started for w in live) if live else 0.0
    each = tuple(after - before for before, after in zip(cpu_before, cpu_after, strict=True))
    return LoadOutcome(
        workers=workers,
        wall_s=wall,
        server_cpu_s=sum(each) if each else None,
        server_cpu_each_s=each if len(each) > 1 else (),
    )


def _receive(
    inbox: Any,
    deadline: float,
    procs: Sequence[Any],
    ready: set[int],
    results: dict[int, WorkerResult],
) -> None:
    """Take one report; a worker that died without reporting gets a failed result."""
    while True:
        try:
            what, index, payload = inbox.get(timeout=0.2)
        except queue.Empty:
            for index, proc in enumerate(procs):
                if index not in results and proc.exitcode is not None:
                    failure = f"load generator {index} exited with {proc.exitcode} silently"
                    results[index] = WorkerResult(index=index, failure=failure)
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("load-generator processes did not report in time") from None
            continue
        if what == "ready":
            ready.add(index)
        else:
            results[index] = payload
        return
