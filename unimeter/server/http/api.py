"""The ``/v1`` handlers: each reads its parameters, builds the binary protocol's request
message, hands it to the dispatcher and writes the reply as JSON (``docs/http.md``).

Handlers raise typed errors (``unimeter.errors``); the server's middleware answers them as
problem details, so each handler only says what it does when things go right.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from unimeter import limits
from unimeter.client import convert
from unimeter.errors import InvalidRequestError, UnknownMetricError
from unimeter.json_model import (
    agg_value_json,
    json_bytes,
    schema_from_json,
    schema_json,
    stored_alert_json,
    stored_event_json,
    time_text,
)
from unimeter.routing import partition_of
from unimeter.wire import messages as m

from . import params
from .dispatch import Dispatcher
from .ingest import Ingester, delivery_is_sync, parse_events, result_json


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json_bytes(body), content_type="application/json")


def _bytes_response(body: bytes) -> web.Response:
    """An answer already written as JSON bytes."""
    return web.Response(body=body, content_type="application/json")


def usage_row_json(account: int, code: str, bounds: params.Bounds, row: list[Any]) -> bytes:
    """The answer of a plain usage read from the wire form of its value (the read fast path's
    row: ``[sum, count, max, last_value, last_timestamp_us, alert_flags]``), as
    ``agg_value_json`` writes the same value read through the partition."""
    total, count, top, last_value, last_us, flags = row
    return json_bytes(
        {
            "account_id": account,
            "metric_code": code,
            "period_start": bounds.start_text,
            "period_end": bounds.end_text,
            "value": {
                "sum": total,
                "count": count,
                "max": top,
                "last_value": last_value,
                "last_timestamp": None if last_us is None else time_text(last_us),
                "alert_flags": flags,
            },
        }
    )


class Api:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.node = dispatcher.node
        self.ingester = Ingester(dispatcher)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/events", self.post_events, name="ingest"),
            web.get("/v1/events", self.list_events, name="list_events"),
            web.get("/v1/usage", self.usage, name="usage"),
            web.get("/v1/usage/realtime", self.usage_realtime, name="usage_realtime"),
            web.get("/v1/metrics", self.list_metrics, name="metric_list"),
            web.post("/v1/metrics", self.create_metric, name="metric_create"),
            web.get("/v1/metrics/{code}", self.get_metric, name="metric_get"),
            web.put("/v1/metrics/{code}", self.update_metric, name="metric_update"),
            web.delete("/v1/metrics/{code}", self.delete_metric, name="metric_delete"),
            web.get("/v1/alerts", self.list_alerts, name="list_alerts"),
            web.get("/v1/cluster", self.cluster, name="cluster_status"),
        ]

    def _partition(self, account: int) -> int:
        return partition_of(account, self.node.partition_count)

    # ------------------------------------------------------------------ events

    async def post_events(self, request: web.Request) -> web.Response:
        sync = delivery_is_sync(params.one(request.query, "delivery"))
        events = parse_events(await request.read())
        if not events:
            return json_response(
                {"n_stored": 0, "n_duplicates": 0, "n_rejected": 0, "rejected": [],
                 "last_offset": None}
            )  # fmt: skip
        result = await self.ingester.ingest(events, sync=sync)
        return json_response(result_json(result, events))

    async def list_events(self, request: web.Request) -> web.Response:
        query = request.query
        account = params.account_id(query)
        since_us, until_us = params.time_range(query)
        limit = params.integer(query, "limit", limits.list_page_events_max)
        if not 1 <= limit <= limits.list_page_events_max:
            raise InvalidRequestError(f"limit must be 1-{limits.list_page_events_max}")
        partition = self._partition(account)
        page = await self._read(
            partition,
            m.ListEvents(
                partition=partition, account_id=account, since_us=since_us, until_us=until_us,
                after_offset=params.cursor(query, "after"), limit=limit,
                min_index=self.dispatcher.session.min_index(partition),
            ),
        )  # fmt: skip
        assert isinstance(page, m.EventsPage)
        return json_response(
            {"events": [stored_event_json(e) for e in page.events], "next_after": page.next_offset}
        )

    # ------------------------------------------------------------------ usage

    def usage_now(self, request: web.Request) -> bytes | None:
        """``usage``'s JSON answer when it is read straight from the local leader's row (a
        whole stored period, no breakdown), else None: the read then goes through ``usage``."""
        query = request.query
        if "group_by" in query:
            return None
        account = params.account_id(query)
        code = params.metric_code(query)
        bounds = params.period(query)
        filters = params.filters(query) if "filter" in query else ()
        row = self.dispatcher.read_period_here(
            self._partition(account), account, code, bounds.start_us, bounds.end_us, filters
        )
        return None if row is None else usage_row_json(account, code, bounds, row)

    async def usage(self, request: web.Request) -> web.Response:
        answer = self.usage_now(request)
        return _bytes_response(answer) if answer is not None else await self.usage_read(request)

    async def usage_read(self, request: web.Request) -> web.Response:
        """``usage`` through the partition: breakdowns, cut periods, reads that must wait."""
        query = request.query
        account = params.account_id(query)
        code = params.metric_code(query)
        bounds = params.period(query)
        start_us, end_us = bounds.start_us, bounds.end_us
        partition = self._partition(account)
        filters = params.filters(query) if "filter" in query else ()
        group_by = params.group_by(query)
        session = self.dispatcher.session
        out: dict[str, Any] = {
            "account_id": account,
            "metric_code": code,
            "period_start": bounds.start_text,
            "period_end": bounds.end_text,
        }
        if group_by:
            reply = await self._read_metric(
                partition,
                code,
                lambda catalog_version: m.QueryBreakdown(
                    partition=partition, account_id=account, metric_code=code,
                    start_us=start_us, end_us=end_us, group_by=group_by, filters=filters,
                    min_index=session.min_index(partition), catalog_version=catalog_version,
                ),
            )  # fmt: skip
            assert isinstance(reply, m.BreakdownReply)
            out["groups"] = [
                {"group": dict(cell), "value": agg_value_json(value)}
                for cell, value in sorted(reply.cells)
            ]
        else:
            reply = await self._read_metric(
                partition,
                code,
                lambda catalog_version: m.Query(
                    partition=partition, account_id=account, metric_code=code,
                    start_us=start_us, end_us=end_us, filters=filters,
                    min_index=session.min_index(partition), catalog_version=catalog_version,
                ),
            )  # fmt: skip
            assert isinstance(reply, m.AggReply)
            out["value"] = agg_value_json(reply.value)
        return json_response(out)

    def usage_realtime_now(self, request: web.Request) -> bytes | None:
        """``usage_realtime``'s JSON answer when the local leader's row of the period ingest is
        filling answers it, else None (as ``usage_now`` for ``usage``)."""
        query = request.query
        account = params.account_id(query)
        code = params.metric_code(query)
        found = self.dispatcher.read_realtime_here(self._partition(account), account, code)
        if found is None:
            return None
        row, start_us, end_us = found
        return usage_row_json(account, code, params.bounds_of(start_us, end_us), row)

    async def usage_realtime(self, request: web.Request) -> web.Response:
        answer = self.usage_realtime_now(request)
        if answer is not None:
            return _bytes_response(answer)
        return await self.usage_realtime_read(request)

    async def usage_realtime_read(self, request: web.Request) -> web.Response:
        """``usage_realtime`` through the partition."""
        query = request.query
        account = params.account_id(query)
        code = params.metric_code(query)
        partition = self._partition(account)
        reply = await self._read_metric(
            partition,
            code,
            lambda catalog_version: m.QueryRealtime(
                partition=partition, account_id=account, metric_code=code,
                catalog_version=catalog_version,
            ),
        )  # fmt: skip
        assert isinstance(reply, m.AggReply)
        return json_response(
            {
                "account_id": account,
                "metric_code": code,
                "period_start": time_text(reply.period_start_us),
                "period_end": time_text(reply.period_end_us),
                "value": agg_value_json(reply.value),
            }
        )

    async def _read(self, partition: int, request: m.Request) -> m.Reply:
        dispatcher = self.dispatcher
        return await dispatcher.call(partition, request, dispatcher.deadline())

    async def _read_metric(
        self, partition: int, code: str, request: Callable[[int], m.Request]
    ) -> m.Reply:
        """A read of one metric, made with the catalog version this node's requests carry;
        made again with a newer one if the metric was just created through another node."""
        session = self.dispatcher.session
        try:
            return await self._read(partition, request(session.catalog_version))
        except UnknownMetricError:
            if not await self.dispatcher.catch_up_catalog([code]):
                raise
        return await self._read(partition, request(session.catalog_version))

    # ------------------------------------------------------------------ metrics

    async def list_metrics(self, request: web.Request) -> web.Response:
        reply = await self.dispatcher.catalog(m.MetricList())
        assert isinstance(reply, m.SchemaList)
        return json_response(
            {"metrics": [schema_json(s) for s in reply.schemas],
             "catalog_version": reply.catalog_version}
        )  # fmt: skip

    async def get_metric(self, request: web.Request) -> web.Response:
        code = convert.metric_code(request.match_info["code"])
        reply = await self.dispatcher.catalog(m.MetricGet(code=code))
        assert isinstance(reply, m.SchemaReply)
        return json_response(schema_json(reply.schema))

    async def create_metric(self, request: web.Request) -> web.Response:
        schema = schema_from_json(await _json_body(request))
        reply = await self.dispatcher.catalog(m.MetricCreate(schema=schema))
        assert isinstance(reply, m.SchemaReply)
        return json_response(schema_json(reply.schema), status=201)

    async def update_metric(self, request: web.Request) -> web.Response:
        code = convert.metric_code(request.match_info["code"])
        schema = schema_from_json(await _json_body(request), code=code)
        reply = await self.dispatcher.catalog(m.MetricUpdate(schema=schema))
        assert isinstance(reply, m.SchemaReply)
        return json_response(schema_json(reply.schema))

    async def delete_metric(self, request: web.Request) -> web.Response:
        code = convert.metric_code(request.match_info["code"])
        reply = await self.dispatcher.catalog(m.MetricDelete(code=code))
        assert isinstance(reply, m.Deleted)
        return json_response({"deleted": code, "catalog_version": reply.catalog_version})

    # ------------------------------------------------------------------ alerts, cluster

    async def list_alerts(self, request: web.Request) -> web.Response:
        query = request.query
        account = params.account_id(query)
        limit = params.integer(query, "limit", limits.list_page_alerts_max)
        if not 1 <= limit <= limits.list_page_alerts_max:
            raise InvalidRequestError(f"limit must be 1-{limits.list_page_alerts_max}")
        partition = self._partition(account)
        page = await self._read(
            partition,
            m.ListAlerts(
                partition=partition, account_id=account, after_cursor=params.cursor(query, "after"),
                limit=limit, min_index=self.dispatcher.session.min_index(partition),
            ),
        )  # fmt: skip
        assert isinstance(page, m.AlertsPage)
        return json_response(
            {"alerts": [stored_alert_json(a) for a in page.alerts], "next_after": page.next_cursor}
        )

    async def cluster(self, request: web.Request) -> web.Response:
        status = self.node.cluster_status()
        return json_response(
            {
                "node_id": status.node_id,
                "cluster_id": status.cluster_id,
                "nodes": {str(i): address for i, address in sorted(status.nodes.items())},
                "catalog_version": status.catalog_version,
                "disk_free_bytes": status.disk_free_bytes,
                "disk_ok": status.disk_ok,
                "partitions": [
                    {
                        "partition": p.partition,
                        "leader": None if p.leader < 0 else p.leader,
                        "term": p.term,
                        "commit_index": p.commit_index,
                        "applied_index": p.applied_index,
                    }
                    for p in status.partitions
                ],
            }
        )


async def _json_body(request: web.Request) -> object:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the body is not valid JSON: {exc}") from None
