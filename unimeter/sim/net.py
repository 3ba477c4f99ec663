"""The simulated network between nodes, and between clients and nodes.

Node to node, every message travels on its own: its delay is drawn from the seed's latency
range (so messages overtake each other: reordering), it may be lost or duplicated, and a link
may be cut in one direction (asymmetric partitions) or both, or clogged (a long extra delay
for a while). A cut link drops messages when they are sent and when they would arrive, like a
TCP link that breaks and redials. Client links carry requests and replies with a latency of
their own; they are never cut, but a node that crashes breaks every connection to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unimeter.sim.settings import NetSettings
from unimeter.sim.world import World

Link = tuple[int, int]  # (source node, destination node)


class Network:
    def __init__(self, world: World, settings: NetSettings) -> None:
        self.world = world
        self.s = settings
        self.faulty = True  # loss and duplication apply (off while healing)
        self._cut: set[Link] = set()
        self._clogged: dict[Link, tuple[int, int]] = {}  # link -> (until, extra delay)
        self.sent = 0
        self.dropped = 0

    # ------------------------------------------------------------------ faults

    def cut(self, src: int, dst: int) -> None:
        self._cut.add((src, dst))

    def uncut(self, src: int, dst: int) -> None:
        self._cut.discard((src, dst))

    def clog(self, src: int, dst: int, until_us: int, extra_us: int) -> None:
        self._clogged[(src, dst)] = (until_us, extra_us)

    def heal(self) -> None:
        self._cut.clear()
        self._clogged.clear()
        self.faulty = False

    def is_cut(self, src: int, dst: int) -> bool:
        return (src, dst) in self._cut

    def describe(self) -> str:
        cuts = ",".join(f"{a}>{b}" for a, b in sorted(self._cut))
        return f"cut=[{cuts}] clogged={len(self._clogged)}"

    # ------------------------------------------------------------------ node to node

    def send(self, src: int, dst: int, deliver: Callable[..., None], *args: Any) -> None:
        world = self.world
        self.sent += 1
        if (src, dst) in self._cut or (self.faulty and world.chance(self.s.loss_p)):
            self.dropped += 1
            return
        copies = 2 if self.faulty and world.chance(self.s.dup_p) else 1
        for _ in range(copies):
            delay = world.between(self.s.latency_min_us, self.s.latency_max_us)
            clog = self._clogged.get((src, dst))
            if clog is not None:
                if clog[0] > world.now:
                    delay += clog[1]
                else:
                    del self._clogged[(src, dst)]
            world.after(delay, self._arrive, src, dst, deliver, args)

    def _arrive(
        self, src: int, dst: int, deliver: Callable[..., None], args: tuple[Any, ...]
    ) -> None:
        if (src, dst) in self._cut:
            self.dropped += 1
            return
        deliver(*args)

    # ------------------------------------------------------------------ clients

    def client_delay(self) -> int:
        return self.world.between(self.s.client_latency_min_us, self.s.client_latency_max_us)
