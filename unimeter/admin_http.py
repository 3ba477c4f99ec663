"""The node's admin endpoint (``--http HOST:PORT``): ``/health`` and ``/metrics``.

A deliberately tiny HTTP/1.1 responder: GET only, one request per connection, bounded request
size. ``/health`` answers 200 ``ok`` while the node serves and 503 otherwise; ``/metrics``
answers the Prometheus text format (version 0.0.4).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unimeter.node import Node

_REQUEST_BYTES_MAX = 8192


def render_metrics(node: Node) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP unimeter_{name} {help_text}")
        lines.append(f"# TYPE unimeter_{name} {kind}")
        for labels, value in samples:
            lines.append(f"unimeter_{name}{labels} {value}")

    parts = sorted(node.partitions.items())
    metric("up", "gauge", "1 while the node serves requests.", [("", float(node.serving))])
    metric("connections", "gauge", "Open client connections.", [("", float(len(node.connections)))])
    metric(
        "disk_ok",
        "gauge",
        "1 while free disk space is above the reserve.",
        [("", float(node.disk_ok))],
    )
    metric(
        "partition_applied_index",
        "gauge",
        "Last log index applied per partition.",
        [(f'{{partition="{p}"}}', float(r.core.state.applied_index)) for p, r in parts],
    )
    metric(
        "partition_steps_total",
        "counter",
        "Messages stepped by each partition core.",
        [(f'{{partition="{p}"}}', float(r.steps)) for p, r in parts],
    )
    metric(
        "partition_fsyncs_total",
        "counter",
        "fsyncs of each partition's log.",
        [(f'{{partition="{p}"}}', float(r.fsyncs)) for p, r in parts],
    )
    metric(
        "mailbox_depth",
        "gauge",
        "Messages waiting in each partition mailbox.",
        [(f'{{partition="{p}"}}', float(r.mailbox.stats().depth)) for p, r in parts],
    )
    metric(
        "mailbox_peak",
        "gauge",
        "Deepest each partition mailbox has been.",
        [(f'{{partition="{p}"}}', float(r.mailbox.stats().peak)) for p, r in parts],
    )
    metric(
        "mailbox_rejected_total",
        "counter",
        "Sends refused with BACKPRESSURE (full).",
        [(f'{{partition="{p}"}}', float(r.mailbox.stats().rejected)) for p, r in parts],
    )
    return "\n".join(lines) + "\n"


class AdminServer:
    def __init__(self, node: Node) -> None:
        self.node = node

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
        ):
            writer.close()
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        status, body, ctype = "404 Not Found", "not found\n", "text/plain"
        if len(parts) < 2 or parts[0] != "GET":
            status, body = "405 Method Not Allowed", "GET only\n"
        elif parts[1] == "/health":
            if self.node.serving:
                status, body = "200 OK", "ok\n"
            else:
                status, body = "503 Service Unavailable", "starting or stopping\n"
        elif parts[1] == "/metrics":
            status, body = "200 OK", render_metrics(self.node)
            ctype = "text/plain; version=0.0.4"
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + data
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(
            self.handle, host, port, limit=_REQUEST_BYTES_MAX, reuse_address=True
        )
