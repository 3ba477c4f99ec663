"""``python -m unimeter.cluster``: a dead node is reported and the others keep running.

The launcher runs as a child on free ports; the test kills one of its nodes by the PID the
launcher printed, then checks the report (with the restart command), that the other nodes still
serve, and -- with ``--restart`` -- that the node comes back and the cluster serves exact totals.
A taken port is refused at once with a message naming it, without a traceback and without
starting anything. Every wait is bounded; processes are ended by PID only.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.nodeproc import port_is_free
from unimeter import AggType, AsyncClient, DeliveryMode, Event, MetricSchema, current_month

WAIT_S = 30.0
LAUNCH = [sys.executable, "-m", "unimeter.cluster"]
NODE = [sys.executable, "-m", "unimeter.node"]


def free_port_run(count: int) -> int:
    """A base port with ``count`` free ports from it (probed, then handed to the launcher)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count < 65536 and all(port_is_free(base + i) for i in range(count)):
            return base
    raise AssertionError("no run of free ports found")


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


class Launcher:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.out_path = tmp_path / "launcher.out"
        self.base = free_port_run(3)
        cmd = [sys.executable, "-m", "unimeter.cluster", "--nodes", "3"]
        cmd += ["--base-port", str(self.base), "--data-dir", str(tmp_path / "cluster")]
        cmd += ["--partitions", "4", *args]
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_for(self, pattern: str, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            found = re.compile(pattern).search(self.output(), after)
            if found:
                return found
            assert self.proc.poll() is None, f"launcher exited:\n{self.output()}"
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {WAIT_S}s:\n{self.output()}")

    def node_pid(self, node_id: int, after: int = 0) -> tuple[int, int]:
        found = self.wait_for(rf"node {node_id}: pid (\d+),", after)
        return int(found.group(1)), found.end()

    def wait_serving(self) -> None:
        """Until every node of the launcher accepts connections."""
        self.wait_for("cluster of 3 nodes")
        deadline = time.monotonic() + WAIT_S
        for i in range(3):
            while not accepts(self.base + i):
                assert time.monotonic() < deadline, f"node {i + 1} never listened"
                assert self.proc.poll() is None, f"launcher exited:\n{self.output()}"
                time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=60)

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{self.base + i}" for i in range(3)]


async def ingest_and_total(seeds: list[str], account: int) -> int:
    async with AsyncClient(seeds, request_timeout=20.0) as client:
        await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
        await client.ingest(
            [Event(account_id=account, metric_code="calls", value=1)], delivery=DeliveryMode.SYNC
        )
        return (await client.query(account, "calls", current_month())).value.sum


async def test_a_dead_node_is_reported_the_others_serve_and_restart_brings_it_back(
    tmp_path: Path,
) -> None:
    launcher = Launcher(tmp_path, "--restart")
    try:
        launcher.wait_serving()
        assert await ingest_and_total(launcher.seeds, 1) == 1
        pid, _ = launcher.node_pid(2)
        os.kill(pid, signal.SIGKILL)  # a child of the launcher this test started
        report = launcher.wait_for(r"node 2 exited with status -9; the other nodes keep running")
        assert "--node-id 2" in launcher.output()[report.end() :]  # the restart command
        # The two others still form a quorum and serve.
        others = [launcher.seeds[0], launcher.seeds[2]]
        assert await ingest_and_total(others, 1) == 2
        new_pid, _ = launcher.node_pid(2, after=report.end())
        assert new_pid != pid
        launcher.wait_serving()
        assert await ingest_and_total([launcher.seeds[1]], 1) == 3
    finally:
        status = launcher.stop()
    assert status == 0, launcher.output()
    assert "Traceback" not in launcher.output()


async def test_without_restart_the_dead_node_stays_down_and_the_others_keep_running(
    tmp_path: Path,
) -> None:
    launcher = Launcher(tmp_path)
    try:
        launcher.wait_serving()
        pid, _ = launcher.node_pid(3)
        os.kill(pid, signal.SIGKILL)
        launcher.wait_for("node 3 exited with status -9")
        assert launcher.proc.poll() is None
        assert await ingest_and_total(launcher.seeds[:2], 5) == 1
    finally:
        launcher.stop()


def test_a_taken_port_is_named_at_once_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = int(holder.getsockname()[1])
        started = time.monotonic()
        launcher = subprocess.run(
            [*LAUNCH, "--nodes", "3", "--base-port", str(port), "--data-dir", str(tmp_path / "c")],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
        node = subprocess.run(
            [*NODE, "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "node")],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
        elapsed = time.monotonic() - started
    assert launcher.returncode == 2 and f"port {port} on 127.0.0.1 is taken" in launcher.stderr
    assert not (tmp_path / "c").exists()  # nothing was started
    assert node.returncode == 2 and "the port is taken" in node.stderr
    for out in (launcher.stdout + launcher.stderr, node.stdout + node.stderr):
        assert "Traceback" not in out, out
    assert elapsed < 10.0, f"refusing a taken port took {elapsed:.1f}s"


def test_the_launcher_module_runs_its_nodes_with_this_interpreter() -> None:
    from unimeter.cluster import node_commands

    [cmd] = node_commands(1, 7001, Path("d"), 2, 1)
    assert cmd[:3] == [sys.executable, "-m", "unimeter.node"]
    assert asyncio.iscoroutinefunction(ingest_and_total)
