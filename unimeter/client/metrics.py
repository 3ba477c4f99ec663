"""``client.metrics``: the metric catalog (create, update, get, list, delete).

Every answer carries the catalog version it reflects; the client keeps the highest one and sends
it with each ``Ingest``, so a partition leader that has not yet applied the catalog change this
client just made waits for it instead of rejecting events for an "unknown" metric.

Retries are safe: create is idempotent for an identical schema, update sets rather than adds,
and a delete whose first attempt may have been applied is settled by reading the catalog back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from unimeter.errors import InvalidRequestError, NotFoundError
from unimeter.model import MetricSchema
from unimeter.wire.messages import (
    Deleted,
    MetricCreate,
    MetricDelete,
    MetricGet,
    MetricList,
    MetricUpdate,
    Reply,
    Request,
    SchemaList,
    SchemaReply,
)

from . import convert
from .retry import Attempts
from .session import Session

# Sends a catalog request, retrying under the client's deadline and counting the attempts.
CatalogCall = Callable[[Request, Attempts], Awaitable[Reply]]


def _checked(schema: object) -> MetricSchema:
    if not isinstance(schema, MetricSchema):
        raise InvalidRequestError(f"expected a MetricSchema, got {type(schema).__name__}")
    try:
        schema.validate()
    except ValueError as exc:
        raise InvalidRequestError(f"metric {schema.code!r}: {exc}") from None
    return schema


class MetricsApi:
    __slots__ = ("_call", "_session")

    def __init__(self, call: CatalogCall, session: Session) -> None:
        self._call = call
        self._session = session

    async def create(self, schema: MetricSchema) -> MetricSchema:
        """Register a metric; returns the stored schema (identical re-creates are no-ops)."""
        return await self._schema_request(MetricCreate(schema=_checked(schema)))

    async def update(self, schema: MetricSchema) -> MetricSchema:
        """Change a metric's thresholds, dimensions and recurrence from now on."""
        return await self._schema_request(MetricUpdate(schema=_checked(schema)))

    async def get(self, code: str) -> MetricSchema:
        return await self._schema_request(MetricGet(code=convert.metric_code(code)))

    async def list(self) -> list[MetricSchema]:
        reply = await self._call(MetricList(), Attempts())
        schemas = convert.expect(reply, SchemaList)
        self._session.note_catalog(schemas.catalog_version)
        return list(schemas.schemas)

    async def delete(self, code: str) -> None:
        """Remove a metric and its aggregates; raises ``NotFoundError`` if there is none."""
        request = MetricDelete(code=convert.metric_code(code))
        attempts = Attempts()
        try:
            reply = await self._call(request, attempts)
        except NotFoundError:
            if attempts.count <= 1:
                raise
            # An earlier attempt may have deleted it and lost the answer. If the catalog no
            # longer lists the code, our delete is what removed it; learn the version it left.
            listed = await self.list()
            if any(schema.code == code for schema in listed):
                raise
            return
        self._session.note_catalog(convert.expect(reply, Deleted).catalog_version)

    async def _schema_request(self, request: Request) -> MetricSchema:
        reply = await self._call(request, Attempts())
        answer = convert.expect(reply, SchemaReply)
        self._session.note_catalog(answer.catalog_version)
        return answer.schema
