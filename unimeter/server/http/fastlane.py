"""The HTTP server's fast lane: the requests callers repeat most, on a lean connection.

aiohttp's request machinery (its protocol, request and response objects, stream writer and
access-log hook) costs more per request than a plain usage read does in all: on a 2-core
machine its empty handler answers in 3-4 x the loopback round trip, where the usage bar is 3 x.
So every HTTP connection starts on a ``FastLane``: an asyncio protocol that parses with
httptools (llhttp, the parser of Node.js and uvicorn) and serves ``GET /v1/usage``, ``GET
/v1/usage/realtime`` and ``POST /v1/events`` itself, through the very handlers and guard the
application uses (authorisation, problem details, the request's timing for ``/metrics``): only
the HTTP framing differs.

Anything else, and anything unusual about one of those (HTTP/1.0, ``Connection: close``,
``Expect``, ``Transfer-Encoding``, an upgrade, a body over the limit, an over-long head, bytes
llhttp refuses) hands the connection to aiohttp for good: an aiohttp protocol takes the
transport and is given every byte from the start of that request on, so it answers as if it
had served the connection from the start. Requests handed over are exactly the ones the fast
lane did not answer: answers already written stay written, answers still being computed are
written before the hand-over, so a client sees its answers in the order of its requests.

The boundary of the request to hand over: the lane keeps the bytes received since the parser
was last between requests (``_raw``), usually just the current request; when requests were
pipelined, the end of the ones answered is found by feeding prefixes of those bytes to a fresh
parser (``_end_of``), so the lane never frames a request by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from email.utils import formatdate
from typing import Any, NamedTuple, Protocol, cast
from urllib.parse import parse_qsl

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from unimeter import limits

log = logging.getLogger("unimeter.http")

# A head beyond aiohttp's own limits goes to aiohttp, which refuses it as it would anyway.
HEAD_BYTES_MAX = 64 * 1024
FIELD_BYTES_MAX = 8190  # the request line, a header's name or value (aiohttp's default)
HEADERS_MAX = 100
QUEUED_MAX = 64  # pipelined requests read ahead of their answers before reading pauses
IDLE_S = 75.0  # aiohttp's keep-alive timeout: an idle fast-lane connection is closed after it

Handler = Callable[[Any], Awaitable[web.StreamResponse]]
# A handler's synchronous part: the JSON body of its OK answer when it needs no waiting.
Now = Callable[[Any], bytes | None]


class HotRoute(NamedTuple):
    handler: Handler  # answers a request as the application's handler does
    name: str  # the route's name (roles, /metrics)
    now: Now | None = None


class Guards(Protocol):
    """The server's guard (authorisation, problem details, timing), around either part."""

    def answer_now(
        self, request: Any, now: Now, name: str
    ) -> web.StreamResponse | bytes | None: ...

    def answer(
        self, request: Any, handler: Handler, name: str
    ) -> Coroutine[Any, Any, web.StreamResponse]: ...


# Headers that make a request unusual enough for aiohttp (framing, upgrades, 100-continue).
_UNUSUAL = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"content-encoding"})


class _HandOver(Exception):
    """Raised inside a parser callback: this request goes to aiohttp."""


