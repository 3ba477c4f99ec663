"""The deterministic simulator (unimeter/sim), and the core bugs it found."""

from __future__ import annotations

import random
from collections import deque

from unimeter.actors.effects import Send
from unimeter.actors.entries import LiveMetric
from unimeter.actors.partition import CatalogUpdate, PartitionCore
from unimeter.actors.partition_state import PartitionState
from unimeter.actors.replicated import PeerMessage, Persisted, RaftTick, Recovered
from unimeter.consensus.config import RaftConfig, Role
from unimeter.consensus.messages import HardState, InstallSnapshot
from unimeter.model import AggType, MetricSchema

T0 = 1_750_000_000_000_000


class _Group:
    """Three partition cores wired by hand: every message and fsync is instant."""

    def __init__(self) -> None:
        cfg = RaftConfig(election_timeout_s=0.1, heartbeat_interval_s=0.01)
        empty = Recovered(hard_state=HardState(), entries=(), snapshot=None)
        self.now = T0
        self.cores = {
            i: PartitionCore(
                0, PartitionState(0), node_id=i, members=(1, 2, 3), recovered=empty,
                raft_config=cfg, rng=random.Random(i), now_us=T0,
            )
            for i in (1, 2, 3)
        }  # fmt: skip
        self.down: set[int] = set()
        self.sent: list[Send] = []
        self._mail: deque[tuple[int, object]] = deque()

    def step(self, node: int, msg: object) -> None:
        fx = self.cores[node].step(msg, self.now)
        self.sent.extend(fx.sends)
        for send in fx.sends:
            self._mail.append((send.dst, PeerMessage(send.message)))
        if fx.sync_number is not None:
            self._mail.append((node, Persisted(fx.sync_number)))

    def run(self, ms: int) -> None:
        for _ in range(ms):
            self.now += 1000
            for node, core in self.cores.items():
                if node not in self.down and core.next_deadline_us() <= self.now:
                    self.step(node, RaftTick())
            while self._mail:
                node, msg = self._mail.popleft()
                if node not in self.down:
                    self.step(node, msg)

    def leader(self) -> int:
        leaders = [i for i, c in self.cores.items() if c.raft.role is Role.LEADER]
        assert len(leaders) == 1, leaders
        return leaders[0]


def test_a_leader_sends_a_snapshot_to_a_follower_behind_its_compacted_log() -> None:
    # Found by the simulator: drain() called send_snapshot() between ready() and advance(),
    # which the Raft core refuses, so the first snapshot a leader had to send crashed it.
    group = _Group()
    group.down = {3}
    group.run(400)
    leader = group.leader()
    metric = LiveMetric(generation=1, schema=MetricSchema(code="c", agg_type=AggType.COUNT))
    group.step(leader, CatalogUpdate(1, (metric,), token=object()))
    group.run(50)
    core = group.cores[leader]
    applied = core.state.applied_index
    assert core.state.catalog_version == 1
    core.raft.compact(applied)  # what PartitionRuntime.checkpoint does
    group.down = set()
    group.sent.clear()
    group.run(300)
    assert any(isinstance(s.message, InstallSnapshot) and s.dst == 3 for s in group.sent)
    assert group.cores[3].state.applied_index >= applied
    assert group.cores[3].state.catalog_version == 1
