"""``python -m unimeter.node``: one Unimeter node.

With no arguments it serves a single-node cluster on 127.0.0.1:7001 with its data in
``./unimeter-data``. Every flag has a ``UNIMETER_*`` environment twin (``--data-dir`` ->
``UNIMETER_DATA_DIR``). The node recovers every partition from disk before it listens, so it
never answers from a half-loaded state. SIGTERM (or SIGINT) stops accepting work, lets what is in
flight finish, syncs, snapshots and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cbor2

from unimeter import errors, limits
from unimeter.actors.catalog import CatalogCore, decode_catalog_entry
from unimeter.actors.connection import ClientConnection
from unimeter.actors.mailbox import Mailbox
from unimeter.actors.partition import CatalogUpdate, PartitionCore
from unimeter.actors.partition_state import PartitionState
from unimeter.admin_http import AdminServer
from unimeter.node_runtimes import CatalogRuntime, PartitionRuntime
from unimeter.routing import PartitionCache
from unimeter.storage.diskspace import DiskSpaceWatch
from unimeter.storage.fsutil import atomic_write
from unimeter.storage.snapshot import load_latest_snapshot
from unimeter.storage.wal import WriteAheadLog
from unimeter.wire import messages as m
from unimeter.wire.records import decode_entry

log = logging.getLogger("unimeter.node")

# The limits a client needs to know before it sends (announced in WELCOME).
ANNOUNCED_LIMITS = (
    "frame_bytes_max",
    "events_per_batch_max",
    "properties_per_event_max",
    "metric_code_bytes_max",
    "event_id_bytes_max",
    "property_key_bytes_max",
    "property_value_bytes_max",
    "in_flight_requests_per_connection_max",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    node_id: int = 1
    listen: str = "127.0.0.1:7001"
    advertise: str | None = None
    peers: str = ""
    data_dir: str = "./unimeter-data"
    partitions: int = limits.partitions_default
    replication_factor: int = 3
    disk_reserve_bytes: int = 64 * 1024 * 1024
    retention_days: int = limits.retention_days_default
    log_level: str = "info"
    http: str | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        return split_address(self.listen)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} must be HOST:PORT")
    return host or "127.0.0.1", int(port)


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.partition_count = config.partitions
        self.route = PartitionCache(config.partitions)
        self.cluster_id = ""
        self.partitions: list[PartitionRuntime] = []
        self.catalog: CatalogRuntime | None = None
        self.catalog_mailbox: Mailbox[object] = Mailbox(limits.mailbox_catalog_capacity)
        self.connections: set[ClientConnection] = set()
        self.serving = False
        self.disk = DiskSpaceWatch(str(self.data_dir), config.disk_reserve_bytes)
        self.disk_ok = True
        self._server: asyncio.Server | None = None
        self._admin: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._load_cluster_identity()
        self.disk = DiskSpaceWatch(str(self.data_dir), self.config.disk_reserve_bytes)
        self.catalog = self._recover_catalog()
        for p in range(self.partition_count):
            self.partitions.append(self._recover_partition(p))
        for runtime in [self.catalog, *self.partitions]:
            self._tasks.append(asyncio.create_task(runtime.run(), name=runtime.name))
        self._tasks.append(asyncio.create_task(self._watch_disk(), name="disk-watch"))
        await self._publish_catalog_to_lagging_partitions()
        host, port = self.config.host_port
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_address=True
        )
        if self.config.http:
            admin_host, admin_port = split_address(self.config.http)
            self._admin = await AdminServer(self).start(admin_host, admin_port)
        self.serving = True
        log.info(
            "event=serving listen=%s:%d partitions=%d data_dir=%s recovery_s=%.3f",
            host,
            port,
            self.partition_count,
            self.data_dir,
            time.monotonic() - started,
        )

    def _load_cluster_identity(self) -> None:
        path = self.data_dir / "cluster.cbor"
        if path.exists():
            meta = cbor2.loads(path.read_bytes())
            if meta["partitions"] != self.partition_count:
                raise SystemExit(
                    f"{self.data_dir} was created with --partitions {meta['partitions']}; "
                    f"the partition count is fixed at cluster creation (got "
                    f"{self.partition_count})"
                )
            self.cluster_id = meta["cluster_id"]
            return
        self.cluster_id = uuid.uuid4().hex
        atomic_write(
            path, cbor2.dumps({"cluster_id": self.cluster_id, "partitions": self.partition_count})
        )

    def _recover_catalog(self) -> CatalogRuntime:
        wal, _ = WriteAheadLog.open(self.data_dir / "catalog")
        entries = [decode_catalog_entry(payload) for _, payload in wal.read_from(wal.first_index)]
        core = CatalogCore(entries)
        log.info("event=recovered actor=catalog entries=%d version=%d", len(entries), core.version)
        return CatalogRuntime(self, core, wal, self.catalog_mailbox)

    def _recover_partition(self, p: int) -> PartitionRuntime:
        started = time.monotonic()
        directory = self.data_dir / "partitions" / f"{p:04d}"
        directory.mkdir(parents=True, exist_ok=True)
        snap = load_latest_snapshot(directory)
        if snap is None:
            state = PartitionState(p, retention_days=self.config.retention_days)
        else:
            state = PartitionState.from_snapshot(snap[1])
        wal, report = WriteAheadLog.open(directory, first_index=state.applied_index + 1)
        replayed = 0
        for index, payload in wal.read_from(max(wal.first_index, state.applied_index + 1)):
            state.apply(index, decode_entry(payload))
            replayed += 1
        core = PartitionCore(p, state, retention_days=self.config.retention_days)
        log.info(
            "event=recovered actor=partition-%d snapshot_index=%s replayed=%d "
            "torn_tail_bytes=%d elapsed_s=%.3f",
            p,
            snap[0] if snap else None,
            replayed,
            report.torn_tail_bytes,
            time.monotonic() - started,
        )
        return PartitionRuntime(f"partition-{p}", core, wal, directory)

    async def _publish_catalog_to_lagging_partitions(self) -> None:
        assert self.catalog is not None
        version, metrics = self.catalog.core.published()
        for runtime in self.partitions:
            if runtime.core.state.catalog_version < version:
                await runtime.mailbox.send(CatalogUpdate(version, metrics))

    async def _watch_disk(self) -> None:
        while True:
            ok = await asyncio.get_running_loop().run_in_executor(None, self.disk.check)
            if ok != self.disk_ok:
                log.warning(
                    "event=disk_space ok=%s reserve_bytes=%d", ok, self.config.disk_reserve_bytes
                )
            self.disk_ok = ok
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ serve

    def welcome(self) -> m.Welcome:
        return m.Welcome(
            node_id=self.config.node_id,
            cluster_id=self.cluster_id,
            version=m.PROTOCOL_VERSION,
            limits={name: getattr(limits, name) for name in ANNOUNCED_LIMITS},
            partitions=self.partition_count,
        )

    def advertised(self) -> str:
        if self.config.advertise:
            return self.config.advertise
        host, port = self.config.host_port
        return f"{host}:{port}"

    def partition_map(self) -> m.PartitionMap:
        return m.PartitionMap(
            partitions=self.partition_count,
            nodes={self.config.node_id: self.advertised()},
            leaders=(self.config.node_id,) * self.partition_count,
            epoch=1,
        )

    def cluster_status(self) -> m.ClusterStatusReply:
        assert self.catalog is not None
        return m.ClusterStatusReply(
            node_id=self.config.node_id,
            cluster_id=self.cluster_id,
            nodes={self.config.node_id: self.advertised()},
            partitions=tuple(
                m.PartitionInfo(
                    partition=i,
                    leader=self.config.node_id,
                    term=1,
                    commit_index=r.core.durable_index,
                    applied_index=r.core.state.applied_index,
                )
                for i, r in enumerate(self.partitions)
            ),
            catalog_version=self.catalog.core.version,
        )

    def check_ingest(self, msg: m.Ingest) -> tuple[errors.Status, str] | None:
        """Refuse a whole ingest request before it reaches the partition, or None."""
        runtime = self.partitions[msg.partition]
        if not self.disk_ok or runtime.disk_full_until > time.monotonic():
            return errors.Status.BACKPRESSURE, (
                f"free disk space under the reserve ({self.config.disk_reserve_bytes} bytes); "
                "writes resume when space returns"
            )
        route = self.route
        part = msg.partition
        for account in set(msg.batch.account_ids):
            if route(account) != part:
                return errors.Status.INVALID_REQUEST, (
                    f"account {account} lives in partition {route(account)}, not {part}"
                )
        return None

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Stop accepting, finish what is in flight, sync, snapshot, close."""
        self.serving = False
        if self._server is not None:
            self._server.close()
        if self._admin is not None:
            self._admin.close()
        # Let queued work drain: every mailbox empty and every log durable.
        for _ in range(200):
            busy = any(len(r.mailbox) for r in self.partitions) or (
                self.catalog is not None and len(self.catalog.mailbox) > 0
            )
            if not busy:
                break
            await asyncio.sleep(0.01)
        for runtime in self.partitions:
            await runtime.flush()
        if self.catalog is not None:
            await self.catalog.flush()
        await asyncio.sleep(0)  # let the last Durable messages be stepped
        for runtime in self.partitions:
            await runtime.flush_and_settle()
        for conn in list(self.connections):
            conn.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runtime in self.partitions:
            runtime.checkpoint()
            runtime.wal.close()
        if self.catalog is not None:
            self.catalog.wal.close()
        log.info("event=stopped")


