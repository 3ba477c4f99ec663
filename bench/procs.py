"""Child processes of the benchmark: nodes and servers on 127.0.0.1, stopped by PID only.

A ``Child`` is started with its output in a log file, waited for until its port accepts a
connection (the time that takes is the figure the recovery scenario needs), and stopped with
SIGTERM or SIGKILL sent to its own PID. Nothing here looks processes up by name. The runner
keeps every child in a registry and stops whatever is still running when it exits, even after
an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.settings import CHILD_START_S_MAX

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]  # children run from here, so ``bench`` imports
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_RUNNING: dict[int, Child] = {}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ChildFailed(RuntimeError):
    """A child exited early or did not listen in time; the message ends with its log tail."""


class Child:
    def __init__(self, name: str, argv: list[str], port: int, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = CHILD_START_S_MAX) -> float:
        """Spawn and wait until the port accepts; returns the seconds that took."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
            )
        _RUNNING[self.proc.pid] = self
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChildFailed(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.1):
                return time.monotonic() - started
            time.sleep(0.002)
        self.kill()
        raise ChildFailed(f"{self.name} did not listen within {timeout_s}s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time the child has used so far (0 once it is gone)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def rss_bytes(self) -> int:
        text = Path(f"/proc/{self.pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
        assert found is not None
        return int(found.group(1)) * 1024

    def terminate(self, timeout_s: float = 120.0) -> tuple[int, float]:
        """SIGTERM by PID and wait; returns (exit code, seconds to exit)."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        _RUNNING.pop(self.proc.pid, None)
        return code, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL by PID and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        _RUNNING.pop(self.proc.pid, None)


def node(
    data_dir: Path,
    *,
    partitions: int,
    log_path: Path | None = None,
    prefix: tuple[str, ...] = (),
    port: int | None = None,
    extra: tuple[str, ...] = (),
) -> Child:
    """A ``python -m unimeter.node`` child on ``port`` (default: a free one); ``prefix`` wraps
    the module run (``("-m", "cProfile", "-o", FILE)`` profiles it), ``extra`` is appended to
    its arguments (a cluster member's ``--node-id`` and ``--peers``)."""
    port = port or free_port()
    argv = [
        sys.executable,
        *prefix,
        "-m",
        "unimeter.node",
        "--listen",
        f"{HOST}:{port}",
        "--data-dir",
        str(data_dir),
        "--partitions",
        str(partitions),
        "--disk-reserve-bytes",
        "0",
        "--log-level",
        "info",
        # The HTTP API only where a section asks for it (its import would lengthen every
        # start, which the recovery section times; its default port could clash).
        *(() if "--http" in extra else ("--http", "off")),
        *extra,
    ]
    log = log_path or data_dir.parent / f"{data_dir.name}.log"
    return Child(f"node {data_dir.name}", argv, port, log)


def raw_server(work: Path, mode: str, *, partitions: int) -> Child:
    """A ``python -m bench.rawserver`` child (echo, async or sync)."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.rawserver",
        "--listen",
        f"{HOST}:{port}",
        "--mode",
        mode,
        "--file",
        str(work / f"raw-{mode}-{port}"),
        "--partitions",
        str(partitions),
    ]
    return Child(f"rawserver {mode}", argv, port, work / f"rawserver-{mode}-{port}.out")


def stop_all() -> None:
    """SIGKILL every child still running (error or interrupt paths), each by its PID."""
    for child in list(_RUNNING.values()):
        child.kill()


def recovery_seconds(child: Child) -> float | None:
    """The node's own ``recovery_s`` from its last ``event=serving`` log line."""
    found = re.findall(r"event=serving .*?recovery_s=([0-9.]+)", child.tail(200_000))
    return float(found[-1]) if found else None


def listening_seconds(child: Child) -> float | None:
    """The node's own ``listening_s`` (from the start of recovery until its port accepted)
    from its last ``event=serving`` log line."""
    found = re.findall(r"event=serving .*?listening_s=([0-9.]+)", child.tail(200_000))
    return float(found[-1]) if found else None


# --------------------------------------------------------------------------- in a fresh process


def call_in_process(target: Callable[..., Any], *args: Any, timeout_s: float) -> Any:
    """``target(*args)`` in a fresh spawned interpreter, so a measurement neither inherits this
    process's heap nor disturbs it; bounded by ``timeout_s`` (then SIGKILL by PID)."""
    ctx = mp.get_context("spawn")
    inbox: Any = ctx.Queue()
    proc = ctx.Process(target=_trampoline, args=(inbox, target, args), daemon=True)
    proc.start()
    try:
        status, payload = inbox.get(timeout=timeout_s)
    except queue.Empty:
        raise TimeoutError(f"{target.__name__} did not finish within {timeout_s}s") from None
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)
    if status != "ok":
        raise RuntimeError(f"{target.__name__} failed in its process:\n{payload}")
    return payload


def _trampoline(inbox: Any, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        inbox.put(("ok", target(*args)))
    except BaseException:
        inbox.put(("error", traceback.format_exc()))


# --------------------------------------------------------------------------- other load


def cpu_snapshot() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and of the
    children it has reaped). Between two snapshots taken when no child is running, the
    difference of the two is what *other* programs used: the bench's neighbours."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, first)
    busy = (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system
