"""A lone member's cores hold requests that arrive while it wins its own election.

A single node serves as soon as its catalog has caught up; a partition may still be a vote's
fsync away from leading then, and a metric change can reach the catalog group just as early.
The member is the only possible leader of its group, so a request that arrives meanwhile waits
for it instead of being told "no leader" (which a raw client would have to retry); a member of
a larger group still answers NOT_LEADER with its hint.
"""

from __future__ import annotations

import random
from pathlib import Path

from unimeter.actors.catalog import CatalogCore, CatalogEffects, CatalogRequest, CatalogState
from unimeter.actors.effects import Effects
from unimeter.actors.partition import ClientRequest, PartitionCore
from unimeter.actors.replicated import Persisted, RaftTick
from unimeter.actors.runtime import recover_replica
from unimeter.consensus.config import RaftConfig
from unimeter.errors import Status
from unimeter.model import AggType, MetricSchema
from unimeter.state.partition_state import PartitionState
from unimeter.wire import messages as m

NOW_US = 1_765_000_000_000_000


def catalog_of(tmp_path: Path, members: tuple[int, ...]) -> CatalogCore:
    wal, recovered, _ = recover_replica(tmp_path)
    wal.close()
    return CatalogCore(
        state=CatalogState(), node_id=1, members=members,
        addresses={i: f"127.0.0.1:{i}" for i in members}, recovered=recovered,
        raft_config=RaftConfig(), rng=random.Random(3), now_us=NOW_US,
    )  # fmt: skip


def core_of(tmp_path: Path, members: tuple[int, ...]) -> PartitionCore:
    wal, recovered, _ = recover_replica(tmp_path)
    wal.close()
    return PartitionCore(
        0, PartitionState(0), node_id=1, members=members,
        addresses={i: f"127.0.0.1:{i}" for i in members}, recovered=recovered,
        raft_config=RaftConfig(), rng=random.Random(3), now_us=NOW_US, preferred=1,
    )  # fmt: skip


def query(token: str) -> ClientRequest:
    return ClientRequest(
        token=token,
        request=m.QueryRealtime(partition=0, account_id=7, metric_code="calls"),
    )


def create(token: str) -> CatalogRequest:
    return CatalogRequest(
        token=token, request=m.MetricCreate(schema=MetricSchema(code="c", agg_type=AggType.SUM))
    )


def answered(fx: Effects) -> dict[object, int]:
    """Each reply's status by token (a catalog change's reply rides on its publication)."""
    replies = list(fx.replies)
    if isinstance(fx, CatalogEffects):
        replies += [out for p in fx.publications for out in p.replies]
    return {out.token: out.status for out in replies}


def elect(core: PartitionCore | CatalogCore) -> dict[object, int]:
    """Tick a lone member into leading, making each Ready durable; the replies on the way."""
    fx = core.step(RaftTick(), NOW_US)
    replies = answered(fx)
    for _ in range(10):  # each durable Ready moves it on: vote, first entry, a parked proposal
        if fx.sync_number is None:
            break
        fx = core.step(Persisted(fx.sync_number), NOW_US)
        replies.update(answered(fx))
    assert core.leader_ready
    return replies


def test_a_lone_member_answers_once_it_leads(tmp_path: Path) -> None:
    core = core_of(tmp_path, (1,))
    assert answered(core.step(query("early"), NOW_US)) == {}  # held, not refused
    replies = elect(core)
    # The read's own answer (this bare core has no catalog), not NOT_LEADER.
    assert replies == {"early": Status.UNKNOWN_METRIC}


def test_a_member_of_a_larger_group_says_not_leader(tmp_path: Path) -> None:
    core = core_of(tmp_path, (1, 2, 3))
    assert answered(core.step(query("early"), NOW_US)) == {"early": Status.NOT_LEADER}


def test_a_lone_catalog_member_makes_an_early_change_once_it_leads(tmp_path: Path) -> None:
    core = catalog_of(tmp_path, (1,))
    assert answered(core.step(create("early"), NOW_US)) == {}  # held, not refused
    assert elect(core) == {"early": Status.OK}
    assert "c" in core.state.metrics


def test_a_catalog_member_of_a_larger_group_says_not_leader(tmp_path: Path) -> None:
    core = catalog_of(tmp_path, (1, 2, 3))
    assert answered(core.step(create("early"), NOW_US)) == {"early": Status.NOT_LEADER}
