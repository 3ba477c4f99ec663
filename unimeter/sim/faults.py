"""The nemesis: faults injected during the safety phase, from the seed's fault mix.

Faults come one at a time, at exponentially distributed gaps; each picks one enabled class:
- crash a node (SIGKILL: memory and unsynced writes gone), restart it after a downtime;
- stop a node cleanly (SIGTERM: sync, checkpoint), restart it after a downtime;
- partition the network (two sides, or one node isolated) or cut links one way only
  (asymmetric), healed after a while;
- clog links (a long extra delay on every message for a while);
- fill a node's disk (ENOSPC on every append for a while);
- slow a node's disk (every fsync stalls for a while);
- checkpoint a partition replica (snapshot + log compaction, as a stopping node does), so
  lagging replicas need InstallSnapshot.
Down nodes are never all the nodes for long: the downtime is bounded. ``heal`` ends every fault
at once and restarts every node that is down, for the healing phase.
"""

from __future__ import annotations

import math

from unimeter.sim.cluster import Cluster
from unimeter.sim.net import Link
from unimeter.sim.settings import FaultSettings
from unimeter.sim.simnode import SimNode

US = 1_000_000


class Nemesis:
    def __init__(self, cluster: Cluster, settings: FaultSettings) -> None:
        self.cluster = cluster
        self.world = cluster.world
        self.s = settings
        self.kinds = [k for k in settings.enabled()]
        self.until = 0
        self.healed = False
        self.injected = 0
        cluster.node_exited = self._supervise

    def start(self, until_us: int) -> None:
        self.until = until_us
        if self.kinds:
            self._schedule()

    def _schedule(self) -> None:
        gap = int(-math.log(1.0 - self.world.rng.random()) * self.s.gap_mean_us)
        self.world.after(gap, self._inject)

    def _inject(self) -> None:
        if self.healed or self.world.now >= self.until:
            return
        kind = self.world.rng.choice(self.kinds)
        getattr(self, "_" + kind)()
        self.injected += 1
        self._schedule()

    def _later(self, fn_name: str, *args: object) -> None:
        """Undo a fault after a while (unless healing already undid everything)."""
        delay = self.world.between(200_000, 3 * US)

        def undo() -> None:
            if not self.healed:
                getattr(self, fn_name)(*args)

        self.world.after(delay, undo)

    # ------------------------------------------------------------------ nodes

    def _up_nodes(self) -> list[int]:
        return [i for i, n in sorted(self.cluster.nodes.items()) if n.up]

    def _crashes(self) -> None:
        self._stop(graceful=False)

    def _graceful_restarts(self) -> None:
        self._stop(graceful=True)

    def _stop(self, graceful: bool) -> None:
        up = self._up_nodes()
        if not up:
            return
        node = self.cluster.nodes[self.world.rng.choice(up)]
        node.stop(graceful)
        down = self.world.between(self.s.down_min_us, self.s.down_max_us)
        self.world.after(down, self._restart, node.node_id, node.incarnation)

    def _supervise(self, node: SimNode) -> None:
        """A node stopped by itself (a storage failure): restart it after a while."""
        down = self.world.between(self.s.down_min_us, self.s.down_max_us)
        self.world.after(down, self._restart, node.node_id, node.incarnation)

    def _restart(self, node_id: int, incarnation: int) -> None:
        node = self.cluster.nodes[node_id]
        if self.healed or node.up or node.incarnation != incarnation:
            return
        node.start()
        self.world.note(f"node {node_id} restarted")

    # ------------------------------------------------------------------ network

    def _partitions(self) -> None:
        members = list(self.cluster.members)
        rng = self.world.rng
        rng.shuffle(members)
        cut = rng.randint(1, len(members) - 1)
        side_a, side_b = tuple(sorted(members[:cut])), tuple(sorted(members[cut:]))
        links = [(a, b) for a in side_a for b in side_b] + [(b, a) for a in side_a for b in side_b]
        self._cut(links, f"partition {side_a} | {side_b}")

    def _asymmetric(self) -> None:
        members = self.cluster.members
        rng = self.world.rng
        src = rng.choice(members)
        dsts = [d for d in members if d != src]
        chosen = rng.sample(dsts, rng.randint(1, len(dsts)))
        inbound = rng.random() < 0.5
        links = [(d, src) if inbound else (src, d) for d in sorted(chosen)]
        self._cut(links, "one-way cut " + ",".join(f"{a}>{b}" for a, b in links))

    def _cut(self, links: list[Link], text: str) -> None:
        for a, b in links:
            self.cluster.net.cut(a, b)
        self.world.note(text)
        self._later("_uncut", links)

    def _uncut(self, links: list[Link]) -> None:
        for a, b in links:
            self.cluster.net.uncut(a, b)
        self.world.note("healed " + ",".join(f"{a}>{b}" for a, b in links))

    def _clogs(self) -> None:
        members = self.cluster.members
        rng = self.world.rng
        src, dst = rng.sample(list(members), 2)
        until = self.world.now + self.world.between(300_000, 3 * US)
        extra = self.world.between(50_000, 1_500_000)
        self.cluster.net.clog(src, dst, until, extra)
        self.world.note(f"clogged {src}>{dst} +{extra // 1000}ms")

    # ------------------------------------------------------------------ disks

    def _disk_full(self) -> None:
        node = self.cluster.nodes[self.world.rng.choice(list(self.cluster.members))]
        node.device.full = True
        self.world.note(f"node {node.node_id} disk full")
        self._later("_disk_space", node.node_id)

    def _disk_space(self, node_id: int) -> None:
        self.cluster.nodes[node_id].device.full = False
        self.world.note(f"node {node_id} disk has space again")

    def _slow_disk(self) -> None:
        node = self.cluster.nodes[self.world.rng.choice(list(self.cluster.members))]
        node.device.slow_until = self.world.now + self.world.between(300_000, 3 * US)
        self.world.note(f"node {node.node_id} disk slow")

    def _checkpoints(self) -> None:
        up = self._up_nodes()
        if not up:
            return
        node = self.cluster.nodes[self.world.rng.choice(up)]
        if not node.partitions:
            return
        p = self.world.rng.choice(sorted(node.partitions))
        node.partitions[p].checkpoint()
        self.world.note(f"node {node.node_id} checkpointed partition {p}")

    # ------------------------------------------------------------------ healing

    def heal(self) -> None:
        self.healed = True
        self.cluster.net.heal()
        for node_id, node in sorted(self.cluster.nodes.items()):
            node.device.full = False
            node.device.slow_until = 0
            if not node.up:
                node.start()
                self.world.note(f"node {node_id} restarted for healing")
