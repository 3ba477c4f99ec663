"""``python -m unimeter.cluster --nodes 3``: a local cluster for development.

Starts N node processes on 127.0.0.1 (ports ``--base-port`` upwards), each with its own data
directory under ``--data-dir``, all listing each other as peers. Ctrl-C or SIGTERM stops them
(SIGTERM to each child by PID, then waits). The same command line, given again with the same
data directory, restarts the same cluster with its data.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


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
    a = p.parse_args(argv)
    if a.nodes < 1:
        p.error("--nodes must be at least 1")
    cmds = node_commands(a.nodes, a.base_port, Path(a.data_dir), a.partitions, a.replication_factor)
    children = [subprocess.Popen(cmd) for cmd in cmds]
    seeds = ", ".join(f'"127.0.0.1:{a.base_port + i}"' for i in range(a.nodes))
    print(f"cluster of {a.nodes} nodes; connect with AsyncClient([{seeds}])", flush=True)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
    codes = [c.returncode for c in children]
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
