"""Everything a seed decides before the run starts, drawn from the seed alone and printed.

Swarm testing: each seed draws its own cluster shape, its own mix of faults (whole fault
classes are switched off at random, so the ones left on get more room) and its own workload,
instead of every run getting a little of everything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

from unimeter import periods
from unimeter.model import AggType, AlertThreshold, DimensionFilter, MetricSchema, PeriodType

US = 1_000_000
DIMENSIONS = {"region": ("eu", "us", "ap"), "tier": ("free", "pro")}


@dataclass(frozen=True, slots=True, kw_only=True)
class NetSettings:
    latency_min_us: int
    latency_max_us: int
    loss_p: float
    dup_p: float
    client_latency_min_us: int
    client_latency_max_us: int
    client_reset_p: float  # chance a client connection resets with an answer on its way


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskSettings:
    fsync_min_us: int
    fsync_max_us: int
    slow_p: float  # chance that one fsync stalls
    slow_min_us: int
    slow_max_us: int
    keep_unsynced_p: float  # on a crash: chance the OS had flushed some unsynced records
    torn_p: float  # on a crash: chance the last surviving record is torn (lost)


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSettings:
    crashes: bool
    graceful_restarts: bool
    partitions: bool
    asymmetric: bool
    clogs: bool
    disk_full: bool
    slow_disk: bool
    checkpoints: bool
    gap_mean_us: int  # mean time between two faults in the safety phase
    down_min_us: int
    down_max_us: int

    def enabled(self) -> list[str]:
        return [f.name for f in fields(self) if f.type == "bool" and getattr(self, f.name)]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSettings:
    clients: int
    ops_per_client: int
    accounts: tuple[int, ...]
    metrics: tuple[MetricSchema, ...]
    sync_p: float
    event_id_p: float
    reuse_id_p: float  # an event id another event already used (cross-client dedup)
    batch_max: int
    think_min_us: int
    think_max_us: int
    read_p: float
    update_p: float  # metric updates (dimensions, thresholds) and delete + re-create
    explicit_ts_p: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SimSettings:
    seed: int
    nodes: int
    replication_factor: int
    partitions: int
    election_timeout_ms: int
    start_us: int
    safety_us: int
    heal_bound_us: int
    request_timeout_us: int
    snapshot_entries: int  # a partition replica snapshots after this many appends (0: never)
    net: NetSettings
    disk: DiskSettings
    faults: FaultSettings
    workload: WorkloadSettings

    def lines(self) -> list[str]:
        """Every drawn setting, for the log of the run."""
        start = periods.from_us(self.start_us).isoformat()
        w = self.workload
        out = [
            f"seed={self.seed} nodes={self.nodes} rf={self.replication_factor} "
            f"partitions={self.partitions} election_ms={self.election_timeout_ms} start={start} "
            f"safety_s={self.safety_us / US:.1f} heal_bound_s={self.heal_bound_us / US:.0f} "
            f"request_timeout_s={self.request_timeout_us / US:.0f} "
            f"snapshot_entries={self.snapshot_entries}",
            "  net: " + _kv(self.net),
            "  disk: " + _kv(self.disk),
            f"  faults: {','.join(self.faults.enabled()) or 'none'} "
            f"gap_ms={self.faults.gap_mean_us // 1000} "
            f"down_ms={self.faults.down_min_us // 1000}-{self.faults.down_max_us // 1000}",
            f"  workload: clients={w.clients} ops={w.ops_per_client} accounts={len(w.accounts)} "
            f"sync_p={w.sync_p:.2f} event_id_p={w.event_id_p:.2f} reuse_id_p={w.reuse_id_p:.2f} "
            f"batch_max={w.batch_max} read_p={w.read_p:.2f} update_p={w.update_p:.2f} "
            f"explicit_ts_p={w.explicit_ts_p:.2f}",
        ]
        for schema in w.metrics:
            dims = ";".join(f"{d.key}={'|'.join(d.values)}" for d in schema.filters)
            ths = ";".join(
                f"{t.code}={t.value}{'r' if t.recurring else ''}" for t in schema.thresholds
            )
            out.append(
                f"  metric {schema.code}: {AggType(schema.agg_type).name} "
                f"{PeriodType(schema.period_type).name}"
                f"({schema.period_seconds}s,day{schema.billing_cycle_day}) "
                f"recurring={schema.recurring} dims=[{dims}] thresholds=[{ths}]"
            )
        return out

    def one_line(self) -> str:
        return self.lines()[0] + " faults=" + (",".join(self.faults.enabled()) or "none")


def _kv(obj: object) -> str:
    parts = []
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        parts.append(f"{f.name}={value:.3f}" if isinstance(value, float) else f"{f.name}={value}")
    return " ".join(parts)


# ---------------------------------------------------------------------- drawing


def draw_settings(seed: int, scale: int = 1) -> SimSettings:
    rng = random.Random(seed)
    nodes = rng.choices((1, 3, 5), weights=(2, 6, 3))[0]
    rf = {1: 1, 3: rng.choices((1, 2, 3), weights=(1, 1, 6))[0], 5: rng.choice((3, 3, 5))}[nodes]
    election_ms = rng.choice((300, 500, 1000))
    net = NetSettings(
        latency_min_us=rng.choice((50, 200, 500)),
        latency_max_us=rng.choice((1_000, 3_000, 10_000, 40_000)),
        loss_p=rng.choice((0.0, 0.0, 0.01, 0.05, 0.15)),
        dup_p=rng.choice((0.0, 0.0, 0.01, 0.05)),
        client_latency_min_us=100,
        client_latency_max_us=rng.choice((500, 2_000, 10_000)),
        client_reset_p=rng.choice((0.0, 0.02, 0.1)),
    )
    disk = DiskSettings(
        fsync_min_us=rng.choice((50, 200, 1_000)),
        fsync_max_us=rng.choice((2_000, 5_000, 20_000)),
        slow_p=rng.choice((0.0, 0.01, 0.05)),
        slow_min_us=50_000,
        slow_max_us=rng.choice((200_000, 600_000)),
        keep_unsynced_p=rng.choice((0.0, 0.5, 0.9)),
        torn_p=rng.choice((0.0, 0.3, 0.7)),
    )
    on = [rng.random() < 0.6 for _ in range(8)]
    multi = nodes > 1
    faults = FaultSettings(
        crashes=on[0],
        graceful_restarts=on[1],
        partitions=on[2] and multi,
        asymmetric=on[3] and multi,
        clogs=on[4] and multi,
        disk_full=on[5],
        slow_disk=on[6],
        checkpoints=on[7],
        gap_mean_us=rng.choice((250_000, 700_000, 1_500_000)),
        down_min_us=100_000,
        down_max_us=rng.choice((500_000, 2_000_000, 5_000_000)),
    )
    safety_us = rng.choice((3, 4, 6)) * US * scale
    return SimSettings(
        seed=seed,
        nodes=nodes,
        replication_factor=rf,
        partitions=rng.choice((1, 2, 3, 4)),
        election_timeout_ms=election_ms,
        start_us=_draw_start(rng),
        safety_us=safety_us,
        heal_bound_us=40 * US,
        request_timeout_us=rng.choice((2, 4, 8)) * US,
        snapshot_entries=rng.choice((0, 8, 30)),
        net=net,
        disk=disk,
        faults=faults,
        workload=_draw_workload(rng, scale),
    )


def _draw_start(rng: random.Random) -> int:
    """A start time, often just before a day, week or month boundary so periods roll over."""
    day = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(365))
    kind = rng.choice(("any", "day", "week", "month", "cycle15"))
    if kind == "week":
        day += timedelta(days=(7 - day.weekday()) % 7)
    elif kind == "month":
        day = day.replace(day=1)
    elif kind == "cycle15":
        day = day.replace(day=15)
    boundary = periods.to_us(day)
    if kind == "any":
        return boundary + rng.randrange(86_400) * US
    return boundary - rng.randrange(0, 6 * US)


def _draw_workload(rng: random.Random, scale: int) -> WorkloadSettings:
    n_metrics = rng.randint(2, 6)
    aggs = list(AggType)
    rng.shuffle(aggs)
    while len(aggs) < n_metrics:
        aggs.append(rng.choice(list(AggType)))
    metrics = tuple(_draw_schema(rng, f"m{i}", aggs[i]) for i in range(n_metrics))
    accounts = tuple(
        sorted([*rng.sample(range(1, 50), rng.randint(3, 8)), rng.getrandbits(64) or 1])
    )
    return WorkloadSettings(
        clients=rng.randint(1, 4),
        ops_per_client=rng.randint(8, 30) * scale,
        accounts=accounts,
        metrics=metrics,
        sync_p=rng.choice((0.2, 0.5, 0.9)),
        event_id_p=rng.choice((0.0, 0.3, 0.8)),
        reuse_id_p=rng.choice((0.0, 0.1, 0.3)),
        batch_max=rng.choice((1, 4, 12)),
        think_min_us=10_000,
        think_max_us=rng.choice((100_000, 300_000, 800_000)),
        read_p=rng.choice((0.3, 0.45, 0.6)),
        update_p=rng.choice((0.0, 0.03, 0.08)),
        explicit_ts_p=rng.choice((0.0, 0.2, 0.5)),
    )


def _draw_schema(rng: random.Random, code: str, agg: AggType) -> MetricSchema:
    period = rng.choice(list(PeriodType))
    keys = rng.sample(sorted(DIMENSIONS), rng.choice((0, 0, 1, 2)))
    filters = tuple(
        DimensionFilter(k, tuple(rng.sample(DIMENSIONS[k], rng.randint(1, len(DIMENSIONS[k])))))
        for k in keys
    )
    return MetricSchema(
        code=code,
        agg_type=agg,
        period_type=period,
        billing_cycle_day=rng.choice((1, 15, 28)),
        period_seconds=rng.choice((1, 2, 5, 3600, 86_400)),
        recurring=rng.random() < 0.4,
        filters=filters,
        thresholds=draw_thresholds(rng, agg),
    )


def draw_thresholds(rng: random.Random, agg: AggType) -> tuple[AlertThreshold, ...]:
    out = []
    for i in range(rng.choice((0, 1, 2, 3))):
        if agg in (AggType.COUNT, AggType.COUNT_UNIQUE):
            value = rng.randint(1, 12)
        else:
            value = rng.randint(-5, 60)
        recurring = value > 0 and rng.random() < 0.4
        out.append(AlertThreshold(f"t{i}", value, recurring))
    return tuple(out)
