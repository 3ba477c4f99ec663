"""``python -m unimeter.cluster --nodes 3``: a local cluster for development.

Starts N node processes on 127.0.0.1 (ports ``--base-port`` upwards), each with its own data
directory under ``--data-dir``, all listing each other as peers. The same command line, given
again with the same data directory, restarts the same cluster with its data.

A node that dies is reported, with the command that restarts it, and the others keep running:
that is how to watch a failover (kill one node; clients carry on). With ``--restart`` the
launcher restarts a dead node itself, after a pause that doubles while it keeps dying at once.
Ctrl-C or SIGTERM stops every node (SIGTERM to each child by PID, then waits). Ports are checked
before anything starts: a port that is taken is named, and nothing is started.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

poll_interval_s = 0.2
restart_pause_s_initial = 1.0
restart_pause_s_max = 30.0
stop_wait_s = 30.0


def node_commands(
    nodes: int,
    base_port: int,
    data_dir: Path,
    partitions: int,
    replication_factor: int,
    extra: Sequence[str] = (),
) -> list[list[str]]:
    peers = ",".join(f"{i}=127.0.0.1:{base_port + i - 1}" for i in range(1, nodes + 1))
    return [
        [
            sys.executable,
            "-m",
            "unimeter.node",
            "--node-id",
            str(i),
            "--listen",
            f"127.0.0.1:{base_port + i - 1}",
            "--peers",
            peers,
            "--data-dir",
            str(data_dir / f"node{i}"),
            "--partitions",
            str(partitions),
            "--replication-factor",
            str(replication_factor),
            *extra,
        ]
        for i in range(1, nodes + 1)
    ]


def taken_ports(ports: Sequence[int]) -> list[int]:
    """The ports among ``ports`` that 127.0.0.1 cannot listen on now."""
    taken = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node binds
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                taken.append(port)
    return taken


class Member:
    """One node process of the cluster, restartable."""

    def __init__(self, node_id: int, cmd: list[str]) -> None:
        self.node_id = node_id
        self.cmd = cmd
        self.proc: subprocess.Popen[bytes] | None = None
        self.quick_deaths = 0  # deaths in a row, each soon after its start
        self.started_at = 0.0
        self.restart_at: float | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd)
        self.started_at = time.monotonic()
        self.restart_at = None
        print(f"node {self.node_id}: pid {self.proc.pid}, {self.cmd[6]}", flush=True)

    def check(self, restart: bool) -> None:
        """Report a death once; with ``restart``, start it again when its pause is over."""
        now = time.monotonic()
        if self.proc is not None and self.proc.poll() is not None:
            status = self.proc.returncode
            self.proc = None
            print(
                f"node {self.node_id} exited with status {status}; the other nodes keep "
                f"running. Restart it with:\n  {shlex.join(self.cmd)}",
                flush=True,
            )
            if restart:
                # A node that dies at once again (a taken port, a damaged disk) is retried
                # ever more slowly instead of in a tight loop.
                lived_s = now - self.started_at
                self.quick_deaths = 0 if lived_s > restart_pause_s_max else self.quick_deaths + 1
                pause_s = min(
                    restart_pause_s_initial * 2 ** max(0, self.quick_deaths - 1),
                    restart_pause_s_max,
                )
                self.restart_at = now + pause_s
                print(f"node {self.node_id}: restarting in {pause_s:.0f}s", flush=True)
        if restart and self.restart_at is not None and now >= self.restart_at:
            self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def wait(self) -> int:
        if self.proc is None:
            return 0
        try:
            return self.proc.wait(timeout=stop_wait_s)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m unimeter.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--base-port", type=int, default=7001)
    p.add_argument("--data-dir", default="./unimeter-cluster")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--replication-factor", type=int, default=3)
    p.add_argument("--restart", action="store_true", help="restart a node that dies")
    a = p.parse_args(argv)
    if a.nodes < 1:
        p.error("--nodes must be at least 1")
    ports = [a.base_port + i for i in range(a.nodes)]
    taken = taken_ports(ports)
    if taken:
        print(
            f"port {', '.join(map(str, taken))} on 127.0.0.1 is taken (another node or "
            f"cluster still running?); stop it, or choose other ports with --base-port",
            file=sys.stderr,
            flush=True,
        )
        return 2
    cmds = node_commands(a.nodes, a.base_port, Path(a.data_dir), a.partitions, a.replication_factor)
    members = [Member(i + 1, cmd) for i, cmd in enumerate(cmds)]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for member in members:
        member.start()
    seeds = ", ".join(f'"127.0.0.1:{port}"' for port in ports)
    print(f"cluster of {a.nodes} nodes; connect with AsyncClient([{seeds}])", flush=True)
    try:
        while not stopping:
            for member in members:
                member.check(a.restart)
            time.sleep(poll_interval_s)
    finally:
        for member in members:
            member.stop()
        codes = [member.wait() for member in members]
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
