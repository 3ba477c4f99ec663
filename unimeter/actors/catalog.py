"""The catalog actor's pure core: metric schemas, durable and (later) cluster-wide.

Every change is a ``CatalogEntry`` in the catalog's own log. Once an entry is durable it is
applied, and the new metric set is *published* to every partition; the requester is answered
only after every partition has applied it, so a client that created a metric can ingest it on
any partition straight away (DESIGN §2.1b).

Rules (one table, checked in ``_decide``):
    create, code absent                   -> new generation (= the new catalog version)
    create, same schema present/pending   -> the existing one (idempotent retry)
    create, different schema present      -> AlreadyExistsError
    update, code absent                   -> NotFoundError
    update, changes agg/period fields     -> InvalidRequestError (fixed for a code)
    update, otherwise                     -> same generation, new schema
    delete, code absent                   -> NotFoundError
    get/list                              -> answered from the durable (applied) catalog
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cbor2

from unimeter import errors
from unimeter.actors.effects import Effects, Outgoing
from unimeter.actors.entries import LiveMetric
from unimeter.model import MetricSchema
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
class CatalogDurable:
    index: int


@dataclass(frozen=True, slots=True)
class Publication:
    """Deliver ``metrics`` (catalog ``version``) to every partition, then send ``replies``."""

    version: int
    metrics: tuple[LiveMetric, ...]
    replies: list[Outgoing] = field(default_factory=list)


@dataclass(slots=True)
class CatalogEffects(Effects):
    publications: list[Publication] = field(default_factory=list)

    def merge(self, other: Effects) -> None:
        Effects.merge(self, other)
        if isinstance(other, CatalogEffects):
            self.publications.extend(other.publications)


CatalogMessage = CatalogRequest | CatalogDurable

_FIXED_FIELDS = ("agg_type", "period_type", "billing_cycle_day", "period_seconds")


class CatalogCore:
    def __init__(self, entries: list[CatalogEntry] | None = None) -> None:
        self.metrics: dict[str, LiveMetric] = {}  # applied (durable) catalog
        self.version = 0
        self.last_index = 0
        self.durable_index = 0
        for entry in entries or ():
            self.last_index += 1
            self._apply(entry)
        self.durable_index = self.last_index
        self._proposed: dict[str, LiveMetric] = dict(self.metrics)
        self._proposed_version = self.version
        self._pending: list[tuple[int, CatalogEntry, list[Outgoing]]] = []

    def step(self, msg: CatalogMessage, now_us: int) -> CatalogEffects:
        fx = CatalogEffects()
        if isinstance(msg, CatalogRequest):
            self._on_request(msg, fx)
        else:
            self._on_durable(msg.index, fx)
        return fx

    def published(self) -> tuple[int, tuple[LiveMetric, ...]]:
        return self.version, self._sorted(self.metrics)

    # ------------------------------------------------------------------ requests

    def _on_request(self, msg: CatalogRequest, fx: CatalogEffects) -> None:
        req = msg.request
        try:
            outcome = self._decide(req)
        except errors.UnimeterError as exc:
            fx.replies.append(Outgoing(msg.token, exc.status, m.ErrorReply(message=exc.message)))
            return
        if isinstance(outcome, CatalogEntry):
            self.last_index += 1
            self._pending.append(
                (
                    self.last_index,
                    outcome,
                    [Outgoing(msg.token, errors.Status.OK, _reply_for(outcome))],
                )
            )
            self._proposed_version = outcome.version
            if outcome.metric is None:
                del self._proposed[outcome.code]
            else:
                self._proposed[outcome.code] = outcome.metric
            fx.appends.append((self.last_index, outcome))  # type: ignore[arg-type]
            fx.sync = True
        elif isinstance(outcome, int):
            # Identical create still in flight: answer with that entry's reply.
            for index, entry, replies in self._pending:
                if index == outcome:
                    assert entry.metric is not None
                    replies.append(Outgoing(msg.token, errors.Status.OK, _reply_for(entry)))
        else:
            fx.replies.append(Outgoing(msg.token, errors.Status.OK, outcome))

    def _decide(self, req: CatalogRequestMessage) -> CatalogEntry | m.Reply | int:
        if isinstance(req, m.MetricGet):
            lm = self.metrics.get(req.code)
            if lm is None:
                raise errors.NotFoundError(f"metric {req.code!r} does not exist")
            return m.SchemaReply(schema=lm.schema, catalog_version=self.version)
        if isinstance(req, m.MetricList):
            return m.SchemaList(
                schemas=tuple(lm.schema for lm in self._sorted(self.metrics)),
                catalog_version=self.version,
            )
        version = self._proposed_version + 1
        if isinstance(req, m.MetricDelete):
            if req.code not in self._proposed:
                raise errors.NotFoundError(f"metric {req.code!r} does not exist")
            return CatalogEntry(version=version, code=req.code, metric=None)
        schema = req.schema.normalized()
        current = self._proposed.get(schema.code)
        if isinstance(req, m.MetricCreate):
            if current is None:
                return CatalogEntry(
                    version=version,
                    code=schema.code,
                    metric=LiveMetric(generation=version, schema=schema),
                )
            if current.schema != schema:
                raise errors.AlreadyExistsError(
                    f"metric {schema.code!r} already exists with a different schema"
                )
            for index, entry, _ in self._pending:
                if entry.code == schema.code:
                    return index
            return m.SchemaReply(schema=current.schema, catalog_version=self.version)
        if current is None:
            raise errors.NotFoundError(f"metric {schema.code!r} does not exist")
        for name in _FIXED_FIELDS:
            if getattr(current.schema, name) != getattr(schema, name):
                raise errors.InvalidRequestError(
                    f"metric {schema.code!r}: {name} is fixed once created "
                    "(delete and create the metric to change it)"
                )
        return CatalogEntry(
            version=version,
            code=schema.code,
            metric=LiveMetric(generation=current.generation, schema=schema),
        )

    # ------------------------------------------------------------------ durability

    def _on_durable(self, index: int, fx: CatalogEffects) -> None:
        if index <= self.durable_index:
            return
        self.durable_index = index
        while self._pending and self._pending[0][0] <= index:
            _, entry, replies = self._pending.pop(0)
            self._apply(entry)
            fx.publications.append(
                Publication(
                    version=self.version,
                    metrics=self._sorted(self.metrics),
                    replies=replies,
                )
            )

    def _apply(self, entry: CatalogEntry) -> None:
        assert entry.version > self.version, (entry.version, self.version)
        self.version = entry.version
        if entry.metric is None:
            self.metrics.pop(entry.code, None)
        else:
            self.metrics[entry.code] = entry.metric

    @staticmethod
    def _sorted(metrics: dict[str, LiveMetric]) -> tuple[LiveMetric, ...]:
        return tuple(metrics[code] for code in sorted(metrics))

    def truncate_uncommitted(self, after: int) -> list[object]:
        """Forget proposals after ``after`` (they never reached the log); see PartitionCore."""
        failed = [o.token for i, _, rs in self._pending if i > after for o in rs]
        self._pending = [p for p in self._pending if p[0] <= after]
        self.last_index = after
        self._proposed = dict(self.metrics)
        self._proposed_version = self.version
        for _, entry, _ in self._pending:
            self._proposed_version = entry.version
            if entry.metric is None:
                self._proposed.pop(entry.code, None)
            else:
                self._proposed[entry.code] = entry.metric
        return failed

    def pending_tokens(self) -> list[object]:
        return [out.token for _, _, replies in self._pending for out in replies]


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
