"""The node's HTTP/JSON API on the node's own event loop (aiohttp, orjson).

``HttpServer(node).start(host, port)`` serves ``/v1`` (``api.py``: events, usage, metrics,
alerts, cluster status), the live alert stream (``alert_stream.py``), ``/health``,
``/metrics`` (``prometheus.py``) and ``/v1/openapi.json`` (``openapi.py``). One middleware
times every request for ``/metrics`` and turns every error into a problem-details answer
(``problems.py``): typed errors with their status names, aiohttp's own refusals (no such path,
wrong method, body too large) and, for bugs, a plain INTERNAL problem (the traceback goes to
the log, not to the client). The node keeps serving everyone else whatever one request does.
Every connection starts on the fast lane (``fastlane.py``), which serves the requests callers
repeat most (usage reads, ingests) under the same guard and hands the connection to aiohttp at
the first request it does not serve.

``stop`` ends the alert streams, lets in-flight requests finish (bounded), closes the listening
socket and the forwarding connections.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from unimeter import limits
from unimeter.errors import Status, UnavailableError, UnimeterError

from . import problems
from .alert_stream import AlertStreams
from .api import Api, json_response
from .auth import UNMATCHED, authorise
from .dispatch import Dispatcher
from .fastlane import IDLE_S, FastLane, HotRoute
from .openapi import openapi_document
from .prometheus import CONTENT_TYPE, registry_for, render

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler

    from unimeter.node import Node

log = logging.getLogger("unimeter.http")

_SHUTDOWN_S = 2.0  # in-flight requests get this long to finish when the node stops


class HttpServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.dispatcher = Dispatcher(node)
        self.streams = AlertStreams(node)
        self._api = Api(self.dispatcher)
        self._registry = registry_for(node, self.streams)
        self._openapi = orjson.dumps(openapi_document())
        self._runner: web.AppRunner | None = None
        # What the fast lane serves itself (every other request goes to aiohttp): a read's
        # answer from the row when it has one, else the rest of its handler.
        api = self._api
        self._fast_routes = {
            (b"GET", "/v1/usage"): HotRoute(api.usage_read, "usage", api.usage_now),
            (b"GET", "/v1/usage/realtime"): HotRoute(
                api.usage_realtime_read, "usage_realtime", api.usage_realtime_now
            ),
            (b"POST", "/v1/events"): HotRoute(self._api.post_events, "ingest"),
        }
        self._lanes: set[FastLane] = set()
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=limits.http_body_bytes_max)
        app.add_routes(
            [
                web.get("/health", self.health, name="health"),
                web.get("/metrics", self.metrics, name="metrics"),
                web.get("/v1/openapi.json", self.openapi, name="openapi"),
                web.get("/v1/alerts/stream", self.streams.handle, name="alert_stream"),
                *self._api.routes(),
            ]
        )
        app.on_shutdown.append(self._end_streams)
        return app

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_S
        )
        await runner.setup()
        server = runner.server
        assert server is not None
        # Every connection starts on the fast lane, which hands it to aiohttp (``server()``
        # makes aiohttp's protocol for one connection) at the first request it does not serve.
        loop = asyncio.get_running_loop()
        try:
            self._listener = await loop.create_server(
                lambda: FastLane(self._fast_routes, self, server, self._lanes),
                host, port, ssl=tls, backlog=1024, reuse_address=True,
            )  # fmt: skip
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._sweeper = loop.create_task(self._sweep_idle())

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await self._end_lanes()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.streams.close()
        await self._api.ingester.close()
        await self.dispatcher.close()

    async def _end_lanes(self) -> None:
        """Closes the fast lane's connections, each once the request it is serving is answered
        (bounded); requests read ahead are dropped unserved, as aiohttp drops them."""
        serving = [task for lane in self._lanes if (task := lane.stop_reading()) is not None]
        if serving:
            # A lane writes its answer in the task's first done callback, before this wakes.
            await asyncio.wait(serving, timeout=_SHUTDOWN_S)
        for lane in list(self._lanes):
            lane.close()

    async def _sweep_idle(self) -> None:
        """Closes fast-lane connections idle for ``IDLE_S`` (as aiohttp does its own)."""
        while True:
            await asyncio.sleep(IDLE_S / 4)
            cutoff = time.monotonic() - IDLE_S
            for lane in [lane for lane in self._lanes if lane.last_seen < cutoff]:
                lane.close()

    async def _end_streams(self, app: web.Application) -> None:
        await self.streams.close()

    # ------------------------------------------------------------------ every request

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        return await self._guarded(request, handler, request.match_info.route.name or UNMATCHED)

    async def _guarded(
        self, request: web.Request, handler: Handler, name: str
    ) -> web.StreamResponse:
        """Authorises, answers errors as problems and times the request for /metrics."""
        started = perf_counter()
        try:
            refusal = authorise(self.node.gate, request, name)
            response = refusal if refusal is not None else await handler(request)
        except Exception as exc:
            response = self._problem(request, exc)
        if name != "alert_stream":  # a stream's lifetime is not a latency
            self._count(name, response.get(problems.STATUS_KEY, Status.OK), started)
        return response

    # The fast lane's two ways in (``fastlane.Guards``): the same guard around a handler.
    answer = _guarded

    def answer_now(
        self, request: web.Request, now: Callable[[web.Request], bytes | None], name: str
    ) -> web.StreamResponse | bytes | None:
        """``_guarded`` around a handler's synchronous part: a refusal or problem, the JSON
        body of its OK answer, or None when it has none without waiting (nothing is counted
        then: ``answer`` runs the whole handler)."""
        started = perf_counter()
        try:
            refusal = authorise(self.node.gate, request, name)
            if refusal is None:
                body = now(request)
                if body is not None:
                    self._count(name, Status.OK, started)
                return body
            response = refusal
        except Exception as exc:
            response = self._problem(request, exc)
        self._count(name, response.get(problems.STATUS_KEY, Status.OK), started)
        return response

    def _problem(self, request: web.Request, exc: Exception) -> web.Response:
        if isinstance(exc, UnimeterError):
            return problems.from_error(exc)
        if isinstance(exc, web.HTTPException):
            return problems.from_http(exc)
        log.error("event=http_handler_failed path=%s", request.path, exc_info=exc)
        return problems.problem(Status.INTERNAL, "the node failed this request")

    def _count(self, name: str, status: Status, started: float) -> None:
        self.node.stats.request("http", name).done(status, perf_counter() - started)

    # ------------------------------------------------------------------ operations

    async def health(self, request: web.Request) -> web.Response:
        node = self.node
        if not node.serving:
            raise UnavailableError("the node is starting or stopping")
        return json_response({"status": "ok", "node_id": node.node_id, "disk_ok": node.disk_ok})

    async def metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=render(self._registry))
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")
