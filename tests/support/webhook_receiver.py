"""A real webhook receiver for the tests: an aiohttp server on 127.0.0.1 that records every
POST, and can be down (not listening: connections refused), failing (503) or accepting."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
from aiohttp import web

from tests.support.nodeproc import free_port
from unimeter.webhooks.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify


@dataclass(frozen=True)
class Received:
    key: str
    body: bytes
    signed: bool  # the signature verified under the test's secret
    accepted: bool  # answered 2xx
    at: float


class Receiver:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.port = free_port()
        self.failing = False
        self.requests: list[Received] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/usage"

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/usage", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        key = request.headers.get(IDEMPOTENCY_HEADER, "")
        signed = verify(self.secret, body, request.headers.get(SIGNATURE_HEADER))
        accepted = not self.failing and signed
        self.requests.append(Received(key, body, signed, accepted, time.monotonic()))
        if not accepted:
            return web.Response(status=503 if signed else 401)
        return web.json_response({"ok": True})

    def accepted_keys(self) -> set[str]:
        return {r.key for r in self.requests if r.accepted}

    def bodies(self) -> dict[str, set[bytes]]:
        out: dict[str, set[bytes]] = {}
        for r in self.requests:
            out.setdefault(r.key, set()).add(r.body)
        return out

    async def wait_for(self, keys: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not keys <= self.accepted_keys():
            missing = sorted(keys - self.accepted_keys())
            assert time.monotonic() < deadline, f"not delivered in {timeout_s}s: {missing[:10]}"
            await asyncio.sleep(0.05)

    def check(self, expected: set[str]) -> None:
        """Every delivery signed; exactly the expected keys accepted; every repeat of a key
        carried the same bytes (a duplicate is only ever the same alert again)."""
        assert all(r.signed for r in self.requests)
        assert self.accepted_keys() == expected
        for key, bodies in self.bodies().items():
            assert len(bodies) == 1, (key, bodies)
            assert orjson.loads(next(iter(bodies)))["idempotency_key"] == key
