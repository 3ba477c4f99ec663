"""A real HTTP client (aiohttp) for the HTTP API tests: JSON in, JSON (or a problem) out."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

TIMEOUT = aiohttp.ClientTimeout(total=30)


class Answer:
    """One HTTP answer: its status, headers and body (parsed when it is JSON)."""

    def __init__(self, status: int, headers: dict[str, str], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw
        ctype = headers.get("Content-Type", "")
        self.body: Any = orjson.loads(raw) if "json" in ctype and raw else None

    @property
    def problem_code(self) -> str:
        assert self.headers.get("Content-Type", "").startswith("application/problem+json"), (
            self.status,
            self.raw[:300],
        )
        return str(self.body["code"])

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.raw[:300]!r})"


class Http:
    def __init__(self, base_url: str, tls: ssl.SSLContext | None = None) -> None:
        self.base = base_url
        connector = aiohttp.TCPConnector(ssl=tls) if tls is not None else None
        self.session = aiohttp.ClientSession(timeout=TIMEOUT, connector=connector)

    async def __aenter__(self) -> Http:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        json: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
        base: str | None = None,
    ) -> Answer:
        data = orjson.dumps(json) if json is not None else body
        async with self.session.request(
            method, (base or self.base) + path, data=data, params=params, headers=headers
        ) as response:
            raw = await response.read()
            return Answer(response.status, dict(response.headers), raw)

    async def get(self, path: str, **kwargs: Any) -> Answer:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Answer:
        return await self.request("POST", path, **kwargs)

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON body of a 2xx answer (anything else fails the test, showing the answer)."""
        answer = await self.request(method, path, **kwargs)
        assert 200 <= answer.status < 300, answer
        return answer.body


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


async def sse_events(
    response: aiohttp.ClientResponse, count: int, timeout_s: float = 30.0
) -> AsyncIterator[tuple[str | None, str, Any]]:
    """Parse ``count`` events (id, event name, JSON data) off a Server-Sent Events stream."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    fields: dict[str, str] = {}
    while seen < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {seen} of {count} events arrived in {timeout_s}s"
        line = await asyncio.wait_for(response.content.readline(), left)
        assert line, "the stream ended"
        text = line.decode().rstrip("\n")
        if text.startswith(":"):
            continue  # a comment (keepalive)
        if text:
            name, _, value = text.partition(": ")
            fields[name] = value
            continue
        if "data" in fields:
            seen += 1
            yield fields.get("id"), fields.get("event", "message"), orjson.loads(fields["data"])
        fields = {}
