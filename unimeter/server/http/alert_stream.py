"""``GET /v1/alerts/stream``: committed alerts, live, as Server-Sent Events.

Theory of operation. Each stream is a subscription of the client library
(``client.alerts.subscribe``) made by an ``AsyncClient`` the node keeps for this purpose,
seeded with every node of the cluster, this one first. That subscription already does what a
stream needs: catch-up from per-partition cursors, then every committed alert exactly once and
in cursor order per partition, across leader changes and node restarts (it follows each
partition's leader wherever it is).

Every alert is one event whose ``id`` is the stream's position after it, ``partition:cursor``
pairs (``"0:12,3:4"``). A client that reconnects with that id as ``Last-Event-ID`` (browsers'
``EventSource`` do so by themselves), or as ``?since=``, goes on exactly after that alert: no
alert is missed and none is repeated, even when the node it reconnects to was restarted in
between. A comment line every ``http_sse_keepalive_s`` keeps idle streams open through proxies
and finds clients that went away. A failure the subscription cannot retry ends the stream with
an ``error`` event carrying a problem-details object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from unimeter import limits
from unimeter.errors import BackpressureError, InvalidRequestError, Status, UnimeterError
from unimeter.json_model import alert_record_json, json_bytes
from unimeter.model import AlertRecord
from unimeter.routing import partition_of
from unimeter.wire.messages import Hello

from . import params
from .problems import TITLES

if TYPE_CHECKING:
    from unimeter.client import AsyncClient
    from unimeter.client.alerts import AlertSubscription
    from unimeter.node import Node

log = logging.getLogger("unimeter.http")


class AlertStreams:
    """The node's live alert streams and the client they subscribe through."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._client: AsyncClient | None = None
        self._client_lock = asyncio.Lock()
        self._open: set[AlertSubscription] = set()

    async def _subscriber(self) -> AsyncClient:
        async with self._client_lock:
            if self._client is None:
                from unimeter.client import AsyncClient  # only nodes that stream alerts need it

                own = self.node.advertised()
                others = [a for a in self.node.addresses.values() if a != own]
                name = f"unimeter-http-alerts/{self.node.node_id}"
                hello = self.node.own_client_hello(name)
                client = AsyncClient(
                    [own, *others],
                    client_name=name,
                    tls=self.node.dial_tls,
                    _greeting=None if isinstance(hello, Hello) else hello,
                )
                await client.connect()
                self._client = client
            return self._client

    @property
    def count(self) -> int:
        return len(self._open)

    async def close(self) -> None:
        """End every stream (the node is stopping), then close the client."""
        for subscription in list(self._open):
            await subscription.close()
        if self._client is not None:
            await self._client.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        account = params.account_id(query) if "account_id" in query else None
        since_text = request.headers.get("Last-Event-ID") or params.one(query, "since")
        since = params.stream_cursors(since_text) if since_text else None
        if len(self._open) >= limits.http_alert_streams_max:
            raise BackpressureError(
                f"{limits.http_alert_streams_max} alert streams are open on this node"
            )
        client = await self._subscriber()
        if since is not None and account is not None:
            owner = partition_of(account, self.node.partition_count)
            if set(since) - {owner}:
                raise InvalidRequestError(
                    f"account {account} lives in partition {owner}; the cursor names others"
                )
        subscription = client.alerts.subscribe(account, since=since)
        self._open.add(subscription)
        try:
            await subscription.start()
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",  # nginx: do not hold events back
                }
            )
            await response.prepare(request)
            await response.write(b": stream open\n\n")
            with contextlib.suppress(ConnectionError):
                await _pump(subscription, response)
            return response
        finally:
            self._open.discard(subscription)
            await subscription.close()


async def _pump(subscription: AlertSubscription, response: web.StreamResponse) -> None:
    """Write alerts as they come; a comment when none came for a while."""
    upcoming: asyncio.Task[AlertRecord] | None = None
    try:
        while True:
            if upcoming is None:
                upcoming = asyncio.ensure_future(subscription.__anext__())
            done, _ = await asyncio.wait({upcoming}, timeout=limits.http_sse_keepalive_s)
            if not done:
                await response.write(b": keepalive\n\n")
                continue
            task, upcoming = upcoming, None
            try:
                alert = task.result()
            except StopAsyncIteration:
                return  # the node is stopping: the client reconnects from its last id
            except UnimeterError as exc:
                await response.write(_error_event(exc))
                return
            stream_id = params.stream_id(subscription.cursors)
            data = json_bytes(alert_record_json(alert))
            await response.write(b"id: %s\nevent: alert\ndata: %s\n\n" % (stream_id.encode(), data))
    finally:
        if upcoming is not None:
            upcoming.cancel()
            with contextlib.suppress(BaseException):
                await upcoming


def _error_event(exc: UnimeterError) -> bytes:
    status = Status(exc.status)
    body = {
        "type": f"urn:unimeter:error:{status.name.lower()}",
        "title": TITLES[status],
        "detail": exc.message,
        "code": status.name,
        "retriable": exc.retriable,
    }
    return b"event: error\ndata: %s\n\n" % orjson.dumps(body)
