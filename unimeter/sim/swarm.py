"""One seed, start to end: draw the settings, run the safety phase with faults, heal, wait for
convergence, run the final checks.

Safety phase: the clients' workload and the nemesis run together for ``safety_us``; every step
of every core is checked as it happens, and a probe compares a random replica's answers with
the model every 250 ms. Healing phase: every fault ends, every node is up, loss and
duplication stop, and the cluster must converge within ``heal_bound_us`` of virtual time:
every client finished, every group has a leader that every replica follows, and every replica
has applied everything its leader holds (so every SYNC-acknowledged batch is applied on every
replica and every replica's log agrees). Then the final checks: exactly-once for every SYNC
acknowledgement, and every replica's aggregates, cells, listings and alerts against the model.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from unimeter import testing_switches
from unimeter.consensus.codec import CATALOG_GROUP
from unimeter.consensus.config import Role
from unimeter.routing import partition_of
from unimeter.sim.checkers import Checker, Checkers
from unimeter.sim.cluster import Cluster
from unimeter.sim.faults import Nemesis
from unimeter.sim.replica import SimReplica
from unimeter.sim.settings import SimSettings, draw_settings
from unimeter.sim.workload import SWEEP_MARGIN_US, Workload, period_bounds
from unimeter.sim.world import Violation, World
from unimeter.tracefile import TraceWriter
from unimeter.wire import messages as m

_PROBE_US = 250_000
_CONVERGE_POLL_US = 50_000


class Convergence(Checker):
    name = "Convergence"


@dataclass(slots=True)
class RunResult:
    seed: int
    settings: SimSettings
    violations: list[Violation]
    events: int = 0
    virtual_s: float = 0.0
    wall_s: float = 0.0
    healed_after_s: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


def world_seed(seed: int) -> int:
    """The world's random stream, apart from the settings' stream of the same seed."""
    return (seed * 6364136223846793005 + 1442695040888963407) % 2**64


def run_seed(
    seed: int,
    *,
    scale: int = 1,
    tracer: TraceWriter | None = None,
    inspect: Callable[[Cluster], None] | None = None,
) -> RunResult:
    """Run one seed; ``inspect`` sees the cluster as the run ends (for tests)."""
    started = time.perf_counter()
    settings = draw_settings(seed, scale)
    world = World(world_seed(seed), settings.start_us, tracer)
    for line in settings.lines():
        world.note(line)
    switched = [name for name in testing_switches.NAMES if getattr(testing_switches, name)]
    if switched:
        world.note("testing switches on: " + ",".join(switched))
    cluster = Cluster(world, settings)
    checkers = cluster.checkers
    workload = Workload(cluster, settings.workload, settings.request_timeout_us)
    nemesis = Nemesis(cluster, settings.faults)
    result = RunResult(seed, settings, world.violations)
    try:
        _run(cluster, workload, nemesis, result)
    except Exception:  # a bug of the simulator itself: report it as this seed's failure
        world.fail("Simulator", traceback.format_exc())
    if inspect is not None:
        inspect(cluster)
    result.events = world.events_run
    result.virtual_s = (world.now - settings.start_us) / 1e6
    result.wall_s = time.perf_counter() - started
    result.stats = {
        "faults": nemesis.injected,
        "ops": workload.ops_done,
        "ops_failed": workload.ops_failed,
        "retries": sum(c.retries for c in workload.clients),
        "msgs": cluster.net.sent,
        "msgs_lost": cluster.net.dropped,
        "terms": len(checkers.leaders.leaders),
        "committed": sum(log.frontier for log in checkers._logs.values()),
        **checkers.counts,
    }
    return result


def _run(cluster: Cluster, workload: Workload, nemesis: Nemesis, result: RunResult) -> None:
    world = cluster.world
    settings = cluster.settings
    cluster.start()
    safety_end = settings.start_us + settings.safety_us
    workload.start(stop_at=safety_end)
    nemesis.start(until_us=safety_end)
    world.after(_PROBE_US, _probe, cluster, safety_end)
    world.run_until(safety_end)
    if world.failed:
        return
    world.note("healing")
    nemesis.heal()
    state = _Converging(cluster, workload)
    world.after(_CONVERGE_POLL_US, state.poll)
    deadline = safety_end + settings.heal_bound_us
    if world.run_until(deadline, lambda: state.done):
        result.healed_after_s = (world.now - safety_end) / 1e6
        _final_checks(cluster, cluster.checkers)
    elif not world.failed:
        Convergence(cluster.checkers).fail(
            f"not converged {settings.heal_bound_us / 1e6:.0f}s after healing: " + state.why()
        )


# ---------------------------------------------------------------------- convergence


class _Converging:
    def __init__(self, cluster: Cluster, workload: Workload) -> None:
        self.cluster = cluster
        self.workload = workload
        self.done = False

    def poll(self) -> None:
        if self.why() == "":
            self.done = True
        else:
            self.cluster.world.after(_CONVERGE_POLL_US, self.poll)

    def why(self) -> str:
        """Why the cluster has not converged yet ("" when it has)."""
        if not self.workload.idle:
            return f"{self.workload.running} client(s) still busy"
        for group, replicas in sorted(_groups(self.cluster).items()):
            name = "catalog" if group == CATALOG_GROUP else f"partition {group}"
            if any(r is None for r in replicas):
                return f"{name}: a replica is down"
            live = [r for r in replicas if r is not None]
            leaders = [r for r in live if r.core.raft.role is Role.LEADER and r.core.leader_ready]
            if len(leaders) != 1:
                return f"{name}: {len(leaders)} ready leaders"
            lead = leaders[0].core.raft
            for r in live:
                raft = r.core.raft
                if raft.term != lead.term or raft.leader_id != lead.node_id:
                    return f"{name}: {r.name} follows {raft.leader_id} in term {raft.term}"
                if r.core.state.applied_index != lead.last_index:
                    return (
                        f"{name}: {r.name} applied {r.core.state.applied_index} of "
                        f"{lead.last_index}"
                    )
        return ""


def _groups(cluster: Cluster) -> dict[int, list[SimReplica | None]]:
    out: dict[int, list[SimReplica | None]] = {}
    for group in [CATALOG_GROUP, *range(cluster.settings.partitions)]:
        members = cluster.checkers.members_of(group)
        replicas: list[SimReplica | None] = []
        for node_id in members:
            node = cluster.nodes[node_id]
            if not node.up:
                replicas.append(None)
            elif group == CATALOG_GROUP:
                replicas.append(node.catalog)
            else:
                replicas.append(node.partitions.get(group))
        out[group] = replicas
    return out


# ---------------------------------------------------------------------- model comparisons


def _reads_for(cluster: Cluster, code: str, schema: Any, account: int, p: int) -> list[m.Request]:
    world = cluster.world
    now = world.now
    lo, hi = world.start_us - SWEEP_MARGIN_US, now + SWEEP_MARGIN_US
    cur = period_bounds(schema, now)
    reqs: list[m.Request] = [
        m.Query(partition=p, account_id=account, metric_code=code, start_us=lo, end_us=hi),
        m.Query(partition=p, account_id=account, metric_code=code, start_us=cur[0], end_us=cur[1]),
        m.QueryRealtime(partition=p, account_id=account, metric_code=code),
    ]
    for dim in schema.filters:
        reqs.append(
            m.Query(
                partition=p,
                account_id=account,
                metric_code=code,
                start_us=lo,
                end_us=hi,
                filters=((dim.key, dim.values[-1]),),
            )
        )
    if schema.filters:
        keys = tuple(sorted(d.key for d in schema.filters))
        reqs.append(
            m.QueryBreakdown(
                partition=p,
                account_id=account,
                metric_code=code,
                start_us=lo,
                end_us=hi,
                group_by=keys,
            )
        )
    return reqs


def _compare(cluster: Cluster, replica: SimReplica, reqs: list[m.Request], why: str) -> None:
    checkers = cluster.checkers
    at = replica.partition.state.applied_index
    for req in reqs:
        checker: Checker = checkers.aggregates
        if isinstance(req, m.ListAlerts | m.SubscribeAlerts):
            checker = checkers.alerts
        got = checkers.state_answer(replica, req)
        expected = checkers.model_answer(replica.group, req, at)
        if expected != got and (expected[0] != got[0] or expected[0] == 0):
            checker.fail(
                f"{replica.name} {why}at applied index {at}: {req!r} answered "
                f"{got!r}; the model says {expected!r}"
            )
            return


def _account_reads(cluster: Cluster, account: int, p: int) -> list[m.Request]:
    world = cluster.world
    return [
        m.ListAlerts(partition=p, account_id=account),
        # A live subscriber's catch-up, of every account and of one in small pages.
        m.SubscribeAlerts(partition=p, subscription_id=1),
        m.SubscribeAlerts(partition=p, subscription_id=1, account_id=account, limit=2),
        m.ListEvents(
            partition=p,
            account_id=account,
            since_us=world.start_us - SWEEP_MARGIN_US,
            until_us=world.now + SWEEP_MARGIN_US,
        ),
    ]


def _probe(cluster: Cluster, until: int) -> None:
    """Hold one random live partition replica to the model on a few reads."""
    world = cluster.world
    if world.now >= until:
        return
    world.after(_PROBE_US, _probe, cluster, until)
    replicas = [
        r for _, n in sorted(cluster.nodes.items()) if n.up for _, r in sorted(n.partitions.items())
    ]
    if not replicas:
        return
    rng = world.rng
    replica = rng.choice(replicas)
    p = replica.group
    model = cluster.checkers.model(p)
    at = replica.partition.state.applied_index
    live = model.live_at(at)
    accounts = [
        a
        for a in cluster.settings.workload.accounts
        if partition_of(a, cluster.settings.partitions) == p
    ]
    if not live or not accounts:
        return
    code = rng.choice(sorted(live))
    account = rng.choice(accounts)
    reqs = _reads_for(cluster, code, live[code][1], account, p)
    _compare(cluster, replica, reqs + _account_reads(cluster, account, p), "(probe) ")


def _final_checks(cluster: Cluster, checkers: Checkers) -> None:
    checkers.sync_acked.final()
    settings = cluster.settings
    for p in range(settings.partitions):
        replicas = [n.partitions[p] for _, n in sorted(cluster.nodes.items()) if p in n.partitions]
        model = checkers.model(p)
        at = replicas[0].partition.state.applied_index
        accounts = [
            a for a in settings.workload.accounts if partition_of(a, settings.partitions) == p
        ]
        reqs: list[m.Request] = []
        for account in accounts:
            for code, (_, schema) in sorted(model.live_at(at).items()):
                reqs.extend(_reads_for(cluster, code, schema, account, p))
            reqs.extend(_account_reads(cluster, account, p))
        for replica in replicas:
            _compare(cluster, replica, reqs, "(after healing) ")
    catalogs = [n.catalog for _, n in sorted(cluster.nodes.items()) if n.catalog is not None]
    states = {c.core.state.to_bytes() for c in catalogs}  # type: ignore[union-attr]
    if len(states) != 1:
        checkers.prefix.fail("catalog replicas differ after healing")
