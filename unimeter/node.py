"""``python -m unimeter.node``: one Unimeter node.

With no arguments it serves a single-node cluster on 127.0.0.1:7001 with its data in
``./unimeter-data``. Every flag has a ``UNIMETER_*`` environment twin (``--data-dir`` ->
``UNIMETER_DATA_DIR``). The node recovers every partition from disk before it listens, so it
never answers from a half-loaded state. SIGTERM (or SIGINT) stops accepting work, lets what is in
flight finish, syncs, snapshots and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import secrets
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
import numpy as np

from unimeter import errors, limits, testing_switches
from unimeter.actors.catalog import CatalogCore, CatalogState
from unimeter.actors.connection import ClientConnection
from unimeter.actors.mailbox import Mailbox, MailboxClosed, MailboxFull
from unimeter.actors.partition import CatalogUpdate, PartitionCore
from unimeter.actors.replicated import DiskState, PeerLost, PeerMessage, Recovered
from unimeter.actors.runtime import ReplicaRuntime, now_us, recover_replica
from unimeter.checkpoints import Checkpoints, SnapshotPolicy
from unimeter.consensus.codec import CATALOG_GROUP
from unimeter.consensus.config import RaftConfig
from unimeter.node_runtimes import CatalogRuntime, PartitionRuntime
from unimeter.observe import NodeStats
from unimeter.peer import PeerLinks
from unimeter.placement import replicas_of
from unimeter.routing import PartitionCache
from unimeter.security.cluster_secret import MemberGreeting
from unimeter.security.exposure import exposure_problem, is_loopback
from unimeter.security.gate import load_gatekeeper
from unimeter.security.tls import node_tls
from unimeter.state.hashing import partitions_of
from unimeter.state.partition_state import PartitionState
from unimeter.state.snapshot import SnapshotFormatError
from unimeter.storage.backup import RemovalGuard
from unimeter.storage.diskspace import DiskSpaceWatch
from unimeter.storage.forksnap import remove_stale_temps
from unimeter.storage.fsutil import atomic_write
from unimeter.storage.snapshot import snapshot_path
from unimeter.storage.syncthread import StorageThread
from unimeter.supervisor import Supervisor
from unimeter.tracefile import CoreSpec, TraceWriter
from unimeter.webhooks.sender import WebhookSender
from unimeter.webhooks.signing import load_webhook_secret
from unimeter.wire import messages as m
from unimeter.wire.codec import announced_limits

if TYPE_CHECKING:
    from unimeter.server.http import HttpServer

log = logging.getLogger("unimeter.node")

# What the files of a data directory look like: 2 = log records of layout 3 (the received
# batch bytes plus the leader's verdict) and partition snapshots of format 4 (columns).
DATA_FORMAT = 2


# Ingests of at most this many events are routing-checked one id at a time.
_ROUTE_SCALAR_MAX = 8


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
    log_format: str = "text"  # or "json": one JSON object per line
    http: str | None = None  # HOST:PORT; None: the --listen host, port + 79; "off": none
    election_timeout_ms: int = 400  # a failover resumes in about 1.5-2.5x this (benchmarks.md)
    snapshot_entries: int = limits.snapshot_entries_default
    snapshot_bytes: int = limits.snapshot_bytes_default
    wal_segment_bytes: int = limits.wal_segment_bytes_default
    trace: str | None = None  # record every message delivered to every core (unimeter.trace)
    max_connections: int = limits.connections_max_default
    # Security (docs/security.md): tokens, the cluster secret, TLS, and the loopback default.
    auth_tokens: str | None = None  # FILE of "sha256:<hex> ROLE NAME" lines
    cluster_secret_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None  # verifies peers' certificates (default: the system's CAs)
    insecure: bool = False  # serve non-loopback addresses without tokens or secret anyway
    webhook_secret_file: str | None = None  # signs alert webhooks (HMAC-SHA256)

    @property
    def host_port(self) -> tuple[str, int]:
        return split_address(self.listen)

    def http_address(self) -> tuple[str, int] | None:
        """Where the HTTP API listens; None when it is off."""
        if self.http == "off":
            return None
        if self.http is not None:
            return split_address(self.http)
        host, port = self.host_port
        if port + limits.http_port_offset > 65535:
            return None
        return host, port + limits.http_port_offset


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} must be HOST:PORT")
    return host or "127.0.0.1", int(port)


class Node:
    def __init__(self, config: NodeConfig, supervisor: Supervisor | None = None) -> None:
        self.config = config
        self.supervisor = supervisor or Supervisor()
        self.node_id = config.node_id
        self.data_dir = Path(config.data_dir)
        self.partition_count = config.partitions
        self.route = PartitionCache(config.partitions)
        # Per partition, accounts already checked to route there: an Ingest whose accounts are
        # all known is checked with one C-level ``issuperset`` instead of a mix per account.
        self.addresses = parse_peers(config.peers)
        self.addresses[self.node_id] = self.advertised()
        self.members = tuple(sorted(self.addresses))
        self.cluster_id = ""
        self.partitions: dict[int, PartitionRuntime] = {}
        self.catalog: CatalogRuntime | None = None
        self.catalog_mailbox: Mailbox[object] = Mailbox(
            limits.mailbox_catalog_capacity, bytes_max=limits.mailbox_catalog_bytes_max
        )
        # What a connection core calls (``ConnectionHost``): bound once, no wrapper per call.
        self.runtime_of = self.partitions.get
        self.submit_catalog = self.catalog_mailbox.try_send
        self.storage = StorageThread()  # every fsync of every replica, off the loop
        self.connections: set[ClientConnection] = set()
        self.client_connections = 0  # greeted, not peers (config.max_connections)
        self.gate = load_gatekeeper(config.node_id, config.auth_tokens, config.cluster_secret_file)
        if self.gate.tokens_required and self.gate.secret is None and len(self.addresses) == 1:
            # A node alone still proves membership to itself (its HTTP alert streams dial it):
            # a secret of this process's own, since no other node needs to share it.
            self.gate.secret = secrets.token_bytes(32)
        self.tls = node_tls(config.tls_cert, config.tls_key, config.tls_ca)
        self._webhook_secret = (
            load_webhook_secret(config.webhook_secret_file) if config.webhook_secret_file else None
        )
        self.webhooks: WebhookSender | None = None  # made at start, once the cluster id is known
        self.peers = PeerLinks(
            self.node_id,
            {i: a for i, a in self.addresses.items() if i != self.node_id},
            secret=self.gate.secret,
            tls=self.tls.dial if self.tls is not None else None,
        )
        # Leaders of partitions this node does not host, as their leaders announce them.
        self.gossip: dict[int, tuple[int, int]] = {}
        self.serving = False
        self.disk = DiskSpaceWatch(str(self.data_dir), config.disk_reserve_bytes)
        self.disk_ok = True
        self._rng = random.Random()
        self.tracer: TraceWriter | None = None
        if config.trace:
            self.tracer = TraceWriter.open(config.trace, {"source": "node", "node": self.node_id})
        self._server: asyncio.Server | None = None
        self.stats = NodeStats()
        self.http: HttpServer | None = None  # set while the HTTP API serves
        self._tasks: list[asyncio.Task[None]] = []
        self.checkpoints = Checkpoints(
            SnapshotPolicy(entries=config.snapshot_entries, bytes=config.snapshot_bytes),
            reserve_bytes=config.disk_reserve_bytes,
        )

    @property
    def replication_factor(self) -> int:
        return min(self.config.replication_factor, len(self.members))

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        started = time.monotonic()
        self._check_exposure()
        # Bind before recovery: a taken port fails in milliseconds, not after loading the data.
        listener = bind_listener(*self.config.host_port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._load_cluster_identity()
        self.disk = DiskSpaceWatch(str(self.data_dir), self.config.disk_reserve_bytes)
        self.storage.start(asyncio.get_running_loop())
        self.catalog = self._recover_catalog()
        for p in range(self.partition_count):
            if self.node_id in replicas_of(p, self.members, self.replication_factor):
                self.partitions[p] = self._recover_partition(p)
                self.checkpoints.track(self.partitions[p])
        runtimes: list[ReplicaRuntime] = [self.catalog, *self.partitions.values()]
        supervisor = self.supervisor
        guard = RemovalGuard(self.data_dir)
        for runtime in runtimes:
            runtime.on_crash = supervisor.crash
            runtime.removal_guard = guard
            runtime.prime()
        for runtime in runtimes:
            self._tasks.append(asyncio.create_task(runtime.run(), name=runtime.name))
        self.webhooks = WebhookSender(self.cluster_id, self._webhook_secret)
        for p, partition in self.partitions.items():
            deliveries = self.webhooks.attach(partition)
            self._tasks.append(asyncio.create_task(deliveries.run(), name=f"webhooks-{p}"))
        self._tasks.append(asyncio.create_task(self._watch_disk(), name="disk-watch"))
        for task in self._tasks:
            supervisor.watch(task)
        self.peers.start(self.leadership, supervisor.watch)
        self._publish_catalog_locally()
        # HTTP first: once the binary port accepts, everything serves (the HTTP API's start,
        # an import of aiohttp, takes a third of a second; a client that connected during it
        # would have been told the node is still starting).
        http = await self._start_http()
        host, port = self.config.host_port
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self),
            sock=listener,
            ssl=self.tls.server if self.tls is not None else None,
        )
        listening_s = time.monotonic() - started
        # Peers can reach the node now (its replicas rejoin their groups); clients are told
        # UNAVAILABLE (retriable) until the catalog has caught up.
        await self._catch_up_catalog()
        self.serving = True
        recovery_s = time.monotonic() - started
        self.stats.recovery_seconds["node"] = recovery_s
        log.info(
            "event=serving node=%d listen=%s:%d http=%s members=%s partitions=%d hosted=%d "
            "data_dir=%s listening_s=%.3f recovery_s=%.3f",
            self.node_id, host, port, http, list(self.members), self.partition_count,
            len(self.partitions), self.data_dir, listening_s, recovery_s,
        )  # fmt: skip

    def _check_exposure(self) -> None:
        """Refuse to start exposed without protection; say how the node is protected."""
        config = self.config
        hosts = [config.host_port[0]]
        http = config.http_address()
        if http is not None:
            hosts.append(http[0])
        peers = [split_address(a)[0] for i, a in self.addresses.items() if i != self.node_id]
        gate = self.gate
        problem = exposure_problem(
            hosts=hosts, peer_hosts=peers, tokens=gate.tokens_required,
            secret=config.cluster_secret_file is not None, insecure=config.insecure,
        )  # fmt: skip
        if problem is not None:
            raise ListenError(problem)
        if not gate.tokens_required:
            where = "loopback only" if all(map(is_loopback, hosts)) else "INSECURE (--insecure)"
            log.warning("event=auth_off listen=%s tokens=none serving=%s hint=--auth-tokens",
                        ",".join(hosts), where.replace(" ", "_"))  # fmt: skip
        else:
            assert gate.tokens is not None
            log.info("event=auth_on tokens=%d file=%s", len(gate.tokens), gate.token_path)
        log.info(
            "event=transport tls=%s cluster_secret=%s webhook_secret=%s",
            "on" if self.tls else "off", "on" if config.cluster_secret_file else "off",
            "on" if self._webhook_secret is not None else "off",
        )  # fmt: skip

    async def _start_http(self) -> str:
        """Start the HTTP API; its address, or "off". A port given with --http that cannot be
        bound stops the start; the default one only costs a warning (another program may
        hold it, and the binary protocol serves all the same)."""
        address = self.config.http_address()
        if address is None:
            return "off"
        # Imported here: aiohttp takes a third of a second to import, which a node started
        # with --http off (the test suite's, a benchmark's) does not need to pay.
        from unimeter.server.http import HttpServer

        server = HttpServer(self)
        try:
            await server.start(*address, tls=self.tls.server if self.tls is not None else None)
        except OSError as exc:
            await server.stop()
            if self.config.http is not None:
                raise SystemExit(f"cannot serve HTTP on {self.config.http}: {exc}") from None
            log.warning(
                "event=http_unavailable address=%s:%d error=%r hint=use_--http_HOST:PORT",
                *address, str(exc),
            )  # fmt: skip
            return "off"
        self.http = server
        return f"{address[0]}:{address[1]}"

    def _load_cluster_identity(self) -> None:
        path = self.data_dir / "cluster.cbor"
        if path.exists():
            meta = cbor2.loads(path.read_bytes())
            found = meta.get("data_format", 1)
            if found != DATA_FORMAT:
                log.critical(
                    "event=unreadable_data_dir dir=%s data_format=%s reads=%s "
                    "action=refusing_to_start",
                    self.data_dir, found, DATA_FORMAT,
                )  # fmt: skip
                raise SystemExit(
                    f"{self.data_dir} holds data format {found} (format 1: the log and "
                    f"snapshots before the columnar layout); this version reads data format "
                    f"{DATA_FORMAT} only. See docs/operations.md, 'A corrupt file'."
                )
            if meta["partitions"] != self.partition_count:
                raise SystemExit(
                    f"{self.data_dir} was created with --partitions {meta['partitions']}; "
                    f"the partition count is fixed at cluster creation (got "
                    f"{self.partition_count})"
                )
            # Retention is part of every partition's applied state (its snapshots keep the
            # value they were created with): another value now would make a replica that
            # replays from scratch expire differently from one that loads a snapshot.
            retention = meta.get("retention_days", self.config.retention_days)
            if retention != self.config.retention_days:
                raise SystemExit(
                    f"{self.data_dir} was created with --retention-days {retention}; it is "
                    f"fixed at cluster creation (got {self.config.retention_days})"
                )
            self.cluster_id = meta["cluster_id"]
            return
        # Every node of a cluster derives the same id from the member list.
        self.cluster_id = uuid.uuid5(
            uuid.NAMESPACE_URL,
            "unimeter:" + ",".join(f"{i}={a}" for i, a in sorted(self.addresses.items())),
        ).hex
        identity = {
            "data_format": DATA_FORMAT,
            "cluster_id": self.cluster_id,
            "partitions": self.partition_count,
            "retention_days": self.config.retention_days,
        }
        atomic_write(path, cbor2.dumps(identity))

    def _raft_config(self) -> RaftConfig:
        return RaftConfig(
            election_timeout_s=self.config.election_timeout_ms / 1000,
            heartbeat_interval_s=self.config.election_timeout_ms / 10_000,
        )

    def _recover_catalog(self) -> CatalogRuntime:
        directory = self.data_dir / "catalog"
        wal, recovered, app = recover_replica(directory)
        state = CatalogState() if app is None else CatalogState.from_bytes(app)
        seed, created = self._rng.getrandbits(63), now_us()
        core = CatalogCore(
            state=state, node_id=self.node_id, members=self.members, addresses=self.addresses,
            recovered=recovered, raft_config=self._raft_config(), rng=random.Random(seed),
            now_us=created,
        )  # fmt: skip
        runtime = CatalogRuntime(
            "catalog", core, wal, directory, self.catalog_mailbox, self.peers.send,
            storage=self.storage,
        )  # fmt: skip
        self._tap(runtime, CATALOG_GROUP, self.members, None, seed, created, recovered, app)
        runtime.attach(self)
        log.info(
            "event=recovered actor=catalog log_entries=%d commit=%d",
            len(recovered.entries),
            recovered.hard_state.commit,
        )
        return runtime

    def _recover_partition(self, p: int) -> PartitionRuntime:
        started = time.monotonic()
        directory = self.data_dir / "partitions" / f"{p:04d}"
        remove_stale_temps(directory)  # a snapshot child's work cut short by a crash
        wal, recovered, app = recover_replica(
            directory, segment_bytes_max=self.config.wal_segment_bytes
        )
        if app is None:
            state = PartitionState(p, retention_days=self.config.retention_days)
        else:
            try:
                state = PartitionState.from_snapshot(app)
            except SnapshotFormatError as exc:
                assert recovered.snapshot is not None
                path = snapshot_path(directory, recovered.snapshot.index)
                raise SnapshotFormatError(exc.version, str(path)) from None
        members = replicas_of(p, self.members, self.replication_factor)
        seed, created = self._rng.getrandbits(63), now_us()
        core = PartitionCore(
            p, state, node_id=self.node_id, members=members, addresses=self.addresses,
            recovered=recovered, raft_config=self._raft_config(), rng=random.Random(seed),
            now_us=created, retention_days=self.config.retention_days,
            preferred=members[0],
        )  # fmt: skip
        elapsed = time.monotonic() - started
        self.stats.recovery_seconds[f"partition-{p}"] = elapsed
        log.info(
            "event=recovered actor=partition-%d snapshot_index=%s log_entries=%d commit=%d "
            "elapsed_s=%.3f",
            p, recovered.snapshot.index if recovered.snapshot else None,
            len(recovered.entries), recovered.hard_state.commit, elapsed,
        )  # fmt: skip
        runtime = PartitionRuntime(
            f"partition-{p}",
            core,
            wal,
            directory,
            Mailbox(
                limits.mailbox_partition_capacity, bytes_max=limits.mailbox_partition_bytes_max
            ),
            self.peers.send,
            storage=self.storage,
        )
        self._tap(runtime, p, members, members[0], seed, created, recovered, app)
        return runtime

    def _tap(
        self,
        runtime: ReplicaRuntime,
        group: int,
        members: tuple[int, ...],
        preferred: int | None,
        seed: int,
        created: int,
        recovered: Recovered,
        app: bytes | None,
    ) -> None:
        """With --trace: the core's constructor inputs, so a replay builds the same core."""
        if self.tracer is None:
            return
        runtime.tracer = self.tracer.actor(CoreSpec(
            node_id=self.node_id, group=group, members=members, addresses=self.addresses,
            raft=self._raft_config(), rng_seed=seed, created_us=created, recovered=recovered,
            app=app, retention_days=self.config.retention_days, preferred=preferred,
        ))  # fmt: skip

    async def _catch_up_catalog(self) -> None:
        """Before serving clients: let the catalog re-apply the log it recovered (its commit
        index is not saved on every change, so it learns it again from a leader, itself
        included), so that metrics.list and metrics.get after a restart see what they saw
        before it. Bounded: without a quorum the node serves anyway, and catches up when one
        forms."""
        assert self.catalog is not None
        target = self.catalog.wal.last_index
        deadline = time.monotonic() + 3 * self.config.election_timeout_ms / 1000
        while self.catalog.core.state.applied_index < target and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    def _publish_catalog_locally(self) -> None:
        """Partitions learn the catalog recovered on this node (they may have missed it)."""
        assert self.catalog is not None
        version, metrics = self.catalog.core.published()
        for runtime in self.partitions.values():
            runtime.mailbox.post_internal(CatalogUpdate(version, metrics))

    async def _watch_disk(self) -> None:
        loop = asyncio.get_running_loop()
        rounds = 0
        while True:
            rounds += 1
            if testing_switches.PLANTED_FAULT == "disk-watch-task" and rounds == 2:
                raise testing_switches.PlantedFault("planted fault in the disk-watch task")
            ok = await loop.run_in_executor(None, self.disk.check)
            if ok != self.disk_ok:
                log.warning(
                    "event=disk_space ok=%s reserve_bytes=%d", ok, self.config.disk_reserve_bytes
                )
                for runtime in self.partitions.values():
                    runtime.mailbox.post_internal(DiskState(ok))
            self.disk_ok = ok
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ peers

    def deliver_peer(self, group: int, message: object, nbytes: int) -> Mailbox[Any] | None:
        """Queue a Raft message from a peer in its replica's peer lane. Returns the lane if it
        is full (the caller stops reading that peer until it drains), else None."""
        runtime: ReplicaRuntime | None
        runtime = self.catalog if group == CATALOG_GROUP else self.partitions.get(group)
        if runtime is None:
            return None  # a group this node does not host (a stale sender)
        lane = runtime.peer_lane
        try:
            lane.try_send(PeerMessage(message), nbytes)  # type: ignore[arg-type]
        except MailboxFull:
            return lane
        except MailboxClosed:
            pass  # stopping
        return None

    def peer_lost(self, node_id: int) -> None:
        """A peer's link to this node closed: replicas it leads may campaign early."""
        runtimes: list[ReplicaRuntime] = [*self.partitions.values()]
        if self.catalog is not None:
            runtimes.append(self.catalog)
        for runtime in runtimes:
            with contextlib.suppress(MailboxClosed):
                runtime.mailbox.post_internal(PeerLost(node_id))

    def leadership(self) -> list[list[int]]:
        """``[partition, leader, term]`` for every hosted partition with a known leader."""
        out = []
        for p, runtime in self.partitions.items():
            raft = runtime.core.raft
            if raft.leader_id is not None:
                out.append([p, raft.leader_id, raft.term])
        return out

    def note_gossip(self, entries: list[list[int]]) -> None:
        for p, leader, term in entries:
            known = self.gossip.get(p)
            if known is None or known[1] <= term:
                self.gossip[p] = (leader, term)

    def leader_of(self, p: int) -> int | None:
        runtime = self.partitions.get(p)
        if runtime is not None:
            return runtime.core.raft.leader_id
        known = self.gossip.get(p)
        return known[0] if known else None

    # ------------------------------------------------------------------ serve

    def welcome(self, challenge: bytes | None = None, proof: bytes | None = None) -> m.Welcome:
        return m.Welcome(
            node_id=self.node_id, cluster_id=self.cluster_id, version=m.PROTOCOL_VERSION,
            limits=announced_limits(), partitions=self.partition_count,
            challenge=challenge, proof=proof,
        )  # fmt: skip

    def reload_tokens(self) -> None:
        """SIGHUP: read the token file again; close the connections of removed tokens (their
        live alert subscriptions end with them; a client that reconnects is refused)."""
        if not self.gate.reload():
            return
        for conn in list(self.connections):
            principal = conn.core.principal
            if principal is not None and self.gate.current(principal) is None:
                log.info("event=connection_closed reason=token_revoked token=%s peer=%s",
                         principal.name, conn.peer)  # fmt: skip
                conn.close()

    @property
    def dial_tls(self) -> ssl.SSLContext | None:
        """How this node's own clients (HTTP forwarding, alert streams) dial its peers."""
        return self.tls.dial if self.tls is not None else None

    def own_client_hello(self, client_name: str) -> m.Hello | Callable[[], MemberGreeting]:
        """The HELLO of this node's own clients: a member's, proving the cluster secret when
        there is one (so other nodes need no token from it; security/cluster_secret.py)."""
        secret = self.gate.secret
        if secret is None:
            return m.Hello(version=m.PROTOCOL_VERSION, client_name=client_name)
        node_id = self.node_id
        return lambda: MemberGreeting(secret, node_id, link=False, client_name=client_name)

    def advertised(self) -> str:
        if self.config.advertise:
            return self.config.advertise
        host, port = self.config.host_port
        return f"{host}:{port}"

    def partition_map(self) -> m.PartitionMap:
        leaders = []
        epoch = 0
        for p in range(self.partition_count):
            leader = self.leader_of(p)
            leaders.append(-1 if leader is None else leader)
            runtime = self.partitions.get(p)
            epoch += runtime.core.raft.term if runtime else self.gossip.get(p, (0, 0))[1]
        return m.PartitionMap(
            partitions=self.partition_count,
            nodes=dict(self.addresses),
            leaders=tuple(leaders),
            epoch=epoch,
        )

    def cluster_status(self) -> m.ClusterStatusReply:
        assert self.catalog is not None
        infos = []
        for p in range(self.partition_count):
            runtime = self.partitions.get(p)
            leader = self.leader_of(p)
            if runtime is None:
                infos.append(
                    m.PartitionInfo(
                        partition=p,
                        leader=-1 if leader is None else leader,
                        term=self.gossip.get(p, (0, 0))[1],
                        commit_index=0,
                        applied_index=0,
                    )
                )
                continue
            raft = runtime.core.raft
            infos.append(m.PartitionInfo(
                partition=p, leader=-1 if leader is None else leader, term=raft.term,
                commit_index=raft.commit_index, applied_index=runtime.core.state.applied_index,
            ))  # fmt: skip
        return m.ClusterStatusReply(
            node_id=self.node_id, cluster_id=self.cluster_id, nodes=dict(self.addresses),
            partitions=tuple(infos), catalog_version=self.catalog.core.version,
            disk_free_bytes=max(0, self.disk.free_bytes), disk_ok=self.disk_ok,
        )  # fmt: skip

    def check_ingest(self, msg: m.Ingest) -> tuple[errors.Status, str] | None:
        """Refuse a whole ingest request before it reaches the partition, or None."""
        runtime = self.partitions[msg.partition]
        if not self.disk_ok or runtime.disk_full:
            return errors.Status.BACKPRESSURE, (
                f"free disk space under the reserve ({self.config.disk_reserve_bytes} bytes); "
                "writes resume when space returns"
            )
        part = msg.partition
        accounts = msg.batch.account_ids
        if len(accounts) <= _ROUTE_SCALAR_MAX:  # a few ids: the memoised mix beats numpy's calls
            route = self.route
            for account in accounts.tolist():
                if route[account] != part:
                    return self._misrouted(account, part)
            return None
        # The routing check as one array expression (the documented mix, vectorised).
        wrong = partitions_of(accounts, self.partition_count) != part
        if wrong.any():
            return self._misrouted(int(accounts[int(np.argmax(wrong))]), part)
        return None

    def _misrouted(self, account: int, part: int) -> tuple[errors.Status, str]:
        return errors.Status.INVALID_REQUEST, (
            f"account {account} lives in partition {self.route(account)}, not {part}"
        )

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Stop accepting, finish what is in flight, sync, snapshot, close."""
        self.serving = False
        if self._server is not None:
            self._server.close()
        if self.http is not None:
            # Its requests in flight finish first: the partitions still run.
            await self.http.stop()
        # Let queued work drain: every mailbox empty and every log durable.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            busy = any(len(r.mailbox) + len(r.peer_lane) for r in self.partitions.values()) or len(
                self.catalog_mailbox
            )
            if not busy:
                break
            await asyncio.sleep(0.01)
        for runtime in self.partitions.values():
            await runtime.settle()
        if self.catalog is not None:
            await self.catalog.flush()
        for conn in list(self.connections):
            conn.close()
        await self.peers.stop()
        if self.webhooks is not None:
            await self.webhooks.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.checkpoints.stop()
        for runtime in self.partitions.values():
            runtime.checkpoint()
            runtime.close()
        if self.catalog is not None:
            self.catalog.close()
        self.storage.stop()
        if self.tracer is not None:
            self.tracer.close()
        log.info("event=stopped")


class ListenError(Exception):
    """The node cannot listen on its address (taken, or not this machine's)."""


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``create_server`` makes it listen once the node
    serves), or ``ListenError`` saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)  # not listen(): connections are refused until the node serves
    except OSError as exc:
        sock.close()
        reason = "the port is taken" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ListenError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.setblocking(False)
    return sock


def parse_peers(text: str) -> dict[int, str]:
    """``"1=127.0.0.1:7001,2=127.0.0.1:7002"`` to ``{1: "127.0.0.1:7001", ...}``."""
    out: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        ident, sep, address = part.partition("=")
        if not sep or not ident.strip().isdigit():
            raise ValueError(f"peer {part!r} must be ID=HOST:PORT")
        split_address(address)
        out[int(ident)] = address.strip()
    return out


if __name__ == "__main__":
    from unimeter.node_cli import main

    main()