class FastRequest:
    """What the hot handlers, the guard and ``authorise`` read of a request, as aiohttp's
    ``web.Request`` offers it (the same names, the same parsing of the URL)."""

    __slots__ = (
        "_body", "_headers", "_query", "_query_text", "_raw_headers", "method", "path", "remote"
    )  # fmt: skip

    def __init__(
        self,
        method: str,
        target: str,
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        remote: str | None,
    ) -> None:
        self.method = method
        path, _, query = target.partition("?")
        self.path = path
        self._query_text = query.partition("#")[0]
        self._raw_headers = raw_headers
        self._headers: CIMultiDictProxy[str] | None = None
        self._query: MultiDictProxy[str] | None = None
        self._body = body
        self.remote = remote

    @property
    def query(self) -> MultiDictProxy[str]:
        """The query string's parameters, decoded as aiohttp's ``Request.query`` (yarl's)
        decodes them: ``parse_qsl`` with blank values kept; split here when there is nothing
        to decode but ``+``."""
        if self._query is None:
            text = self._query_text
            if "%" in text:
                pairs = parse_qsl(text, keep_blank_values=True)
            else:
                pairs = [(n, v) for n, _, v in (p.partition("=") for p in
                         text.replace("+", " ").split("&") if p)]  # fmt: skip
            self._query = MultiDictProxy(MultiDict(pairs))
        return self._query

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        if self._headers is None:
            decoded = CIMultiDict(
                (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
                for name, value in self._raw_headers
            )
            self._headers = CIMultiDictProxy(decoded)
        return self._headers

    async def read(self) -> bytes:
        return self._body


class _Date:
    """The ``Date`` header's value, made once a second."""

    second = -1
    text = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.text = second, formatdate(second, usegmt=True).encode()
        return cls.text


def _answer(status_and_headers: bytes, body: bytes) -> bytes:
    """An HTTP/1.1 answer: its status line and headers, then the ones every answer has."""
    return b"%sContent-Length: %d\r\nDate: %s\r\nServer: unimeter\r\n\r\n%s" % (
        status_and_headers, len(body), _Date.now(), body)  # fmt: skip


_OK_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


def ok_json(body: bytes) -> bytes:
    """A 200 answer of a JSON body."""
    return _answer(_OK_JSON, body)


def encode_response(response: web.StreamResponse) -> bytes:
    """``response`` (a complete ``web.Response``) as the bytes of an HTTP/1.1 answer."""
    assert isinstance(response, web.Response)
    body = response.body
    assert isinstance(body, bytes)
    lines = [b"HTTP/1.1 %d %s\r\n" % (response.status, response.reason.encode("latin-1"))]
    lines += [b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in
              response.headers.items()]  # fmt: skip
    return _answer(b"".join(lines), body)


class FastLane(asyncio.Protocol):
    """One HTTP connection, served here until something asks for aiohttp."""

    def __init__(
        self,
        routes: dict[tuple[bytes, str], HotRoute],
        guards: Guards,
        fallback: Callable[[], asyncio.Protocol],
        lanes: set[FastLane],
    ) -> None:
        self._routes = routes
        self._guards = guards
        self._fallback = fallback
        self._lanes = lanes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._raw = bytearray()  # bytes received since the parser was last between requests
        self._begun = 0  # requests begun within ``_raw``
        self._complete = 0  # ... and complete
        self._in_head = False
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._route: HotRoute | None = None
        self._request_line = ("", "")  # the method and target of the request being read
        self._queue: deque[tuple[FastRequest, HotRoute]] = deque()  # read, not yet served
        self._busy: asyncio.Task[web.StreamResponse] | None = None  # serving one of them
        self._handing_over: bytearray | None = None  # bytes for aiohttp, once answers are out
        self._write_paused = False
        self._read_paused = False  # reading paused while the queue is full
        self._stopping = False  # the node stops: nothing more is read or served
        self.last_seen = time.monotonic()

    # ------------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, (list, tuple)) else None
        self._lanes.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._lanes.discard(self)
        # Requests read ahead are dropped unserved, as aiohttp drops them: their client saw
        # no answer and may send them again, so storing them too could count them twice.
        self._queue.clear()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._read_paused and self._handing_over is None:
            self._transport.resume_reading()
        self._maybe_hand_over()

    def stop_reading(self) -> asyncio.Task[web.StreamResponse] | None:
        """The node stops: read no more, drop what was read ahead; the request being served,
        if any (its answer is still written)."""
        if self._transport is not None:
            self._transport.pause_reading()
        self._stopping = True
        self._queue.clear()
        return self._busy

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if self._stopping:
            return
        if self._handing_over is not None:
            self._handing_over += data
            return
        raw = self._raw
        raw += data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HandOver):  # a bug here: this client only
                log.error("event=http_fast_lane_failed", exc_info=exc.__context__ or exc)
                self.close()
                return
            self._hand_over()
            return
        except httptools.HttpParserError:  # aiohttp answers what is wrong with the bytes
            self._hand_over()
            return
        if self._begun == self._complete:  # between requests: nothing to keep
            raw.clear()
            self._begun = self._complete = 0
        elif self._in_head and len(raw) > HEAD_BYTES_MAX:
            self._hand_over()

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._begun += 1
        self._in_head = True
        self._url.clear()
        self._headers = []
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        method = parser.get_method()
        url = b"".join(self._url)
        target = url.decode("utf-8", "surrogateescape")
        route = self._routes.get((method, target.partition("?")[0]))
        if (
            route is None
            or len(url) > FIELD_BYTES_MAX
            or parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or parser.should_upgrade()
            or not self._plain_framing()
        ):
            raise _HandOver
        self._route = route
        self._request_line = (method.decode(), target)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete += 1
        route = self._route
        assert route is not None
        method, target = self._request_line
        request = FastRequest(
            method,
            target,
            self._headers,
            b"".join(self._body),
            self._remote,
        )
        queue = self._queue
        if self._busy is None and not queue:  # the common case: nothing before it
            self._serve(request, route)
            return
        queue.append((request, route))
        if len(queue) >= QUEUED_MAX and self._transport is not None:
            self._transport.pause_reading()  # a client pipelining far ahead waits for answers
            self._read_paused = True

    def _plain_framing(self) -> bool:
        """Headers within aiohttp's limits, and none that asks for more than a Content-Length
        body within the body limit."""
        length = 0
        headers = self._headers
        if len(headers) > HEADERS_MAX:
            return False
        for name, value in headers:
            if len(name) > FIELD_BYTES_MAX or len(value) > FIELD_BYTES_MAX:
                return False
            lowered = name.lower()
            if lowered in _UNUSUAL:
                return False
            if lowered == b"content-length":
                if not value.isdigit():
                    return False
                length = int(value)
        return length <= limits.http_body_bytes_max

    # ------------------------------------------------------------------ answers

    def _serve(self, request: FastRequest, route: HotRoute) -> None:
        """Answers ``request`` now when its handler can, else starts the task that will."""
        guards = self._guards
        if route.now is not None:
            response = guards.answer_now(request, route.now, route.name)
            if isinstance(response, bytes):
                self._write(ok_json(response))
                return
            if response is not None:
                self._write(encode_response(response))
                return
        task = asyncio.ensure_future(guards.answer(request, route.handler, route.name))
        task.add_done_callback(self._answered)
        self._busy = task

    def _next(self) -> None:
        """Serves the queued requests in turn, each after the one before it is answered (as
        aiohttp does: a read sees the writes requested before it on its connection)."""
        if self._stopping:
            return
        queue = self._queue
        while queue and self._busy is None:
            self._serve(*queue.popleft())
        if self._busy is not None:
            return
        if self._read_paused:
            self._read_paused = False
            if self._transport is not None and not self._write_paused:
                self._transport.resume_reading()
        self._maybe_hand_over()

    def _answered(self, task: asyncio.Task[web.StreamResponse]) -> None:
        self._busy = None
        if task.cancelled():  # the node is stopping
            self.close()
            return
        try:
            self._write(encode_response(task.result()))  # the guard answers every error
            self._next()
        except Exception:  # a bug here: this client only, never the node's loop
            log.exception("event=http_fast_lane_failed")
            self.close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    # ------------------------------------------------------------------ hand-over

    def _hand_over(self) -> None:
        """From the first request not answered here on, the connection is aiohttp's."""
        raw = bytes(self._raw)
        start = 0 if self._complete == 0 else _end_of(raw, self._complete)
        self._handing_over = bytearray(raw[start:])
        self._raw = bytearray()
        if self._transport is not None:
            self._transport.pause_reading()
        self._maybe_hand_over()

    def _maybe_hand_over(self) -> None:
        """Hands over once every answer of this lane is written (answers keep their order)."""
        rest = self._handing_over
        transport = self._transport
        if rest is None or self._busy or self._queue or self._write_paused or transport is None:
            return
        self._handing_over = None
        self._lanes.discard(self)
        protocol = self._fallback()
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        transport.resume_reading()
        if rest:
            protocol.data_received(bytes(rest))


def _end_of(raw: bytes, requests: int) -> int:
    """Where in ``raw`` (bytes that begin with a request) the first ``requests`` requests end:
    the shortest prefix a fresh parser completes that many requests in (found by halving)."""

    class Counter:
        complete = 0

        def on_message_complete(self) -> None:
            self.complete += 1

    low, high = 0, len(raw)  # complete(raw[:high]) >= requests, complete(raw[:low]) < requests
    while high - low > 1:
        middle = (low + high) // 2
        counter = Counter()
        with contextlib.suppress(httptools.HttpParserError):  # what came before still counts
            httptools.HttpRequestParser(counter).feed_data(raw[:middle])
        if counter.complete >= requests:
            high = middle
        else:
            low = middle
    return high
