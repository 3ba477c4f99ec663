"""The client's cache of the partition map: which node leads each partition, and where it is.

Theory of operation: the map comes from ``GET_PARTITION_MAP`` (on connect, every
``map_refresh_s``, and at once after NOT_LEADER or UNAVAILABLE). A map is applied only if its
epoch is not older than the one held, so an answer from a node with a stale view never undoes a
newer one. Between refreshes, a NOT_LEADER answer that names the leader is recorded as a hint
for that partition and wins over the map, so the retry goes straight to the new leader; a map
with a newer epoch (which already knows about that leadership change) clears the hints.
"""

from __future__ import annotations

from unimeter.errors import ProtocolError
from unimeter.routing import PartitionCache
from unimeter.wire.messages import PartitionMap

NO_LEADER = -1


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


class ClusterMap:
    __slots__ = ("_hints", "_partition_of", "epoch", "leaders", "nodes")

    def __init__(self) -> None:
        self.epoch = -1
        self.nodes: dict[int, str] = {}
        self.leaders: tuple[int, ...] = ()
        self._hints: dict[int, str] = {}
        self._partition_of: PartitionCache | None = None

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
            self._partition_of = PartitionCache(new.partitions)
        return True

    def partition_of(self, account_id: int) -> int:
        assert self._partition_of is not None, "no partition map yet"
        return self._partition_of(account_id)

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
