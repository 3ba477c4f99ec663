"""Real node processes for integration, crash and SDK tests.

Each ``NodeProcess`` is a ``python -m unimeter.node`` child bound to 127.0.0.1 on a free port,
with its own data directory and log file. It is ended only by its own PID (SIGTERM or SIGKILL),
and every wait here is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a node could listen on ``port`` (it binds with SO_REUSEADDR, so connections
    of an earlier node still in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class NodeProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        partitions: int = 4,
        extra_args: tuple[str, ...] = (),
        http: bool = False,
        default_http: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.env = env  # extra environment variables for the child
        self.port = port or free_port()
        self.partitions = partitions
        self.extra_args = extra_args
        # The HTTP API only for tests that use it: it costs every node start the import of
        # aiohttp. On a free port of its own (the node's default, port + 79, could be taken
        # by another test's node), or on the default when the test is about the default.
        self.http_port: int | None = None
        if "--http" in extra_args:
            pass
        elif default_http:
            self.http_port = self.port + 79
        elif http:
            self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-node.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        assert self.http_port is not None, "this node's HTTP port is not known here"
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 30.0) -> NodeProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        log_start = log.tell()  # this run's lines start here (the log is kept across restarts)
        cmd = [
            sys.executable,
            "-m",
            "unimeter.node",
            "--listen",
            self.address,
            "--data-dir",
            str(self.data_dir),
            "--partitions",
            str(self.partitions),
            "--disk-reserve-bytes",
            "0",
            *self._http_args(),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env} if self.env else None,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        # The binary port opens first, the HTTP port right after it.
        ports = [self.port] if self.http_port is None else [self.port, self.http_port]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            if ports:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", ports[0]), timeout=0.2),
                ):
                    ports.pop(0)
                    continue
            elif self._serving_since(log_start):
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"node did not serve within {timeout_s}s:\n{self.log()}")

    def _serving_since(self, offset: int) -> bool:
        """Has this run logged ``event=serving``? The ports open a moment before the node
        serves (it first lets its catalog catch up), and meanwhile it answers "starting"."""
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return b"event=serving" in f.read()

    def _http_args(self) -> tuple[str, ...]:
        if "--http" in self.extra_args:
            return ()
        if self.http_port is None:
            return ("--http", "off")
        if self.http_port == self.port + 79:
            return ()  # the node's own default
        return ("--http", f"127.0.0.1:{self.http_port}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM by PID and wait for a clean exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL by PID: the crash we must survive."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def wait_exit(self, timeout_s: float) -> int | None:
        """The exit status once the node ended by itself within ``timeout_s``, else None."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ClusterProcesses:
    """N real node processes on free loopback ports, each listing all as peers."""

    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        *,
        partitions: int = 6,
        election_timeout_ms: int | None = 400,  # None: the node's default
        replication_factor: int = 3,
        http: bool = False,
        extra_args: tuple[str, ...] = (),  # given to every node
        node_args: dict[int, tuple[str, ...]] | None = None,  # given to one node
    ) -> None:
        ports = [free_port() for _ in range(nodes)]
        peers = ",".join(f"{i + 1}=127.0.0.1:{port}" for i, port in enumerate(ports))
        self.nodes = {
            i + 1: NodeProcess(
                root / f"node{i + 1}",
                port=port,
                partitions=partitions,
                http=http,
                extra_args=(
                    "--node-id",
                    str(i + 1),
                    "--peers",
                    peers,
                    "--replication-factor",
                    str(replication_factor),
                    *(
                        ("--election-timeout-ms", str(election_timeout_ms))
                        if election_timeout_ms is not None
                        else ()
                    ),
                    *extra_args,
                    *(node_args or {}).get(i + 1, ()),
                ),
            )
            for i, port in enumerate(ports)
        }

    @property
    def seeds(self) -> list[str]:
        return [n.address for n in self.nodes.values()]

    def start(self) -> ClusterProcesses:
        for node in self.nodes.values():
            node.start()
        return self

    def kill_all(self) -> None:
        for node in self.nodes.values():
            node.kill()
