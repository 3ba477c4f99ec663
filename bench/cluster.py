"""The 3-node cluster section: the single-node ingest and latency figures again, replicated.

Three ``python -m unimeter.node`` processes on 127.0.0.1 (free ports, each with its own data
directory, all three listed as ``--peers``, ``--replication-factor 3``): every partition is on
every node and an ingest is acknowledged once a majority (its leader and one follower) has it;
SYNC waits for that majority's fsyncs. Like the single-node scenarios, every measurement gets a
fresh cluster, whose nodes are SIGKILLed by PID afterwards and whose data is removed.

Before the clock starts the metrics are created and the partition map is read from every node
(GET_PARTITION_MAP) until all three agree that each partition is led by its preferred node
(``unimeter.placement``). A fresh cluster first elects whoever campaigns first and then hands
each partition back to its preferred node within seconds; a hand-back during the measurement
would answer the frames in flight with NOT_LEADER. The load generator then sends each
partition's pre-encoded frames straight to its leader (``LoadSpec.routes``) with the single-node
run's window divided among the leaders, so each partition has as many requests in flight as in
the single-node figure it is compared with. The map is read again after the run: a leader that
moved is reported in the details and the figure's note.

The machine has two cores and this runs four busy processes on them (three nodes, one load
generator); the JSON records each one's CPU time.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import driver, loadgen, procs, settings
from bench.report import Figure, Results
from bench.scenarios import create_metrics
from bench.settings import CLUSTER_NODES, CLUSTER_READY_S_MAX, Settings
from unimeter import errors
from unimeter.placement import preferred_leader
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec

MAP_READ_TIMEOUT_S = 5.0
PERCENTILES = ("p50", "p90", "p99", "p999")
LIMITED_PERCENTILES = ("p50", "p99")  # those the raw server's latency limit has
# Each leader gets only its partitions' share of the pool, and on a shared machine one leader
# may run ahead of the others and use its share up before the duration is over: a larger pool
# (it only costs encoding time before the clock starts) keeps every connection busy to the end.
POOL_FACTOR = 2


@dataclass(slots=True)
class RunningCluster:
    nodes: list[procs.Child]  # node id i + 1 at index i
    catalog_version: int
    partition_map: m.PartitionMap  # as every node reported it before the clock started

    @property
    def routes(self) -> tuple[str, ...]:
        pmap = self.partition_map
        return tuple(pmap.nodes[leader] for leader in pmap.leaders)


# --------------------------------------------------------------------------- partition map


def read_partition_map(address: str) -> m.PartitionMap:
    """HELLO then GET_PARTITION_MAP on a fresh connection, as the client does on connect."""
    host, _, port = address.rpartition(":")
    codec = ClientCodec()
    hello = m.Hello(version=m.PROTOCOL_VERSION, client_name="unimeter-bench")
    with socket.create_connection((host, int(port)), timeout=MAP_READ_TIMEOUT_S) as sock:
        _exchange(sock, codec, codec.encode_request(1, hello))
        frame = _exchange(sock, codec, codec.encode_request(2, m.GetPartitionMap()))
    if frame.status != errors.Status.OK or not isinstance(frame.message, m.PartitionMap):
        raise RuntimeError(f"GET_PARTITION_MAP to {address} was answered with {frame!r:.300}")
    return frame.message


def _exchange(sock: socket.socket, codec: ClientCodec, request: bytes) -> m.ResponseFrame:
    sock.sendall(request)
    while True:
        frame = codec.next_frame()
        if frame is not None:
            return frame
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the node closed the connection")
        codec.feed(chunk)


def preferred_leaders(partitions: int) -> tuple[int, ...]:
    members = tuple(range(1, CLUSTER_NODES + 1))
    return tuple(preferred_leader(p, members, CLUSTER_NODES) for p in range(partitions))


def wait_for_preferred_leaders(nodes: list[procs.Child]) -> m.PartitionMap:
    """The partition map once every node reports every partition led by its preferred node."""
    wanted = preferred_leaders(settings.PARTITIONS)
    deadline = time.monotonic() + CLUSTER_READY_S_MAX
    seen: list[tuple[int, ...]] | str = "no map read yet"
    while time.monotonic() < deadline:
        try:
            maps = [read_partition_map(node.address) for node in nodes]
        except (OSError, RuntimeError) as exc:  # a node still starting its groups
            seen = repr(exc)
        else:
            seen = [mp.leaders for mp in maps]
            if all(leaders == wanted for leaders in seen):
                return maps[0]
        time.sleep(0.1)
    raise TimeoutError(
        f"partitions not led by their preferred nodes {wanted} within "
        f"{CLUSTER_READY_S_MAX}s; the nodes report {seen}"
    )


# --------------------------------------------------------------------------- the cluster


@contextmanager
def fresh_cluster(work: Path, name: str) -> Iterator[RunningCluster]:
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    ports = [procs.free_port() for _ in range(CLUSTER_NODES)]
    peers = ",".join(f"{i + 1}={procs.HOST}:{port}" for i, port in enumerate(ports))
    nodes = [
        procs.node(
            root / f"node{i + 1}",
            partitions=settings.PARTITIONS,
            log_path=work / f"{name}-node{i + 1}.log",  # kept with --keep-work, like a node's
            port=port,
            extra=(
                "--node-id",
                str(i + 1),
                "--peers",
                peers,
                "--replication-factor",
                str(CLUSTER_NODES),
            ),
        )
        for i, port in enumerate(ports)
    ]
    try:
        for node in nodes:
            node.start()
        version = asyncio.run(create_metrics(nodes[0].address, with_region=False))
        partition_map = wait_for_preferred_leaders(nodes)
        yield RunningCluster(nodes, version, partition_map)
    finally:
        for node in nodes:
            node.kill()  # by its PID; the data is thrown away
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- measurements


def cluster(res: Results, work: Path, s: Settings) -> None:
    """ASYNC and SYNC ingest at batch 500 and the SYNC single-event latency, on 3 nodes."""
    for mode, window in (
        ("async", settings.WINDOW_ASYNC_B500),
        ("sync", settings.WINDOW_SYNC_B500),
    ):
        key = f"cluster.{mode}.b500"
        with fresh_cluster(work, key) as running:
            job = loadgen.IngestJob(
                batch=500,
                sync=mode == "sync",
                frames=s.pool_frames_b500 * POOL_FACTOR,
                accounts=settings.ACCOUNTS,
                catalog_version=running.catalog_version,
            )
            spec = _spec(running, job, duration_s=s.ingest_duration_s, window=window)
            run = _run(running, spec)
        res.detail(key, run.details())
        res.add(
            Figure(
                key=key,
                label=f"3-node cluster {mode.upper()} ingest, batch 500, 1 loadgen process",
                value=run.outcome.events_per_s,
                unit="ev/s",
                limit_key=f"limit.raw.{mode}.b500",
                baseline_key=f"ingest.{mode}.b500.p1",
                note=run.note(),
            )
        )
    sync_latency(res, work, s)


def sync_latency(res: Results, work: Path, s: Settings) -> None:
    with fresh_cluster(work, "cluster.latency") as running:
        job = loadgen.IngestJob(
            batch=1,
            sync=True,
            frames=s.latency_samples + 200,
            accounts=settings.ACCOUNTS,
            catalog_version=running.catalog_version,
        )
        spec = _spec(
            running,
            job,
            duration_s=s.latency_time_s_max,
            pingpong=True,
            samples_max=s.latency_samples,
        )
        run = _run(running, spec)
    res.detail("cluster.latency.sync.b1", run.details())
    lat = run.outcome.latency()
    for p in PERCENTILES:
        res.add(
            Figure(
                key=f"cluster.latency.sync.b1.{p}",
                label=f"3-node cluster SYNC single event, one worker, {p}",
                value=lat.get(p),
                unit="us",
                limit_key=f"limit.raw.sync.latency.{p}" if p in LIMITED_PERCENTILES else None,
                lower_is_better=True,
                baseline_key=f"latency.sync.b1.{p}",
                note=f"{int(lat['n'])} samples; {run.note()}",
            )
        )


def _spec(
    running: RunningCluster,
    job: loadgen.IngestJob,
    *,
    duration_s: float,
    window: int = 1,
    pingpong: bool = False,
    samples_max: int = 0,
) -> loadgen.LoadSpec:
    return loadgen.LoadSpec(
        address=running.nodes[0].address,
        partitions=settings.PARTITIONS,
        job=job,
        duration_s=duration_s,
        window=window,
        pingpong=pingpong,
        samples_max=samples_max,
        routes=running.routes,
    )


@dataclass(slots=True)
class ClusterRun:
    outcome: driver.LoadOutcome
    leaders_before: tuple[int, ...]
    leaders_after: list[tuple[int, ...]] | str  # per node, or why they could not be read

    @property
    def moved(self) -> list[int] | None:
        """Partitions some node saw led elsewhere after the run (None: map not read)."""
        if isinstance(self.leaders_after, str):
            return None
        return sorted(
            {
                p
                for leaders in self.leaders_after
                for p, leader in enumerate(leaders)
                if leader != self.leaders_before[p]
            }
        )

    def details(self) -> dict[str, Any]:
        return {
            **self.outcome.details(),
            "nodes": CLUSTER_NODES,
            "replication_factor": CLUSTER_NODES,
            "leaders_before": list(self.leaders_before),
            "leaders_after": self.leaders_after,
            "partitions_whose_leader_moved": self.moved,
        }

    def note(self) -> str:
        d = self.outcome.details()
        each = ", ".join(str(share) for share in d.get("server_cpu_share_each", []))
        errors_seen = f", errors {d['error_statuses']}" if d["error_statuses"] else ""
        exhausted = ", pool used up" if d["pool_exhausted"] else ""
        moved = self.moved
        leaders = (
            ", leaders not read after the run"
            if moved is None
            else (f", leader moved for partitions {moved}" if moved else "")
        )
        return (
            f"node CPU {each} (sum {d['server_cpu_share']}), loadgen CPU "
            f"{d['loadgen_cpu_share']} (cores busy){errors_seen}{exhausted}{leaders}"
        )


def _run(running: RunningCluster, spec: loadgen.LoadSpec) -> ClusterRun:
    outcome = driver.run_load([spec], servers=running.nodes)
    if outcome.failures:
        raise RuntimeError("load generator failed:\n" + "\n".join(outcome.failures))
    after: list[tuple[int, ...]] | str
    try:
        after = [read_partition_map(node.address).leaders for node in running.nodes]
    except (OSError, RuntimeError) as exc:
        after = repr(exc)
    return ClusterRun(outcome, running.partition_map.leaders, after)
