"""One simulated node: the cores the real node holds, wired the way ``unimeter/node.py``,
``unimeter/node_runtimes.py`` and ``unimeter/actors/connection.py`` wire them.

- One ``CatalogCore`` (a Raft group over every node) and one ``PartitionCore`` per partition
  that placement (``unimeter.placement.replicas_of``) puts on this node, each preferring the
  placement's first replica as leader.
- Start: recover every replica from its disk (``disk.recover``, the rules of
  ``recover_replica``), build the cores, prime them all (catalog first), then hand the
  partitions the recovered catalog (``_publish_catalog_locally``).
- The catalog's publications go to this node's partitions as ``CatalogUpdate`` with a token;
  the requester hears back once every local partition took it in (``CatalogRuntime._publish``).
- Client requests reach the real connection core (``unimeter/sim/connections.py``), one per
  client and node incarnation; this node is its ``ConnectionHost``: not serving ->
  UNAVAILABLE, a partition this node does not host -> NOT_LEADER with the gossiped leader,
  ingest refused with BACKPRESSURE while the disk is full, a full mailbox -> BACKPRESSURE.
- Leader gossip every ``gossip_interval_s``; the disk-space watch every 100 ms.
"""

from __future__ import annotations

import traceback
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from unimeter import errors, limits
from unimeter.actors.catalog import CatalogRequest, Publication
from unimeter.actors.effects import Outgoing, Send
from unimeter.actors.mailbox import MailboxFull
from unimeter.actors.partition import CatalogUpdate
from unimeter.actors.replicated import DiskState, PeerMessage
from unimeter.consensus.codec import CATALOG_GROUP
from unimeter.consensus.config import RaftConfig
from unimeter.observe import NodeStats
from unimeter.peer import gossip_interval_s
from unimeter.placement import replicas_of
from unimeter.routing import PartitionCache
from unimeter.security.gate import Gatekeeper
from unimeter.sim.connections import PartitionLane, SimConnection, judged
from unimeter.sim.disk import NodeDisk, ReplicaDisk, recover
from unimeter.sim.replica import SimReplica
from unimeter.state.hashing import partitions_of
from unimeter.tracefile import CoreSpec, build_core
from unimeter.wire import messages as m
from unimeter.wire.codec import announced_limits

if TYPE_CHECKING:
    from unimeter.sim.checkers import Checkers
    from unimeter.sim.cluster import Cluster

_GOSSIP_US = int(gossip_interval_s * 1_000_000)
_DISK_WATCH_US = 100_000


class PublishToken:
    """A partition's answer to a ``CatalogUpdate`` of one publication."""

    __slots__ = ("join",)

    def __init__(self, join: _Publish) -> None:
        self.join = join

    def send(self, status: int, message: m.Reply) -> None:
        self.join.answered()


class _Publish:
    def __init__(self, node: SimNode, pub: Publication, waiting: int) -> None:
        self.node = node
        self.pub = pub
        self.waiting = waiting
        self.incarnation = node.incarnation

    def answered(self) -> None:
        self.waiting -= 1
        if self.waiting == 0 and self.node.incarnation == self.incarnation and self.node.up:
            self.node.deliver(None, self.pub.replies)


