"""The client's cache of the partition map: which node leads each partition, and where it is.

Theory of operation: the map comes from ``GET_PARTITION_MAP`` (on connect, every
``map_refresh_s``, and at once after NOT_LEADER or UNAVAILABLE). A map is applied only if its
epoch is not older than the one held, so an answer from a node with a stale view never undoes a
newer one. Between refreshes, a NOT_LEADER answer that names the leader is recorded as a hint
for that partition and wins over the map, so the retry goes straight to the new leader; a map
with a newer epoch (which already knows about that leadership change) clears the hints.
"""

from __future__ import annotations

from typing import Any

import numpy.typing as npt

from unimeter.errors import NotLeaderError, ProtocolError, UnavailableError, UnimeterError
from unimeter.routing import partition_of
from unimeter.state.hashing import partitions_of
from unimeter.wire.messages import PartitionMap

NO_LEADER = -1
ANY_NODE = -1  # the routing target of requests any node can serve (catalog, cluster status)
Array = npt.NDArray[Any]
_PARTITION_MEMO_MAX = 1 << 20  # accounts remembered (about 100 MB at most)


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> (host, port); raises ``ValueError``."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address must be HOST:PORT, got {address!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


class Partitioner:
    """``routing.partition_of`` for one partition count: remembered per account for single
    accounts (bounded: the memory is dropped when it grows past ``size_max``), and for a whole
    column computed with numpy (``many``)."""

    __slots__ = ("_memo", "_size_max", "partitions")

    def __init__(self, partitions: int, *, size_max: int = _PARTITION_MEMO_MAX) -> None:
        assert partitions >= 1
        self.partitions = partitions
        self._memo: dict[int, int] = {}
        self._size_max = size_max

    def __call__(self, account_id: int) -> int:
        partition = self._memo.get(account_id)
        if partition is None:
            if len(self._memo) >= self._size_max:
                self._memo = {}
            partition = self._memo[account_id] = partition_of(account_id, self.partitions)
        return partition

    def many(self, account_ids: Array) -> Array:
        """The partition of each account of a uint64 column."""
        return partitions_of(account_ids, self.partitions)


class ClusterMap:
    __slots__ = ("_hints", "_partition_of", "epoch", "leaders", "nodes")

    def __init__(self) -> None:
        self.epoch = -1
        self.nodes: dict[int, str] = {}
        self.leaders: tuple[int, ...] = ()
        self._hints: dict[int, str] = {}
        self._partition_of: Partitioner | None = None

    @property
    def known(self) -> bool:
        return self._partition_of is not None

    @property
    def partitions(self) -> int:
        return len(self.leaders)

    def apply(self, new: PartitionMap) -> bool:
        """Adopt ``new`` unless it is older than what is held; True when adopted."""
        if new.epoch < self.epoch:
            return False
        if new.partitions < 1 or len(new.leaders) != new.partitions:
            raise ProtocolError(
                f"partition map lists {len(new.leaders)} leaders for {new.partitions} partitions"
            )
        if self.known and new.partitions != self.partitions:
            # The partition count is fixed when the cluster is created; a different one means
            # a different cluster behind the same addresses, and routing by it would misplace
            # every account.
            raise ProtocolError(
                f"the cluster reports {new.partitions} partitions, it had {self.partitions}"
            )
        for leader in new.leaders:
            if leader != NO_LEADER and leader not in new.nodes:
                raise ProtocolError(f"partition map names leader {leader} without an address")
        if new.epoch > self.epoch:
            self._hints.clear()
        self.epoch = new.epoch
        self.nodes = dict(new.nodes)
        self.leaders = tuple(new.leaders)
        if self._partition_of is None:
            self._partition_of = Partitioner(new.partitions)
        return True

    def partition_of(self, account_id: int) -> int:
        assert self._partition_of is not None, "no partition map yet"
        return self._partition_of(account_id)

    def partitions_of(self, account_ids: Array) -> Array:
        assert self._partition_of is not None, "no partition map yet"
        return self._partition_of.many(account_ids)

    def leader_address(self, partition: int) -> str | None:
        """Where to send a request for ``partition``; None when no leader is known."""
        hint = self._hints.get(partition)
        if hint is not None:
            return hint
        leader = self.leaders[partition]
        if leader == NO_LEADER:
            return None
        return self.nodes[leader]

    def note_leader(self, partition: int, address: str) -> None:
        """A NOT_LEADER answer said ``address`` leads ``partition`` now."""
        self._hints[partition] = address

    def forget_leader(self, partition: int) -> None:
        """The hinted (or mapped) leader failed; fall back to the map until it is refreshed."""
        self._hints.pop(partition, None)

    def addresses(self) -> list[str]:
        """Every node's address, in node-id order."""
        return [self.nodes[node_id] for node_id in sorted(self.nodes)]


class Router:
    """Which node a request goes to, and what a retriable failure teaches about that. Shared by
    ``AsyncClient`` and the simulator's clients, so the two cannot route differently.

    A partition's requests go to its leader: a NOT_LEADER hint, else the map. Requests any node
    can serve (``ANY_NODE``: catalog, cluster status) go to the catalog leader a NOT_LEADER
    named, else to one known node (the seeds before a map arrives), moving to the next one after
    a routing failure.
    """

    __slots__ = ("_any_hint", "_any_turn", "_map", "_seeds")

    def __init__(self, cluster_map: ClusterMap, seeds: list[str]) -> None:
        assert seeds
        self._map = cluster_map
        self._seeds = seeds
        self._any_hint: str | None = None
        self._any_turn = 0

    def address_for(self, target: int) -> str:
        """The address for ``target`` (a partition or ``ANY_NODE``); ``UnavailableError``
        (retriable) while the partition has no known leader."""
        if target == ANY_NODE:
            if self._any_hint is not None:
                return self._any_hint
            addresses = self._map.addresses() or self._seeds
            return addresses[self._any_turn % len(addresses)]
        address = self._map.leader_address(target)
        if address is None:
            raise UnavailableError(f"partition {target} has no known leader")
        return address

    def reroute(self, target: int, exc: UnimeterError) -> bool:
        """Learn from the retriable failure ``exc`` of a request for ``target``; True when the
        partition map should be refreshed."""
        hint = exc.leader if isinstance(exc, NotLeaderError) else None
        if target == ANY_NODE:
            if hint is not None:
                self._any_hint = hint
            elif exc.refresh_routing:
                self._any_hint = None
                self._any_turn += 1
        elif hint is not None:
            self._map.note_leader(target, hint)
        elif exc.refresh_routing:
            self._map.forget_leader(target)
        return exc.refresh_routing
