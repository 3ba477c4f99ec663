"""One pipelined connection to one node, and the pool that keeps one per node address.

Theory of operation. ``Connection`` is an ``asyncio.Protocol`` around the sans-I/O
``ClientCodec``: ``request`` encodes a whole frame and hands it to the transport (whole frames
only, so they never interleave), parks a future under the request id and awaits it;
``data_received`` feeds the codec and resolves the futures of whatever frames completed, in
whatever order they arrive. There is no reader task: the transport calls us. ``start`` is the
same without the waiting: it queues the frame for the next ``flush`` (several requests, one
system call) and returns an ``Exchange`` to await later. One timer per connection keeps every
request's deadline (``deadlines.py``); a request past it gets ``TimeoutError``.

Live alert subscriptions (``alerts.py``) share the connection: ``open_stream`` registers a
``PushSink`` under a fresh subscription id, pushes for that id are handed to it as they are
decoded (in frame order, interleaved with replies), and a broken or closed connection tells
every sink with ``lost``.

States: CONNECTING -> READY (WELCOME received) -> BROKEN (peer or garbage) | CLOSED (we closed).
A BROKEN or CLOSED connection fails every pending future and refuses new requests; the pool
dials a fresh one on next use. A broken connection fails its requests with the retriable
``UnavailableError`` (their outcome is unknown, and retrying is safe); garbage from the server
fails them with ``ProtocolError``; closing the client fails them with ``ClosedError``.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import logging
import ssl
from collections.abc import Coroutine
from typing import Any, Protocol, cast

from unimeter import limits
from unimeter.errors import (
    AuthError,
    ClosedError,
    InvalidRequestError,
    ProtocolError,
    Status,
    TimeoutError,
    UnavailableError,
    UnimeterError,
    error_for,
)
from unimeter.security.tls import server_hostname
from unimeter.wire.codec import ClientCodec
from unimeter.wire.messages import (
    PROTOCOL_VERSION,
    ErrorReply,
    Hello,
    Push,
    PushFrame,
    Reply,
    Request,
    ResponseFrame,
    Welcome,
)

from .cluster_map import split_address
from .deadlines import Deadlines

log = logging.getLogger("unimeter.client")

_REQUEST_ID_MAX = 2**64 - 1  # never reached: ids are not reused while the codec remembers them
_CLOSE_WAIT_S = 1.0


class PushSink(Protocol):
    """Where the pushes of one live subscription go (called from ``data_received``)."""

    def push(self, message: Push) -> None: ...

    def lost(self, failure: UnimeterError) -> None: ...


class Greeting(Protocol):
    """A HELLO in two rounds (a cluster node's own client proving the cluster secret:
    ``unimeter/security/cluster_secret.py``): ``second`` checks the first WELCOME and gives
    the HELLO that completes the greeting, or None when the first one was enough."""

    def first(self) -> Hello: ...

    def second(self, welcome: Welcome) -> Hello | None: ...


class _State(enum.Enum):
    CONNECTING = "connecting"
    READY = "ready"
    BROKEN = "broken"
    CLOSED = "closed"


class Connection(asyncio.Protocol):
    def __init__(self, address: str, tls: ssl.SSLContext | None = None) -> None:
        self.address = address
        self._tls = tls
        self.welcome: Welcome | None = None
        self._state = _State.CONNECTING
        self._failure: UnimeterError | None = None  # why BROKEN/CLOSED (a template, not raised)
        self._codec = ClientCodec()
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[ResponseFrame | None]] = {}
        loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(loop, self._pending)
        self._outbox: list[bytes] = []  # frames of started requests not written yet
        self._next_id = 0
        self._in_flight_max = limits.in_flight_requests_per_connection_max
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._lost: asyncio.Future[None] = loop.create_future()
        self._sinks: dict[int, PushSink] = {}
        self._next_sid = 0

    @property
    def usable(self) -> bool:
        return self._state is _State.READY

    # ------------------------------------------------------------------ lifecycle

    async def open(self, hello: Hello | Greeting, deadline: float) -> Welcome:
        """Dial (with TLS if the connection has a context), say HELLO, and wait for WELCOME;
        raises a typed error on any failure (``AuthError`` for a refused token or a server
        certificate that does not verify: trying again would not help)."""
        assert self._state is _State.CONNECTING
        loop = asyncio.get_running_loop()
        try:
            host, port = split_address(self.address)
        except ValueError as exc:  # a leader address from the server that is not one
            raise UnavailableError(str(exc)) from None
        try:
            async with asyncio.timeout_at(deadline):
                if self._tls is None:
                    await loop.create_connection(lambda: self, host, port)
                else:
                    await loop.create_connection(
                        lambda: self, host, port, ssl=self._tls,
                        server_hostname=server_hostname(host),
                    )  # fmt: skip
        except builtins.TimeoutError:  # before OSError: it is one
            self._abort()
            raise UnavailableError(f"connecting to {self.address} timed out") from None
        except ssl.SSLCertVerificationError as exc:
            raise AuthError(f"the certificate of {self.address} does not verify: {exc}") from None
        except OSError as exc:
            raise UnavailableError(f"cannot connect to {self.address}: {exc}") from None
        except BaseException:
            self._abort()
            raise
        try:
            if isinstance(hello, Hello):
                welcome = _expect_welcome(await self._exchange(hello, deadline), self.address)
            else:
                welcome = _expect_welcome(
                    await self._exchange(hello.first(), deadline), self.address
                )
                proving = hello.second(welcome)
                if proving is not None:
                    welcome = _expect_welcome(await self._exchange(proving, deadline), self.address)
        except BaseException:
            self._abort()
            raise
        self.welcome = welcome
        if self._state is _State.CONNECTING:
            self._state = _State.READY
            self._in_flight_max = min(
                self._in_flight_max,
                welcome.limits.get("in_flight_requests_per_connection_max", self._in_flight_max),
            )
        return welcome

    async def close(self) -> None:
        """Fail what is pending with ``ClosedError`` and close the socket."""
        if self._state in (_State.READY, _State.CONNECTING):
            self._fail(_State.CLOSED, ClosedError(f"connection to {self.address} closed"))
        if self._transport is not None:
            self._transport.close()
            # Wait for the transport to let go of the socket, so no unclosed socket outlives
            # the client (a ResourceWarning where warnings are errors).
            try:
                async with asyncio.timeout(_CLOSE_WAIT_S):
                    await asyncio.shield(self._lost)
            except builtins.TimeoutError:
                self._transport.abort()

    def _abort(self) -> None:
        if self._state in (_State.READY, _State.CONNECTING):
            self._fail(_State.CLOSED, ClosedError(f"connection to {self.address} abandoned"))
        if self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------------ requests

    async def request(self, message: Request, deadline: float) -> Reply:
        """Send ``message`` and return its reply; a non-OK status raises its error class."""
        if self._state is not _State.READY:
            raise self._refusal()
        if len(self._pending) >= self._in_flight_max:
            await self._wait_for_slot(deadline)
        return await self._answer(self._send(message, deadline))

    def start(self, message: Request, deadline: float) -> Exchange | None:
        """Send ``message`` without waiting for anything: its frame is written by the next
        ``flush`` (so several requests share one system call). None when it cannot be sent at
        once (not ready, no free slot, writes paused: ``request`` waits for those). Raises the
        typed error of a message that cannot be encoded or of a transport closing."""
        if (
            self._state is not _State.READY
            or len(self._pending) >= self._in_flight_max
            or self._write_paused
        ):
            return None
        return self._send(message, deadline, flush=False)

    def flush(self) -> None:
        """Write the frames of the requests started since the last flush."""
        if self._outbox:
            frames, self._outbox = self._outbox, []
            assert self._transport is not None
            self._transport.writelines(frames)

    async def _exchange(self, message: Request, deadline: float) -> Reply:
        await self._wait_for_slot(deadline)
        return await self._answer(self._send(message, deadline))

    async def _wait_for_slot(self, deadline: float) -> None:
        while len(self._pending) >= self._in_flight_max:
            await self._wait(self._slot_waiters, deadline)
            if self._state not in (_State.READY, _State.CONNECTING):
                raise self._refusal()

    async def _answer(self, exchange: Exchange) -> Reply:
        """The reply to ``exchange``; a non-OK status raises its error class, the deadline
        ``TimeoutError``."""
        try:
            if self._write_paused:
                await self._wait(self._drain_waiters, exchange.deadline)
            response = await exchange.future
        finally:
            self._settle(exchange)
        if response is None:
            raise TimeoutError(
                f"{type(exchange.message).__name__} to {self.address} got no answer in time"
            )
        if response.status != Status.OK:
            message = response.message
            if isinstance(message, ErrorReply):
                raise error_for(response.status, message.message, message.leader)
            raise error_for(response.status, f"status {response.status} without an error body")
        return response.message

    def _send(self, message: Request, deadline: float, *, flush: bool = True) -> Exchange:
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            # The peer is gone and connection_lost has not run yet: a write now would vanish.
            raise UnavailableError(f"connection to {self.address} is closing")
        request_id = self._new_request_id()
        try:
            frame = self._codec.encode_request(request_id, message)
        except UnimeterError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidRequestError(f"cannot encode {type(message).__name__}: {exc}") from None
        # None as the result means the deadline passed (``Deadlines``).
        future: asyncio.Future[ResponseFrame | None] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._deadlines.add(deadline, request_id)
        self._outbox.append(frame)
        exchange = Exchange(self, message, request_id, deadline, future)
        if flush:
            try:
                self.flush()
            except BaseException:
                self._settle(exchange)
                raise
        return exchange

    def _settle(self, exchange: Exchange) -> None:
        """The exchange is over (answered, failed, timed out or abandoned)."""
        if self._pending.pop(exchange.request_id, None) is not None:
            # We gave up (deadline or cancellation): the codec must not keep its kind.
            self._codec.forget(exchange.request_id)
            self._release_slot()

    # ------------------------------------------------------------------ subscriptions

    def open_stream(self, sink: PushSink) -> int:
        """A fresh subscription id whose pushes go to ``sink`` until ``close_stream``."""
        if self._state is not _State.READY:
            raise self._refusal()
        self._next_sid += 1
        self._sinks[self._next_sid] = sink
        return self._next_sid

    def close_stream(self, subscription_id: int) -> None:
        """Late pushes for the id are dropped from now on."""
        self._sinks.pop(subscription_id, None)

    def _new_request_id(self) -> int:
        while True:
            self._next_id = self._next_id + 1 if self._next_id < _REQUEST_ID_MAX else 1
            if self._next_id not in self._pending:
                return self._next_id

    async def _wait(self, waiters: list[asyncio.Future[None]], deadline: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except builtins.TimeoutError:
            raise TimeoutError(f"connection to {self.address} is congested") from None
        finally:
            if not waiter.done():
                waiters.remove(waiter)

    def _release_slot(self) -> None:
        if self._slot_waiters:
            _wake_all(self._slot_waiters)

    def _refusal(self) -> UnimeterError:
        failure = self._failure
        if failure is None:
            return UnavailableError(f"connection to {self.address} is not ready")
        return type(failure)(failure.message)

    # ------------------------------------------------------------------ protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._dispatch(data)

    def eof_received(self) -> bool | None:
        return None  # half-closed is useless to us: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state in (_State.READY, _State.CONNECTING):
            reason = f": {exc}" if exc is not None else " (closed by the server)"
            if self._state is _State.CONNECTING and self._tls is None and exc is None:
                # What a node serving TLS does to a plain HELLO (it is not a TLS handshake).
                reason += "; if the node serves TLS, connect with tls= (CLI: --tls-ca)"
            self._fail(_State.BROKEN, UnavailableError(f"lost {self.address}{reason}"))
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake_all(self._drain_waiters)

    # ------------------------------------------------------------------ internals

    def _dispatch(self, data: bytes) -> None:
        if self._state not in (_State.READY, _State.CONNECTING):
            return  # closing: nobody is waiting any more
        try:
            self._codec.feed(data)
        except ProtocolError as exc:
            self._garbage(exc)
            return
        while True:
            try:
                frame = self._codec.next_event()
            except ProtocolError as exc:
                self._garbage(exc)
                return
            if frame is None:
                return
            if isinstance(frame, PushFrame):
                sink = self._sinks.get(frame.subscription_id)
                if sink is not None:  # else: a late push for a stream we closed
                    sink.push(frame.message)
                continue
            future = self._pending.pop(frame.request_id, None)
            if future is None:
                continue  # an answer to a request we gave up on
            self._release_slot()
            if not future.done():
                future.set_result(frame)

    def _garbage(self, exc: ProtocolError) -> None:
        log.warning("closing %s: %s", self.address, exc)
        self._fail(_State.BROKEN, ProtocolError(f"from {self.address}: {exc.message}"))
        assert self._transport is not None
        self._transport.abort()

    def _fail(self, state: _State, failure: UnimeterError) -> None:
        assert self._state in (_State.READY, _State.CONNECTING)
        self._state = state
        self._failure = failure
        # Cleared in place: ``Deadlines`` holds the same dict.
        pending = list(self._pending.values())
        self._pending.clear()
        self._deadlines.close()
        self._outbox.clear()  # never written: their futures fail below
        for future in pending:
            if not future.done():
                # A fresh instance per waiter: one exception object raised in several tasks
                # would collect all their tracebacks.
                future.set_exception(type(failure)(failure.message))
        _wake_all(self._slot_waiters)
        _wake_all(self._drain_waiters)
        sinks, self._sinks = self._sinks, {}
        for sink in sinks.values():
            sink.lost(type(failure)(failure.message))


class Exchange:
    """One request written to a connection: ``reply`` awaits its answer, ``abandon`` gives up
    on it without waiting (a reply that comes later is dropped)."""

    __slots__ = ("connection", "deadline", "future", "message", "request_id")

    def __init__(
        self,
        connection: Connection,
        message: Request,
        request_id: int,
        deadline: float,
        future: asyncio.Future[ResponseFrame | None],
    ) -> None:
        self.connection = connection
        self.message = message
        self.request_id = request_id
        self.deadline = deadline
        self.future = future

    def reply(self) -> Coroutine[Any, Any, Reply]:
        """The reply; a non-OK status raises its error class, the deadline ``TimeoutError``."""
        return self.connection._answer(self)  # no coroutine of its own: one level less

    def flush(self) -> None:
        """Write this request's frame if it is still waiting (with any others waiting)."""
        self.connection.flush()

    def abandon(self) -> None:
        self.future.cancel()
        self.connection._settle(self)


def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
    woken, waiters[:] = list(waiters), []
    for waiter in woken:
        if not waiter.done():
            waiter.set_result(None)


def _expect_welcome(reply: Reply, address: str) -> Welcome:
    if not isinstance(reply, Welcome):
        raise ProtocolError(f"{address} answered HELLO with {type(reply).__name__}")
    if reply.version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{address} speaks protocol version {reply.version}; this client speaks "
            f"{PROTOCOL_VERSION}"
        )
    return reply