# ---------------------------------------------------------------------- command line


def _env(name: str, default: str) -> str:
    return os.environ.get("UNIMETER_" + name.upper().replace("-", "_"), default)


def parse_args(argv: Sequence[str] | None = None) -> NodeConfig:
    d = NodeConfig()
    p = argparse.ArgumentParser(
        prog="python -m unimeter.node",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--node-id", type=int, default=int(_env("node-id", str(d.node_id))))
    p.add_argument("--listen", default=_env("listen", d.listen), help="HOST:PORT")
    p.add_argument(
        "--advertise",
        default=_env("advertise", "") or None,
        help="HOST:PORT clients should dial (default: --listen)",
    )
    p.add_argument("--peers", default=_env("peers", d.peers), help="ID=HOST:PORT,...")
    p.add_argument("--data-dir", default=_env("data-dir", d.data_dir))
    p.add_argument(
        "--partitions",
        type=int,
        default=int(_env("partitions", str(d.partitions))),
        help="fixed when the data directory is created",
    )
    p.add_argument(
        "--replication-factor",
        type=int,
        default=int(_env("replication-factor", str(d.replication_factor))),
    )
    p.add_argument(
        "--disk-reserve-bytes",
        type=int,
        default=int(_env("disk-reserve-bytes", str(d.disk_reserve_bytes))),
    )
    p.add_argument(
        "--retention-days", type=int, default=int(_env("retention-days", str(d.retention_days)))
    )
    p.add_argument(
        "--http",
        default=_env("http", "") or None,
        help="HOST:PORT for /health and /metrics (off by default)",
    )
    p.add_argument(
        "--log-level",
        default=_env("log-level", d.log_level),
        choices=["debug", "info", "warning", "error"],
    )
    a = p.parse_args(argv)
    if not 1 <= a.partitions <= limits.partitions_max:
        p.error(f"--partitions must be 1-{limits.partitions_max}")
    try:
        split_address(a.listen)
        if a.http:
            split_address(a.http)
    except ValueError as exc:
        p.error(str(exc))
    return NodeConfig(
        node_id=a.node_id,
        listen=a.listen,
        advertise=a.advertise,
        peers=a.peers,
        data_dir=a.data_dir,
        partitions=a.partitions,
        replication_factor=a.replication_factor,
        disk_reserve_bytes=a.disk_reserve_bytes,
        retention_days=a.retention_days,
        log_level=a.log_level,
        http=a.http,
    )


async def serve(config: NodeConfig) -> None:
    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    await stop.wait()
    log.info("event=stopping")
    await node.stop()


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))


if __name__ == "__main__":
    main()
