"""The random workload: what the simulated clients do, drawn from the seed.

Each client first creates metrics (the first client all of them, the others some, so creates
race and repeat: they must be idempotent), then runs its operations one at a time with think
times between them: ASYNC and SYNC ingest of small batches over every metric (all five
aggregations, several period types, dimensions, thresholds), events with ids (some reused on
purpose, across clients), events with explicit timestamps (a few far in the past or future, to
be rejected), queries of every kind with ``min_index``, and now and then a metric update or a
delete and re-create. Every event carries a ``tag`` property naming it uniquely, so the
checkers can follow each event into the log; an event whose batch failed without an answer is
sent again later only if it has an event id (as the client's documentation says to).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from unimeter import periods
from unimeter.errors import UnimeterError
from unimeter.model import (
    AggType,
    DimensionFilter,
    Event,
    MetricSchema,
    OperationType,
    PeriodType,
)
from unimeter.sim.clients import Gen, SimClient, Sleep
from unimeter.sim.settings import DIMENSIONS, WorkloadSettings, draw_thresholds
from unimeter.wire import messages as m

if TYPE_CHECKING:
    from unimeter.sim.cluster import Cluster

US = 1_000_000
SWEEP_MARGIN_US = 120 * US  # reads reach this far beyond the run on both sides


class Workload:
    def __init__(self, cluster: Cluster, settings: WorkloadSettings, timeout_us: int) -> None:
        self.cluster = cluster
        self.world = cluster.world
        self.s = settings
        self.checkers = cluster.checkers
        self.rng = random.Random(self.world.new_seed())
        self.clients = [SimClient(cluster, i, timeout_us) for i in range(settings.clients)]
        self.schemas: dict[str, MetricSchema] = {s.code: s for s in settings.metrics}
        self.created: set[str] = set()
        self.running = 0
        self.stop_at = 0
        self._tags = 0
        self._ids = 0
        self._used_ids: list[tuple[str, int, str]] = []
        self._resend: dict[int, list[Event]] = {i: [] for i in range(settings.clients)}
        self.ops_done = 0
        self.ops_failed = 0

    def start(self, stop_at: int) -> None:
        self.stop_at = stop_at
        for client in self.clients:
            self.running += 1
            delay = self.world.between(0, 200_000)
            self.world.after(delay, client.spawn, self._client_loop(client), self._finished)

    @property
    def idle(self) -> bool:
        return self.running == 0

    def _finished(self, value: Any, exc: UnimeterError | None) -> None:
        self.running -= 1

    # ------------------------------------------------------------------ one client

    def _client_loop(self, client: SimClient) -> Gen:
        rng = self.rng
        codes = sorted(self.schemas)
        mine = codes if client.index == 0 else rng.sample(codes, rng.randint(0, len(codes)))
        for code in mine:
            yield from self._op(client, "create", client.create_metric(self.schemas[code]))
            self.created.add(code)
        for _ in range(self.s.ops_per_client):
            if self.world.now >= self.stop_at:
                break
            yield Sleep(self.world.between(self.s.think_min_us, self.s.think_max_us))
            roll = rng.random()
            if roll < self.s.update_p:
                yield from self._change_metric(client)
            elif roll < self.s.update_p + self.s.read_p:
                yield from self._op(client, "read", self._read(client))
            else:
                yield from self._ingest(client)

    def _op(self, client: SimClient, what: str, gen: Gen) -> Gen:
        try:
            result = yield from gen
        except UnimeterError as exc:
            self.ops_failed += 1
            self.world.note(f"client {client.index} {what}: {type(exc).__name__} {exc.message}")
            return None
        self.ops_done += 1
        return result

    # ------------------------------------------------------------------ ingest

    def _ingest(self, client: SimClient) -> Gen:
        rng = self.rng
        events = self._resend[client.index][:3]
        del self._resend[client.index][: len(events)]
        for _ in range(rng.randint(1, self.s.batch_max)):
            events.append(self._event())
        sync = rng.random() < self.s.sync_p
        try:
            yield from client.ingest(events, sync, self.checkers.on_ingest_outcome)
        except UnimeterError as exc:
            self.ops_failed += 1
            self.world.note(f"client {client.index} ingest: {type(exc).__name__} {exc.message}")
            # The application resends what may be lost only if an event id makes it safe.
            unsure = [e for e in events if e.event_id is not None]
            self._resend[client.index].extend(unsure)
            return
        self.ops_done += 1

    def _event(self) -> Event:
        rng = self.rng
        self._tags += 1
        tag = f"e{self._tags}"
        now = self.world.now
        codes = sorted(self.schemas)
        code = rng.choice(codes) if rng.random() > 0.03 else "nope"
        account = rng.choice(self.s.accounts)
        event_id = None
        if rng.random() < self.s.event_id_p:
            if self._used_ids and rng.random() < self.s.reuse_id_p:
                code, account, event_id = rng.choice(self._used_ids)
            else:
                self._ids += 1
                event_id = f"id{self._ids}"
                self._used_ids.append((code, account, event_id))
        schema = self.schemas.get(code)
        props = {"tag": tag}
        for key, values in sorted(DIMENSIONS.items()):
            if rng.random() < 0.7:
                props[key] = rng.choice((*values, "other"))
        op = OperationType.NONE
        unique = schema is not None and schema.agg_type == AggType.COUNT_UNIQUE
        if unique:
            value = rng.randint(0, 12)
            op = rng.choice(
                (OperationType.NONE, OperationType.ADD, OperationType.ADD, OperationType.REMOVE)
            )
        else:
            value = rng.randint(-20, 40)
            if rng.random() < 0.02:
                op = OperationType.ADD  # rejected: operation types need COUNT_UNIQUE
        timestamp = None
        if rng.random() < self.s.explicit_ts_p:
            roll = rng.random()
            if roll < 0.03:
                ts = now + 10 * 60 * US  # too far in the future: rejected
            elif roll < 0.06:
                ts = now - 500 * 86_400 * US  # older than the retention: rejected
            else:
                ts = now + rng.randint(-90 * US, 60 * US)
            timestamp = periods.from_us(ts)
        return Event(
            account_id=account,
            metric_code=code,
            value=value,
            timestamp=timestamp,
            operation_type=op,
            properties=props,
            event_id=event_id,
        )

    # ------------------------------------------------------------------ catalog changes

    def _change_metric(self, client: SimClient) -> Gen:
        rng = self.rng
        code = rng.choice(sorted(self.schemas))
        old = self.schemas[code]
        if rng.random() < 0.25:
            deleted = yield from self._op(client, "delete", client.delete_metric(code))
            if deleted is None and rng.random() < 0.8:
                agg = rng.choice(list(AggType))
                new = replace(old, agg_type=agg, thresholds=draw_thresholds(rng, agg))
                created = yield from self._op(client, "create", client.create_metric(new))
                if created is not None:
                    self.schemas[code] = new
            return
        keys = rng.sample(sorted(DIMENSIONS), rng.randint(0, 2))
        filters = tuple(
            DimensionFilter(k, tuple(rng.sample(DIMENSIONS[k], rng.randint(1, len(DIMENSIONS[k])))))
            for k in keys
        )
        new = replace(
            old,
            filters=filters,
            thresholds=draw_thresholds(rng, AggType(old.agg_type)),
            recurring=rng.random() < 0.4,
        )
        updated = yield from self._op(client, "update", client.update_metric(new))
        if updated is not None:
            self.schemas[code] = new

    # ------------------------------------------------------------------ reads

    def _read(self, client: SimClient) -> Gen:
        rng = self.rng
        now = self.world.now
        account = rng.choice(self.s.accounts)
        code = rng.choice(sorted(self.schemas)) if rng.random() > 0.03 else "nope"
        schema = self.schemas.get(code)
        kind = rng.choice(
            ("current", "range", "filter", "breakdown", "realtime", "alerts", "events")
        )
        lo = self.world.start_us - SWEEP_MARGIN_US
        start = rng.randint(lo, now)
        end = rng.randint(now, now + SWEEP_MARGIN_US) + 1
        filters: tuple[tuple[str, str], ...] = ()
        if kind == "current" and schema is not None:
            if schema.filters and start % 2:
                # Every other read of the current period is filtered (the read fast path's
                # cell rows), on a declared value picked by values already drawn, so seeds
                # keep their streams.
                dim = schema.filters[end % len(schema.filters)]
                filters = ((dim.key, dim.values[start // 2 % len(dim.values)]),)
            start, end = period_bounds(schema, now)
        if kind in ("filter", "breakdown") and schema is not None and schema.filters:
            dim = rng.choice(list(schema.filters))
            filters = ((dim.key, rng.choice(list(dim.values))),)
        group_by = tuple(sorted(d.key for d in schema.filters)) if schema is not None else ()

        def build(partition: int, min_index: int) -> m.Request:
            if kind == "realtime":
                return m.QueryRealtime(partition=partition, account_id=account, metric_code=code)
            if kind == "alerts" and start % 3 == 0:
                # A live subscriber's catch-up page (the sim has no pushes: the page is what it
                # checks). Drawn from values already drawn, so seeds keep their streams.
                return m.SubscribeAlerts(
                    partition=partition,
                    subscription_id=1,
                    account_id=None if start % 2 else account,
                    after_cursor=end % 3 - 1,
                    limit=1 + end % 4,
                    min_index=min_index,
                )
            if kind == "alerts":
                return m.ListAlerts(partition=partition, account_id=account, min_index=min_index)
            if kind == "events":
                return m.ListEvents(
                    partition=partition,
                    account_id=account,
                    since_us=start,
                    until_us=end,
                    min_index=min_index,
                )
            if kind == "breakdown" and group_by:
                return m.QueryBreakdown(
                    partition=partition,
                    account_id=account,
                    metric_code=code,
                    start_us=start,
                    end_us=end,
                    group_by=group_by,
                    filters=filters,
                    min_index=min_index,
                )
            return m.Query(
                partition=partition,
                account_id=account,
                metric_code=code,
                start_us=start,
                end_us=end,
                filters=filters,
                min_index=min_index,
            )

        result = yield from client.read(account, build)
        return result


def period_bounds(schema: MetricSchema, ts: int) -> tuple[int, int]:
    return periods.period_bounds(
        PeriodType(schema.period_type), ts, schema.period_seconds, schema.billing_cycle_day
    )