class SimNode:
    def __init__(self, cluster: Cluster, node_id: int) -> None:
        self.cluster = cluster
        self.world = cluster.world
        self.checkers: Checkers = cluster.checkers
        self.node_id = node_id
        self.address = cluster.addresses[node_id]
        self.device = NodeDisk(self.world, cluster.settings.disk)
        self.disks: dict[int, ReplicaDisk] = {}  # group -> the replica's directory
        self.up = False
        self.serving = False
        self.incarnation = 0
        self.catalog: SimReplica | None = None
        self.partitions: dict[int, SimReplica] = {}
        self.gossip: dict[int, tuple[int, int]] = {}
        self.disk_ok = True
        self.route = PartitionCache(cluster.settings.partitions)
        # What a connection core reads of its node (``ConnectionHost``).
        self.partition_count = cluster.settings.partitions
        self.addresses = cluster.addresses
        self.client_connections = 0
        self.config = SimpleNamespace(max_connections=1 << 30)
        self.peers = SimpleNamespace(peer_dialed=lambda node_id: None)
        self.stats = NodeStats()
        self.gate = Gatekeeper(node_id)  # no tokens, no secret: every client is let in
        self.connections: dict[int, SimConnection] = {}  # by client index, this incarnation
        self._lanes: dict[int, PartitionLane] = {}
        election_ms = cluster.settings.election_timeout_ms
        self.raft_config = RaftConfig(
            election_timeout_s=election_ms / 1000, heartbeat_interval_s=election_ms / 10_000
        )

    # ------------------------------------------------------------------ start and stop

    def start(self) -> None:
        assert not self.up
        self.up = True
        self.incarnation += 1
        members = self.cluster.members
        rf = min(self.cluster.settings.replication_factor, len(members))
        self.catalog = self._recover(CATALOG_GROUP, members, None)
        self.partitions = {}
        for p in range(self.cluster.settings.partitions):
            replicas = replicas_of(p, members, rf)
            if self.node_id in replicas:
                self.partitions[p] = self._recover(p, replicas, replicas[0])
        for replica in (self.catalog, *self.partitions.values()):
            replica.prime()
        self._publish_catalog_locally()
        self.connections = {}
        self._lanes = {
            p: PartitionLane(replica, limits.mailbox_partition_capacity)
            for p, replica in self.partitions.items()
        }
        self.gossip = {}
        self.disk_ok = True
        self.serving = True
        self.world.after(self.world.between(0, _GOSSIP_US), self._gossip, self.incarnation)
        self.world.after(_DISK_WATCH_US, self._watch_disk, self.incarnation)

    def _recover(self, group: int, members: tuple[int, ...], preferred: int | None) -> SimReplica:
        disk = self.disks.get(group)
        if disk is None:
            disk = self.disks[group] = ReplicaDisk(self.device)
        recovered, app = recover(disk)
        spec = CoreSpec(
            node_id=self.node_id,
            group=group,
            members=members,
            addresses=dict(self.cluster.addresses),
            raft=self.raft_config,
            rng_seed=self.world.new_seed(),
            created_us=self.world.now,
            recovered=recovered,
            app=app,
            retention_days=limits.retention_days_default,
            preferred=preferred,
        )
        replica = SimReplica(self, spec, build_core(spec), disk)
        self.checkers.on_replica_start(replica)
        return replica

    def replicas(self) -> list[SimReplica]:
        out = list(self.partitions.values())
        if self.catalog is not None:
            out.insert(0, self.catalog)
        return out

    def stop(self, graceful: bool) -> None:
        """A crash (SIGKILL) or a clean stop (SIGTERM: sync, checkpoint, exit)."""
        if not self.up:
            return
        self.up = False
        self.serving = False
        notes = []
        for replica in self.replicas():
            replica.stop(graceful)
            if not graceful:
                lost = replica.disk.crash()
                if lost:
                    notes.append(f"{replica.name}: {lost}")
        for conn in self.connections.values():
            conn.core.connection_lost()
        self.connections = {}
        self.cluster.connections_lost(self)
        self.world.note(
            f"node {self.node_id} {'stopped' if graceful else 'crashed'} " + "; ".join(notes)
        )

    def storage_failed(self, replica: SimReplica, exc: Exception) -> None:
        """``ReplicaRuntime._fail_stop``: the node exits; its supervisor restarts it later."""
        self.world.note(f"{replica.name}: storage failed ({exc}): node {self.node_id} exits")
        self.stop(graceful=False)
        self.cluster.node_exited(self)

    def core_failed(self, replica: SimReplica, msg: object, exc: Exception) -> None:
        """A core raised: the real actor's task would die with it. A bug, always."""
        text = "".join(traceback.format_exception_only(exc)).strip()
        self.checkers.core_failed(replica, f"{replica.name} raised on {msg!r}: {text}")

    # ------------------------------------------------------------------ peers

    def send_peer(self, send: Send) -> None:
        self.cluster.net.send(
            self.node_id, send.dst, self.cluster.deliver_peer, send.dst, send.group, send.message
        )

    def deliver_peer(self, group: int, message: object) -> None:
        replica = self.catalog if group == CATALOG_GROUP else self.partitions.get(group)
        if replica is None:
            return
        capacity = (
            limits.mailbox_catalog_capacity
            if group == CATALOG_GROUP
            else limits.mailbox_partition_capacity
        )
        replica.try_send(PeerMessage(message), capacity)  # type: ignore[arg-type]

    def _gossip(self, incarnation: int) -> None:
        if incarnation != self.incarnation or not self.up:
            return
        entries = self.leadership()
        for peer in self.cluster.members:
            if peer != self.node_id:
                self.cluster.net.send(
                    self.node_id, peer, self.cluster.deliver_gossip, peer, entries
                )
        self.world.after(_GOSSIP_US, self._gossip, incarnation)

    def leadership(self) -> list[tuple[int, int, int]]:
        out = []
        for p, replica in self.partitions.items():
            raft = replica.core.raft
            if raft.leader_id is not None:
                out.append((p, raft.leader_id, raft.term))
        return out

    def note_gossip(self, entries: list[tuple[int, int, int]]) -> None:
        for p, leader, term in entries:
            known = self.gossip.get(p)
            if known is None or known[1] <= term:
                self.gossip[p] = (leader, term)

    def leader_of(self, p: int) -> int | None:
        replica = self.partitions.get(p)
        if replica is not None:
            return replica.core.raft.leader_id
        known = self.gossip.get(p)
        return known[0] if known else None

    # ------------------------------------------------------------------ catalog publication

    def _publish_catalog_locally(self) -> None:
        assert self.catalog is not None
        version, metrics = self.catalog.core.published()  # type: ignore[union-attr]
        for replica in self.partitions.values():
            replica.post(CatalogUpdate(version, metrics))

    def publish(self, pubs: list[Publication]) -> None:
        for pub in pubs:
            self.world.at(self.world.now, self._publish, pub, self.incarnation)

    def _publish(self, pub: Publication, incarnation: int) -> None:
        if incarnation != self.incarnation or not self.up:
            return
        if not self.partitions:
            self.deliver(None, pub.replies)
            return
        join = _Publish(self, pub, len(self.partitions))
        for replica in self.partitions.values():
            replica.post(CatalogUpdate(pub.version, pub.metrics, PublishToken(join)))

    def deliver(self, replica: SimReplica | None, replies: list[Outgoing]) -> None:
        for out in replies:
            if replica is not None:
                self.checkers.on_reply(replica, judged(out))
            out.token.send(out.status, out.message)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ disk watch

    def _watch_disk(self, incarnation: int) -> None:
        if incarnation != self.incarnation or not self.up:
            return
        ok = not self.device.full
        if ok != self.disk_ok:
            for replica in self.partitions.values():
                replica.post(DiskState(ok))
        self.disk_ok = ok
        self.world.after(_DISK_WATCH_US, self._watch_disk, incarnation)

    # ------------------------------------------------------------------ client requests

    def client_request(self, call: object) -> None:
        """A request arrived on the client's connection to this node (made on first use)."""
        index: int = call.client.index  # type: ignore[attr-defined]
        conn = self.connections.get(index)
        if conn is None:
            conn = self.connections[index] = SimConnection(self, f"client{index}")
        conn.request(call)

    # ------------------------------------------------------------------ ConnectionHost

    def runtime_of(self, partition: int, /) -> PartitionLane | None:
        return self._lanes.get(partition)

    def submit_catalog(self, item: CatalogRequest, nbytes: int, /) -> None:
        assert self.catalog is not None
        if not self.catalog.try_send(item, limits.mailbox_catalog_capacity):
            raise MailboxFull()

    def welcome(self, challenge: bytes | None = None, proof: bytes | None = None) -> m.Welcome:
        return m.Welcome(
            node_id=self.node_id, cluster_id="sim", version=m.PROTOCOL_VERSION,
            limits=announced_limits(), partitions=self.partition_count,
            challenge=challenge, proof=proof,
        )  # fmt: skip

    def cluster_status(self) -> m.ClusterStatusReply:
        raise AssertionError("simulated clients never ask for the cluster status")

    def check_ingest(self, msg: m.Ingest) -> tuple[errors.Status, str] | None:
        """``Node.check_ingest``: the disk reserve, then the routing of every account."""
        lane = self._lanes[msg.partition]
        if not self.disk_ok or lane.replica.disk_full:
            return errors.Status.BACKPRESSURE, "free disk under the reserve"
        accounts = msg.batch.account_ids
        wrong = partitions_of(accounts, self.partition_count) != msg.partition
        if wrong.any():
            account = int(accounts[int(np.argmax(wrong))])
            return errors.Status.INVALID_REQUEST, f"account {account} is in another partition"
        return None

    def partition_map(self) -> m.PartitionMap:
        leaders = []
        epoch = 0
        for p in range(self.cluster.settings.partitions):
            leader = self.leader_of(p)
            leaders.append(-1 if leader is None else leader)
            replica = self.partitions.get(p)
            epoch += replica.core.raft.term if replica else self.gossip.get(p, (0, 0))[1]
        return m.PartitionMap(
            partitions=self.cluster.settings.partitions,
            nodes=dict(self.cluster.addresses),
            leaders=tuple(leaders),
            epoch=epoch,
        )
