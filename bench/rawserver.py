"""``python -m bench.rawserver``: the least a Python server must do, as a ceiling for the node.

Modes:
- ``echo``: writes back whatever it reads (the loopback round-trip limit, with uvloop).
- ``async``: splits frames by their length prefix, decodes each with ``cbor2.loads`` (the C
  decoder), and the Ingest's batch (a byte string since protocol 2) with a second
  ``cbor2.loads`` to count its events (no columnar conversion, no validation), appends the raw
  frames to a file per partition once per loop iteration and answers each Ingest with an
  IngestReply-shaped map after the append.
- ``sync``: the same, but the answers wait for an ``fdatasync`` covering their bytes. Each
  file's fdatasync runs in a worker thread, one at a time per file; frames arriving meanwhile
  are appended and wait for the next one (group commit, as the node does).

It answers HELLO with a real WELCOME (the load generator checks the partition count), and
everything else with an error. It binds only what ``--listen`` says (the bench passes
127.0.0.1) and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import Any

import cbor2
import uvloop

from unimeter import errors
from unimeter.wire import messages as m
from unimeter.wire.codec import ServerCodec, announced_limits

_KIND_HELLO = int(m.Kind.HELLO)
_KIND_INGEST = int(m.Kind.INGEST)


def _frame(item: object) -> bytes:
    payload = cbor2.dumps(item)
    return len(payload).to_bytes(4, "big") + payload


class Sink:
    """One partition's file, flushed once per loop iteration (like a partition's WAL)."""

    def __init__(self, path: str, *, sync: bool) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        self.sync = sync
        self.chunks: list[bytes] = []
        self.replies: list[tuple[asyncio.Transport, bytes]] = []
        self.waiting: list[tuple[asyncio.Transport, bytes]] = []
        self.syncing = False

    def flush(self) -> None:
        if self.chunks:
            os.write(self.fd, b"".join(self.chunks))
            self.chunks.clear()
        replies, self.replies = self.replies, []
        if not self.sync:
            _send(replies)
            return
        self.waiting.extend(replies)
        self._sync_next()

    def _sync_next(self) -> None:
        if self.syncing or not self.waiting:
            return
        self.syncing = True
        batch, self.waiting = self.waiting, []
        fut = asyncio.get_running_loop().run_in_executor(None, os.fdatasync, self.fd)

        def done(f: asyncio.Future[None]) -> None:
            f.result()
            self.syncing = False
            _send(batch)
            self._sync_next()

        fut.add_done_callback(done)


class Store:
    """A file per partition, as the node keeps a log per partition: fsyncs of different
    partitions overlap, and one file's fsyncs never queue behind another's."""

    def __init__(self, path: str, *, sync: bool) -> None:
        self.path = path
        self.sync = sync
        self.sinks: dict[int, Sink] = {}
        self.dirty: set[Sink] = set()
        self.index = 0

    def add(self, partition: int, transport: asyncio.Transport, frame: bytes, reply: bytes) -> None:
        sink = self.sinks.get(partition)
        if sink is None:
            sink = self.sinks[partition] = Sink(f"{self.path}.p{partition}", sync=self.sync)
        sink.chunks.append(frame)
        sink.replies.append((transport, reply))
        if not self.dirty:
            asyncio.get_running_loop().call_soon(self.flush)
        self.dirty.add(sink)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, set()
        for sink in dirty:
            sink.flush()


def _send(replies: list[tuple[asyncio.Transport, bytes]]) -> None:
    by_transport: dict[asyncio.Transport, list[bytes]] = {}
    for transport, reply in replies:
        by_transport.setdefault(transport, []).append(reply)
    for transport, data in by_transport.items():
        if not transport.is_closing():
            transport.writelines(data)


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class RawIngest(asyncio.Protocol):
    def __init__(self, store: Store, partitions: int) -> None:
        self.store = store
        self.partitions = partitions
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, end_of_data = 0, len(buf)
        store = self.store
        while end_of_data - pos >= 4:
            end = pos + 4 + int.from_bytes(buf[pos : pos + 4], "big")
            if end > end_of_data:
                break
            frame = bytes(buf[pos:end])
            kind, request_id, body = cbor2.loads(memoryview(frame)[4:])
            pos = end
            if kind == _KIND_INGEST:
                n = len(cbor2.loads(body["b"])["a"].value) // 8
                store.index += 1
                reply = _frame([0, request_id, {"ns": n, "nd": 0, "nr": 0, "li": store.index}])
                store.add(body["p"], self.transport, frame, reply)
            elif kind == _KIND_HELLO:
                welcome = m.Welcome(
                    node_id=1,
                    cluster_id="rawserver",
                    version=m.PROTOCOL_VERSION,
                    limits=announced_limits(),
                    partitions=self.partitions,
                )
                self.transport.write(
                    ServerCodec().encode_response(request_id, errors.Status.OK, welcome)
                )
            else:
                self.transport.write(
                    _frame([int(errors.Status.INVALID_REQUEST), request_id, {"msg": "ingest only"}])
                )
        if pos:
            del buf[:pos]


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if args.mode == "echo":
        server = await loop.create_server(Echo, host, int(port))
    else:
        store = Store(args.file, sync=args.mode == "sync")
        server = await loop.create_server(
            lambda: RawIngest(store, args.partitions), host, int(port)
        )
    async with server:
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.rawserver", description=__doc__)
    p.add_argument("--listen", required=True, help="HOST:PORT")
    p.add_argument("--mode", choices=["echo", "async", "sync"], required=True)
    p.add_argument("--file", required=True, help="path prefix of the per-partition files")
    p.add_argument("--partitions", type=int, default=8, help="announced in WELCOME")
    uvloop.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
