"""The catalog actor's pure core: metric schemas, durable and cluster-wide.

The catalog is a Raft group of its own over every node. Every change is a ``CatalogEntry`` in
its log; once committed it is applied on every node, and each node *publishes* the new metric
set to its local partition replicas (a partition leader then logs it as a ``SchemaEntry``).
The leader answers the requester after the change is committed and its own node's partitions
have taken it in; ``Ingest`` carries the catalog version the client saw, so a partition leader
elsewhere waits until its node has applied that version (docs/semantics.md §2).

Rules (one table, checked in ``_decide``):
    create, code absent                   -> new generation (= the new catalog version)
    create, same schema, entry pending    -> joins the LATEST pending entry for that code
                                             (idempotent retry); never an older one, which
                                             may be a delete
    create, same schema, nothing pending  -> the applied one (idempotent retry)
    create, different schema present      -> AlreadyExistsError
    update, code absent                   -> NotFoundError
    update, changes agg/period fields     -> InvalidRequestError (fixed for a code)
    update, otherwise                     -> same generation, new schema
    delete, code absent, delete pending   -> joins that pending delete (a retry whose first
                                             attempt is still in flight)
    delete, code absent                   -> NotFoundError
    get/list                              -> answered by any replica from its applied catalog
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import cbor2

from unimeter import errors
from unimeter.actors.effects import Effects, Outgoing
from unimeter.actors.replicated import Recovered, ReplicatedCore
from unimeter.consensus.codec import CATALOG_GROUP
from unimeter.consensus.config import ProposalRejected, RaftConfig
from unimeter.consensus.messages import LogEntry, Snapshot
from unimeter.model import MetricSchema
from unimeter.state.entries import LiveMetric
from unimeter.wire import messages as m

CatalogRequestMessage = (
    m.MetricCreate | m.MetricUpdate | m.MetricGet | m.MetricList | m.MetricDelete
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogEntry:
    version: int
    code: str
    metric: LiveMetric | None  # None: the metric is deleted


@dataclass(frozen=True, slots=True)
class CatalogRequest:
    token: object
    request: CatalogRequestMessage


@dataclass(frozen=True, slots=True)
class Publication:
    """Deliver ``metrics`` (catalog ``version``) to this node's partitions, then ``replies``."""

    version: int
    metrics: tuple[LiveMetric, ...]
    replies: list[Outgoing] = field(default_factory=list)


@dataclass(slots=True)
class CatalogEffects(Effects):
    publications: list[Publication] = field(default_factory=list)


_FIXED_FIELDS = ("agg_type", "period_type", "billing_cycle_day", "period_seconds")


class CatalogState:
    """The applied catalog: what every replica agrees on, entry by entry."""

    def __init__(self) -> None:
        self.metrics: dict[str, LiveMetric] = {}
        self.version = 0
        self.applied_index = 0

    def apply(self, index: int, entry: CatalogEntry | None) -> None:
        assert index == self.applied_index + 1, (index, self.applied_index)
        self.applied_index = index
        if entry is None:
            return
        assert entry.version > self.version, (entry.version, self.version)
        self.version = entry.version
        if entry.metric is None:
            self.metrics.pop(entry.code, None)
        else:
            self.metrics[entry.code] = entry.metric

    def sorted(self) -> tuple[LiveMetric, ...]:
        return tuple(self.metrics[code] for code in sorted(self.metrics))

    def to_bytes(self) -> bytes:
        return bytes(cbor2.dumps([
            self.applied_index, self.version,
            [[lm.generation, lm.schema.to_wire()] for lm in self.sorted()],
        ]))  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes) -> CatalogState:
        applied, version, metrics = cbor2.loads(data)
        state = cls()
        state.applied_index = applied
        state.version = version
        for generation, wire in metrics:
            schema = MetricSchema.from_wire(wire)
            state.metrics[schema.code] = LiveMetric(generation=generation, schema=schema)
        return state


