"""Simulated clients that behave like ``unimeter.client.AsyncClient``, on the virtual clock.

The client's pure parts are the real ones: ``ClusterMap`` (the partition map with leader
hints), ``Router`` (which node a request goes to, and what a retriable failure changes),
``Session`` and ``SeqWindow`` (producer id, per-partition sequence numbers reused on
every retry, acknowledged log indexes for ``min_index``, catalog version), ``Backoff`` (equal
jitter, drawn from the seed) and ``build_groups`` (per-partition columnar batches). What
``client.py``, ``retry.py``, ``ingest.py`` and ``metrics.py`` do with them is written out again
here as generator "tasks" instead of coroutines: a task yields ``Send`` (one request on one
connection, answered or failed by the world), ``Sleep`` or ``Gather``, and the world resumes it.
Every request runs under one deadline; retriable failures are retried after re-routing (a
NOT_LEADER hint is followed, a routing failure forgets the leader and refreshes the map).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unimeter import limits
from unimeter.client.batching import Group, build_groups, merge_results
from unimeter.client.cluster_map import ANY_NODE, ClusterMap, Router
from unimeter.client.retry import Backoff
from unimeter.client.session import Session
from unimeter.errors import (
    NotFoundError,
    Status,
    TimeoutError,
    UnavailableError,
    UnimeterError,
    error_for,
)
from unimeter.model import Event, IngestResult, MetricSchema
from unimeter.wire import messages as m

if TYPE_CHECKING:
    from unimeter.sim.cluster import Cluster

US = 1_000_000


@dataclass(slots=True)
class Send:
    address: str
    request: m.Request
    deadline: int
    context: object = None  # what the checkers need to judge the answer


@dataclass(slots=True)
class Sleep:
    delay_us: int


@dataclass(slots=True)
class Gather:
    gens: list[Generator[Any, Any, Any]]


Op = Send | Sleep | Gather
Gen = Generator[Op, Any, Any]


class Call:
    """One request sent on one connection: answered once, by the node or by the deadline."""

    __slots__ = ("client", "context", "done", "incarnation", "node_id", "number", "request", "task")

    def __init__(self, client: SimClient, number: int, task: Task, op: Send) -> None:
        self.client = client
        self.number = number
        self.task = task
        self.request = op.request
        self.context = op.context
        self.node_id = 0
        self.incarnation = 0
        self.done = False


class Task:
    def __init__(
        self, client: SimClient, gen: Gen, on_done: Callable[[Any, UnimeterError | None], None]
    ) -> None:
        self.client = client
        self.gen = gen
        self.on_done = on_done

    def advance(self, value: Any = None, exc: UnimeterError | None = None) -> None:
        try:
            op = self.gen.send(value) if exc is None else self.gen.throw(exc)
        except StopIteration as stop:
            self.on_done(stop.value, None)
            return
        except UnimeterError as error:
            self.on_done(None, error)
            return
        self.client.dispatch(self, op)


class SimClient:
    def __init__(self, cluster: Cluster, index: int, request_timeout_us: int) -> None:
        self.cluster = cluster
        self.world = cluster.world
        self.index = index
        self.session = Session(producer_id=self.world.rng.getrandbits(64) or 1)
        self.map = ClusterMap()
        self.rng = random.Random(self.world.new_seed())  # backoff jitter
        self.timeout_us = request_timeout_us
        self.seeds = [cluster.addresses[i] for i in cluster.members]
        self.router = Router(self.map, self.seeds)
        self.open = False
        self._calls = 0
        self._map_fetch_running = False
        self.retries = 0  # attempts after the first, over every request
        # SYNC acknowledgements received, per partition: (producer seq, log index).
        self.sync_acked: dict[int, list[tuple[int, int]]] = {}

    # ------------------------------------------------------------------ the task machinery

    def spawn(self, gen: Gen, on_done: Callable[[Any, UnimeterError | None], None]) -> None:
        task = Task(self, gen, on_done)
        self.world.at(self.world.now, task.advance)

    def dispatch(self, task: Task, op: Op) -> None:
        if isinstance(op, Send):
            self._calls += 1
            call = Call(self, self._calls, task, op)
            self.world.at(op.deadline, self._deadline, call)
            self.cluster.send_request(call, op.address)
        elif isinstance(op, Sleep):
            self.world.after(op.delay_us, task.advance)
        else:
            results: list[Any] = [None] * len(op.gens)
            waiting = [len(op.gens)]

            def finish(i: int, value: Any, exc: UnimeterError | None) -> None:
                results[i] = exc if exc is not None else value
                waiting[0] -= 1
                if waiting[0] == 0:
                    task.advance(results)

            for i, gen in enumerate(op.gens):
                self.spawn(gen, lambda v, e, i=i: finish(i, v, e))  # type: ignore[misc]

    def on_reply(self, call: Call, status: int, message: m.Reply) -> None:
        if call.done:
            return
        call.done = True
        if status == Status.OK:
            call.task.advance(message)
            return
        text = message.message if isinstance(message, m.ErrorReply) else f"status {status}"
        leader = message.leader if isinstance(message, m.ErrorReply) else None
        call.task.advance(None, error_for(status, text, leader))

    def _deadline(self, call: Call) -> None:
        if not call.done:
            call.done = True
            name = type(call.request).__name__
            call.task.advance(None, TimeoutError(f"{name} got no answer in time"))

    def deadline(self) -> int:
        return self.world.now + self.timeout_us

    # ------------------------------------------------------------------ routing and retries

    def _call(
        self,
        target: int,
        request: m.Request,
        deadline: int,
        context: object = None,
        attempts: list[int] | None = None,
    ) -> Gen:
        backoff = Backoff(
            self.rng, initial=limits.retry_backoff_s_initial, maximum=limits.retry_backoff_s_max
        )
        while True:
            if attempts is not None:
                attempts[0] += 1
            try:
                address = self.router.address_for(target)
                return (yield Send(address, request, deadline, context))
            except UnimeterError as exc:
                if not exc.retriable:
                    raise
                if self.router.reroute(target, exc):
                    self._refresh_soon()
                self.retries += 1
                delay = int(backoff.next_delay() * US)
                if self.world.now + delay >= deadline:
                    raise
                yield Sleep(delay)

    # ------------------------------------------------------------------ the partition map

    def ensure_open(self) -> Gen:
        if self.open:
            return
        failures = yield from self._fetch_map_from(self.seeds, self.deadline())
        if failures is not None:
            raise UnavailableError("no seed answered: " + "; ".join(failures))
        self.open = True
        self.spawn(self._refresh_periodically(), _ignore)

    def _fetch_map_from(self, addresses: Sequence[str], deadline: int) -> Gen:
        failures: list[str] = []
        for position, address in enumerate(addresses):
            share = (deadline - self.world.now) // (len(addresses) - position)
            try:
                reply = yield Send(address, m.GetPartitionMap(), self.world.now + share)
                assert isinstance(reply, m.PartitionMap)
                self.map.apply(reply)
                return None
            except UnimeterError as exc:
                failures.append(f"{address} ({exc.message or type(exc).__name__})")
        return failures

    def _refresh_soon(self) -> None:
        if not self.open or self._map_fetch_running:
            return
        self._map_fetch_running = True
        self.spawn(self._refresh_map(), self._refreshed)

    def _refreshed(self, value: Any, exc: UnimeterError | None) -> None:
        self._map_fetch_running = False

    def _refresh_map(self) -> Gen:
        candidates = list(dict.fromkeys([*self.map.addresses(), *self.seeds]))
        yield from self._fetch_map_from(candidates, self.deadline())

    def _refresh_periodically(self) -> Gen:
        while True:
            yield Sleep(int(limits.map_refresh_s * US))
            self._refresh_soon()

    # ------------------------------------------------------------------ catalog

    def _catalog_call(self, request: m.Request, attempts: list[int] | None = None) -> Gen:
        yield from self.ensure_open()
        reply = yield from self._call(ANY_NODE, request, self.deadline(), attempts=attempts)
        return reply

    def create_metric(self, schema: MetricSchema) -> Gen:
        reply = yield from self._catalog_call(m.MetricCreate(schema=schema))
        assert isinstance(reply, m.SchemaReply)
        self.session.note_catalog(reply.catalog_version)
        return reply.schema

    def update_metric(self, schema: MetricSchema) -> Gen:
        reply = yield from self._catalog_call(m.MetricUpdate(schema=schema))
        assert isinstance(reply, m.SchemaReply)
        self.session.note_catalog(reply.catalog_version)
        return reply.schema

    def list_metrics(self) -> Gen:
        reply = yield from self._catalog_call(m.MetricList())
        assert isinstance(reply, m.SchemaList)
        self.session.note_catalog(reply.catalog_version)
        return list(reply.schemas)

    def delete_metric(self, code: str) -> Gen:
        attempts = [0]
        try:
            reply = yield from self._catalog_call(m.MetricDelete(code=code), attempts)
        except NotFoundError:
            if attempts[0] <= 1:
                raise
            listed = yield from self.list_metrics()
            if any(schema.code == code for schema in listed):
                raise
            return None
        assert isinstance(reply, m.Deleted)
        self.session.note_catalog(reply.catalog_version)
        return None

    # ------------------------------------------------------------------ ingest

    def ingest(
        self, events: list[Event], sync: bool, on_group: Callable[..., None] | None = None
    ) -> Gen:
        """``AsyncClient.ingest``; ``on_group(client, request, group, reply_or_error)`` hears
        the outcome of every per-partition batch (for the checkers)."""
        yield from self.ensure_open()
        groups = build_groups(events, self.map.partitions_of)
        deadline = self.deadline()
        gens = [self._send_group(g, sync, deadline, on_group) for g in groups]
        if len(gens) == 1:
            reply = yield from gens[0]
            return merge_results([(groups[0], reply)])
        outcomes = yield Gather(gens)
        parts = []
        for group, outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, UnimeterError):
                raise outcome
            parts.append((group, outcome))
        result: IngestResult = merge_results(parts)
        return result

    def _send_group(
        self, group: Group, sync: bool, deadline: int, on_group: Callable[..., None] | None
    ) -> Gen:
        window = self.session.window(group.partition)
        seq = window.try_acquire()
        while seq is None:  # earlier batches of this partition are still unsettled
            if self.world.now >= deadline:
                raise TimeoutError(f"partition {group.partition}: earlier batches unsettled")
            yield Sleep(1_000)
            seq = window.try_acquire()
        request = m.Ingest(
            partition=group.partition,
            producer_id=self.session.producer_id,
            seq=seq,
            sync=sync,
            catalog_version=self.session.catalog_version,
            batch=group.batch,
        )
        try:
            reply = yield from self._call(group.partition, request, deadline)
        except UnimeterError as exc:
            if on_group is not None:
                on_group(self, request, group, exc)
            raise
        finally:
            window.release(seq)
        assert isinstance(reply, m.IngestReply)
        self.session.note_ack(group.partition, reply.log_index)
        if sync:
            self.sync_acked.setdefault(group.partition, []).append((seq, reply.log_index))
        if on_group is not None:
            on_group(self, request, group, reply)
        return reply

    # ------------------------------------------------------------------ reads

    def read(self, account: int, build: Callable[[int, int], m.Request]) -> Gen:
        """A partition read: ``build(partition, min_index)`` makes the request."""
        yield from self.ensure_open()
        partition = self.map.partition_of(account)
        request = build(partition, self.session.min_index(partition))
        context = tuple(self.sync_acked.get(partition, ()))
        reply = yield from self._call(partition, request, self.deadline(), context)
        return reply


def _ignore(value: Any, exc: UnimeterError | None) -> None:
    pass
