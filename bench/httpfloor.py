"""``python -m bench.httpfloor --listen HOST:PORT``: the least an aiohttp request costs.

One route answering a fixed 200-byte JSON body, on uvloop, as the node's HTTP server is set up
(no access log). ``GET /v1/usage``'s round trip is this floor plus the node's own work: routing,
parameters, the query, the JSON answer.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web

_BODY = b'{"account_id":1,"metric_code":"bench.m0","value":' + b'{"sum":1}' + b" " * 130 + b"}"


async def _answer(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type="application/json")


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_get("/v1/usage", _answer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    await asyncio.Event().wait()  # until killed by its PID


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.httpfloor")
    p.add_argument("--listen", required=True, help="HOST:PORT")
    host, _, port = p.parse_args().listen.rpartition(":")
    uvloop.run(serve(host, int(port)))


if __name__ == "__main__":
    main()