class CatalogCore(ReplicatedCore):
    def __init__(
        self,
        *,
        state: CatalogState,
        node_id: int,
        members: tuple[int, ...],
        addresses: dict[int, str],
        recovered: Recovered,
        raft_config: RaftConfig,
        rng: random.Random,
        now_us: int,
    ) -> None:
        super().__init__(
            group=CATALOG_GROUP, node_id=node_id, members=members, addresses=addresses,
            recovered=recovered, applied=state.applied_index, raft_config=raft_config,
            rng=rng, now_us=now_us,
        )  # fmt: skip
        self.state = state
        self._proposed: dict[str, LiveMetric] = dict(state.metrics)
        self._proposed_version = state.version
        self._view_term = -1
        self._pending: dict[int, tuple[CatalogEntry, list[Outgoing]]] = {}
        self._parked: list[CatalogRequest] = []  # changes waiting for leader_ready

    @property
    def version(self) -> int:
        return self.state.version

    def published(self) -> tuple[int, tuple[LiveMetric, ...]]:
        return self.state.version, self.state.sorted()

    def step(self, msg: object, now_us: int) -> CatalogEffects:
        fx = CatalogEffects()
        if isinstance(msg, CatalogRequest):
            self._on_request(msg, now_us, fx)
        elif not self.step_common(msg, now_us, fx):
            raise AssertionError(f"unexpected message {msg!r}")
        self.drain(now_us, fx)
        return fx

    # ------------------------------------------------------------------ requests

    def _on_request(self, msg: CatalogRequest, now_us: int, fx: CatalogEffects) -> None:
        req = msg.request
        if isinstance(req, m.MetricGet):
            lm = self.state.metrics.get(req.code)
            if lm is None:
                fx.replies.append(
                    _error(msg.token, errors.NotFoundError(f"metric {req.code!r} does not exist"))
                )
            else:
                fx.replies.append(
                    Outgoing(
                        msg.token,
                        errors.Status.OK,
                        m.SchemaReply(schema=lm.schema, catalog_version=self.state.version),
                    )
                )
            return
        if isinstance(req, m.MetricList):
            fx.replies.append(
                Outgoing(
                    msg.token,
                    errors.Status.OK,
                    m.SchemaList(
                        schemas=tuple(lm.schema for lm in self.state.sorted()),
                        catalog_version=self.state.version,
                    ),
                )
            )
            return
        if not self.leader_ready:
            if self.parks_for_leader(len(self._parked)):
                self._parked.append(msg)
            else:
                fx.replies.append(self.not_leader(msg.token))
            return
        self._refresh_view()
        try:
            outcome = self._decide(req)
        except errors.UnimeterError as exc:
            fx.replies.append(_error(msg.token, exc))
            return
        if isinstance(outcome, int):
            # A retry of a change still in flight: answer with that entry's reply.
            entry, replies = self._pending[outcome]
            replies.append(Outgoing(msg.token, errors.Status.OK, _reply_for(entry)))
        elif isinstance(outcome, CatalogEntry):
            try:
                index = self._propose(encode_catalog_entry(outcome), now_us)
            except ProposalRejected:
                fx.replies.append(self.not_leader(msg.token))
                return
            self._pending[index] = (outcome, [
                Outgoing(msg.token, errors.Status.OK, _reply_for(outcome))
            ])  # fmt: skip
            self._proposed_version = outcome.version
            if outcome.metric is None:
                del self._proposed[outcome.code]
            else:
                self._proposed[outcome.code] = outcome.metric
        else:
            fx.replies.append(Outgoing(msg.token, errors.Status.OK, outcome))

    def _refresh_view(self) -> None:
        if self._view_term != self.raft.term:
            self._view_term = self.raft.term
            self._proposed = dict(self.state.metrics)
            self._proposed_version = self.state.version

    def _decide(
        self, req: m.MetricCreate | m.MetricUpdate | m.MetricDelete
    ) -> CatalogEntry | m.Reply | int:
        version = self._proposed_version + 1
        if isinstance(req, m.MetricDelete):
            if req.code not in self._proposed:
                latest = self._latest_pending(req.code)
                if latest is not None and self._pending[latest][0].metric is None:
                    return latest
                raise errors.NotFoundError(f"metric {req.code!r} does not exist")
            return CatalogEntry(version=version, code=req.code, metric=None)
        schema = req.schema.normalized()
        current = self._proposed.get(schema.code)
        if isinstance(req, m.MetricCreate):
            if current is None:
                return CatalogEntry(
                    version=version, code=schema.code,
                    metric=LiveMetric(generation=version, schema=schema),
                )  # fmt: skip
            if current.schema != schema:
                raise errors.AlreadyExistsError(
                    f"metric {schema.code!r} already exists with a different schema"
                )
            latest = self._latest_pending(schema.code)
            if latest is not None:
                # The view says the code holds this schema, so the latest pending entry for it
                # set this schema (a create, or an update to the same fields): its reply is a
                # retried create's. An older pending entry for the code may be a delete.
                entry = self._pending[latest][0]
                assert entry.metric is not None and entry.metric.schema == schema, entry
                return latest
            return m.SchemaReply(schema=current.schema, catalog_version=self.state.version)
        if current is None:
            raise errors.NotFoundError(f"metric {schema.code!r} does not exist")
        for name in _FIXED_FIELDS:
            if getattr(current.schema, name) != getattr(schema, name):
                raise errors.InvalidRequestError(
                    f"metric {schema.code!r}: {name} is fixed once created "
                    "(delete and create the metric to change it)"
                )
        return CatalogEntry(
            version=version, code=schema.code,
            metric=LiveMetric(generation=current.generation, schema=schema),
        )  # fmt: skip

    def _latest_pending(self, code: str) -> int | None:
        """The index of the newest proposed-but-unapplied entry for ``code``, or None."""
        found = None
        for index, (entry, _) in self._pending.items():
            if entry.code == code and (found is None or index > found):
                found = index
        return found

    # ------------------------------------------------------------------ replication hooks

    def _apply_entry(self, entry: LogEntry, now_us: int, fx: Effects) -> None:
        assert isinstance(fx, CatalogEffects)
        pending = self._pending.pop(entry.index, None)
        decoded = decode_catalog_entry(entry.data)
        self.state.apply(entry.index, decoded)
        replies = pending[1] if pending is not None and pending[0] == decoded else []
        fx.publications.append(
            Publication(version=self.state.version, metrics=self.state.sorted(), replies=replies)
        )

    def _apply_noop(self, index: int, now_us: int, fx: Effects) -> None:
        self.state.apply(index, None)

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        self.state = CatalogState.from_bytes(snapshot.data)
        self._view_term = -1

    def _snapshot_data(self) -> bytes:
        return self.state.to_bytes()

    def _lost_leadership(self, now_us: int, fx: Effects) -> None:
        for _, replies in self._pending.values():
            for out in replies:
                fx.replies.append(self.not_leader(out.token))
        for msg in self._parked:
            fx.replies.append(self.not_leader(msg.token))
        self._pending.clear()
        self._parked.clear()
        self._view_term = -1

    def _after_drain(self, now_us: int, fx: Effects) -> None:
        if self._parked and self.leader_ready:
            assert isinstance(fx, CatalogEffects)
            parked, self._parked = self._parked, []
            for msg in parked:
                self._on_request(msg, now_us, fx)

    def pending_tokens(self) -> list[object]:
        tokens = [out.token for _, replies in self._pending.values() for out in replies]
        return tokens + [msg.token for msg in self._parked]


def _error(token: object, exc: errors.UnimeterError) -> Outgoing:
    return Outgoing(token, exc.status, m.ErrorReply(message=exc.message))


def _reply_for(entry: CatalogEntry) -> m.Reply:
    if entry.metric is None:
        return m.Deleted(catalog_version=entry.version)
    return m.SchemaReply(schema=entry.metric.schema, catalog_version=entry.version)


def encode_catalog_entry(entry: CatalogEntry) -> bytes:
    metric = None
    if entry.metric is not None:
        metric = [entry.metric.generation, entry.metric.schema.to_wire()]
    return bytes(cbor2.dumps([entry.version, entry.code, metric]))


def decode_catalog_entry(data: bytes) -> CatalogEntry:
    version, code, metric = cbor2.loads(data)
    live = None
    if metric is not None:
        live = LiveMetric(generation=metric[0], schema=MetricSchema.from_wire(metric[1]))
    return CatalogEntry(version=version, code=code, metric=live)
