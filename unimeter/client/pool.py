"""One persistent connection per node address, dialled on first use and again after it breaks.

A dial runs in a task the pool owns, not in the caller's task: several callers wanting the same
node share one dial, and a caller whose deadline passes (or who is cancelled) stops waiting
without aborting the dial for the others. ``close`` cancels the dials and closes every socket.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from unimeter.errors import ClosedError, UnavailableError, UnimeterError
from unimeter.wire.messages import Hello, Welcome

from .connection import Connection, Greeting

log = logging.getLogger("unimeter.client")


class NodePool:
    def __init__(
        self,
        hello: Hello | Callable[[], Greeting],
        *,
        dial_timeout_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._hello = hello  # or a maker of a fresh two-round greeting per dial
        self._tls = tls
        self._dial_timeout_s = dial_timeout_s
        self._connections: dict[str, Connection] = {}
        self._dials: dict[str, asyncio.Task[Connection]] = {}
        self._closed = False

    def ready(self, address: str) -> Connection | None:
        """The connection to ``address`` if it is open and usable now (no dial, no wait)."""
        connection = self._connections.get(address)
        return connection if connection is not None and connection.usable else None

    async def get(self, address: str, deadline: float) -> Connection:
        connection = self._connections.get(address)
        if connection is not None and connection.usable:
            return connection
        if self._closed:
            raise ClosedError("the client is closed")
        dial = self._dials.get(address)
        if dial is None:
            dial = self._start_dial(address)
        # asyncio.wait, not shield: neither our cancellation nor the dial's reaches the other.
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        done, _ = await asyncio.wait({dial}, timeout=timeout)
        if not done:
            raise UnavailableError(f"connecting to {address} timed out")
        if dial.cancelled():
            raise ClosedError("the client is closed")
        return dial.result()

    def warm(self, addresses: list[str]) -> None:
        """Start dialling every address not connected yet; failures surface on first use."""
        for address in addresses:
            connection = self._connections.get(address)
            if (connection is None or not connection.usable) and address not in self._dials:
                self._start_dial(address)

    def alias(self, address: str, connection: Connection) -> None:
        """``connection`` also serves ``address`` (a seed is a node known by another name)."""
        current = self._connections.get(address)
        if current is None or not current.usable:
            self._connections[address] = connection

    def welcome_of(self, address: str) -> Welcome | None:
        connection = self._connections.get(address)
        return connection.welcome if connection is not None else None

    def connected(self) -> list[str]:
        return [address for address, c in self._connections.items() if c.usable]

    async def close(self, *, final: bool = True) -> None:
        """Cancel the dials and close every connection; a non-final close (after a failed
        connect) leaves the pool usable."""
        self._closed = self._closed or final
        dials = list(self._dials.values())
        for dial in dials:
            dial.cancel()
        await asyncio.gather(*dials, return_exceptions=True)
        connections = {id(c): c for c in self._connections.values()}
        self._connections.clear()
        await asyncio.gather(*(c.close() for c in connections.values()))

    def _start_dial(self, address: str) -> asyncio.Task[Connection]:
        dial = asyncio.get_running_loop().create_task(
            self._dial(address), name=f"unimeter-dial-{address}"
        )
        self._dials[address] = dial
        dial.add_done_callback(self._dial_done)
        return dial

    def _dial_done(self, dial: asyncio.Task[Connection]) -> None:
        # Read the outcome so an unobserved failure (a warm-up dial, a caller that gave up)
        # is not reported as "exception never retrieved".
        if not dial.cancelled() and (exc := dial.exception()) is not None:
            log.debug("dial failed: %s", exc)

    async def _dial(self, address: str) -> Connection:
        try:
            connection = Connection(address, self._tls)
            deadline = asyncio.get_running_loop().time() + self._dial_timeout_s
            hello = self._hello
            await connection.open(hello if isinstance(hello, Hello) else hello(), deadline)
            if self._closed:
                await connection.close()
                raise ClosedError("the client is closed")
            self._connections[address] = connection
            return connection
        except UnimeterError as exc:
            log.info("cannot reach %s: %s", address, exc)
            raise
        finally:
            self._dials.pop(address, None)
