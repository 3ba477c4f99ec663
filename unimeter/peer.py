"""The replication actor: one outbound link per peer node, carrying every group's Raft messages.

Each node dials each peer on the peer's client port, says HELLO with its own ``peer_node_id``,
and from then on sends one-way PEER frames; the peer's connection actor hands each message to
the partition (or catalog) mailbox it is for. So between two nodes there are two connections,
one per direction, and no message is ever answered on the link itself (Raft messages carry their
own responses).

Coalescing: every message queued in one loop iteration, for any partition, leaves in one frame
(flushed by ``call_soon``), so heartbeats and appends of many groups share a syscall. The queue
is bounded: while a peer is unreachable its messages are dropped, which Raft tolerates (it
retransmits), and the link redials with capped exponential backoff -- cut short the moment the
peer dials us (a restarted node is back), so it rejoins its groups within a round trip.

Besides Raft messages a link carries a leadership announcement (``GOSSIP_TAG``) every
``gossip_interval_s``: which partitions this node leads, so every node can answer the partition
map for partitions it does not host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

import cbor2

from unimeter import errors, limits
from unimeter.actors.effects import Send
from unimeter.consensus.codec import encode_message
from unimeter.errors import AuthError
from unimeter.security.cluster_secret import MemberGreeting
from unimeter.security.tls import server_hostname
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec

log = logging.getLogger("unimeter.peer")

GOSSIP_TAG = 0
gossip_interval_s = 0.25
link_buffer_bytes_max = 32 << 20  # queued while connected but not yet flushed
frame_items_bytes_max = limits.frame_bytes_max // 2
redial_backoff_s_max = 1.0
refusal_log_interval_s = 60.0  # a peer refused again and again is logged this often


def _array_header(n: int) -> bytes:
    if n < 24:
        return bytes([0x80 | n])
    if n < 256:
        return bytes([0x98, n])
    if n < 65536:
        return b"\x99" + n.to_bytes(2, "big")
    return b"\x9a" + n.to_bytes(4, "big")


def peer_frame(items: list[bytes]) -> bytes:
    """``[PEER, 0, [items...]]`` framed, from items already CBOR-encoded (no re-encoding)."""
    body = b"\x83" + bytes([int(m.Kind.PEER)]) + b"\x00" + _array_header(len(items))
    payload = body + b"".join(items)
    return len(payload).to_bytes(4, "big") + payload


class PeerLink:
    def __init__(
        self,
        node_id: int,
        peer_id: int,
        address: str,
        *,
        secret: bytes | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.node_id = node_id
        self.peer_id = peer_id
        self.address = address
        self.secret = secret  # the cluster secret this link proves (security/cluster_secret.py)
        self.tls = tls
        self.refused = 0  # handshakes that failed the cluster secret or TLS, either way
        self._last_refusal: tuple[str, float] | None = None  # what was last logged, and when
        self._items: list[bytes] = []
        self._bytes = 0
        self._flush_scheduled = False
        self._writer: asyncio.StreamWriter | None = None
        self.sent_frames = 0
        self.dropped = 0
        self.connected = False
        self._poked: asyncio.Event | None = None

    def poke(self) -> None:
        """The peer just dialed us, so it is up: redial now instead of after the backoff."""
        if self._poked is not None:
            self._poked.set()

    async def _pause(self, seconds: float) -> None:
        if self._poked is None:
            self._poked = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._poked.wait(), seconds)
        self._poked.clear()

    def send(self, group: int, message: Any) -> None:
        self.enqueue(cbor2.dumps(encode_message(group, message)))

    def enqueue(self, item: bytes) -> None:
        if self._writer is None or self._bytes > link_buffer_bytes_max:
            self.dropped += 1
            return
        self._items.append(item)
        self._bytes += len(item)
        if self._bytes >= frame_items_bytes_max:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._items:
            return
        items, self._items, self._bytes = self._items, [], 0
        writer = self._writer
        if writer is None or writer.is_closing():
            self.dropped += len(items)
            return
        writer.write(peer_frame(items))
        self.sent_frames += 1

    async def run(self) -> None:
        """Keep a connection to the peer open for as long as the node runs."""
        backoff = 0.05
        host, _, port = self.address.rpartition(":")
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        host, int(port), ssl=self.tls,
                        server_hostname=server_hostname(host) if self.tls else None,
                    ),
                    timeout=2.0,
                )  # fmt: skip
            except ssl.SSLError as exc:  # before OSError: it is one
                self._refused(f"TLS handshake failed: {exc}")
                await self._pause(redial_backoff_s_max * random.uniform(0.5, 1.0))
                continue
            except (OSError, TimeoutError):
                await self._pause(backoff * random.uniform(0.5, 1.0))
                backoff = 0.05 if self._poked is not None and self._poked.is_set() else backoff
                backoff = min(backoff * 2, redial_backoff_s_max)
                continue
            try:
                await self._greet(reader, writer)
                backoff = 0.05
                self._writer = writer
                self.connected = True
                log.info("event=peer_connected peer=%d address=%s", self.peer_id, self.address)
                # Nothing is expected back; reading only notices the close.
                while await reader.read(65536):
                    pass
            except AuthError as exc:
                self._refused(exc.message)
                backoff = redial_backoff_s_max  # a wrong secret is not fixed by redialling fast
            except (OSError, TimeoutError, ConnectionError) as exc:
                log.info("event=peer_link_error peer=%d error=%r", self.peer_id, exc)
            finally:
                if self.connected:
                    log.info("event=peer_disconnected peer=%d", self.peer_id)
                self.connected = False
                self._writer = None
                self._items, self._bytes = [], 0
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            await self._pause(backoff * random.uniform(0.5, 1.0))

    def _refused(self, reason: str) -> None:
        """Count a refused handshake; log it at ERROR when it is new or once a minute (a
        wrong secret is retried every second, and must not flood the log)."""
        self.refused += 1
        now = time.monotonic()
        last = self._last_refusal
        fresh = last is None or last[0] != reason or now - last[1] >= refusal_log_interval_s
        if fresh:
            self._last_refusal = (reason, now)
        log.log(logging.ERROR if fresh else logging.DEBUG,
                "event=peer_refused peer=%d address=%s refused=%d error=%r",
                self.peer_id, self.address, self.refused, reason)  # fmt: skip

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HELLO, and with a cluster secret the challenge round (cluster_secret.py): no Raft
        message leaves before the peer proved the secret, nor is accepted before we did."""
        codec = ClientCodec()
        greeting = MemberGreeting(
            self.secret, self.node_id, link=True, client_name=f"node-{self.node_id}",
            expect_node=self.peer_id,
        )  # fmt: skip
        hello: m.Hello | None = greeting.first()
        request_id = 0
        while hello is not None:
            request_id += 1
            writer.write(codec.encode_request(request_id, hello))
            welcome = await self._welcome(reader, codec)
            hello = greeting.second(welcome) if request_id == 1 else None

    async def _welcome(self, reader: asyncio.StreamReader, codec: ClientCodec) -> m.Welcome:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout=5.0)
            if not data:
                raise ConnectionError("closed during HELLO")
            codec.feed(data)
            frame = codec.next_frame()
            if frame is None:
                continue
            text = getattr(frame.message, "message", "")
            if frame.status == errors.Status.AUTH:
                raise AuthError(f"refused by the peer: {text}")
            if frame.status != 0 or not isinstance(frame.message, m.Welcome):
                raise ConnectionError(f"HELLO refused: {text}")
            return frame.message


class PeerLinks:
    """Every outbound link of this node, and the gossip of who leads what."""

    def __init__(
        self,
        node_id: int,
        peers: dict[int, str],
        *,
        secret: bytes | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.node_id = node_id
        self.links = {
            pid: PeerLink(node_id, pid, addr, secret=secret, tls=tls) for pid, addr in peers.items()
        }
        self._tasks: list[asyncio.Task[None]] = []

    def send(self, send: Send) -> None:
        link = self.links.get(send.dst)
        if link is not None:
            link.send(send.group, send.message)

    def peer_dialed(self, peer_id: int) -> None:
        """A peer said HELLO on its link to us: ours to it may be waiting to redial."""
        link = self.links.get(peer_id)
        if link is not None and not link.connected:
            link.poke()

    def start(
        self,
        leadership: Callable[[], list[list[int]]],
        watch: Callable[[asyncio.Task[None]], object] = lambda task: task,
    ) -> None:
        """Start every link and the gossip; ``watch`` supervises each task (a crash of one
        stops the node: unimeter/supervisor.py)."""
        for link in self.links.values():
            self._tasks.append(asyncio.create_task(link.run(), name=f"peer-{link.peer_id}"))
        if self.links:
            self._tasks.append(asyncio.create_task(self._gossip(leadership), name="gossip"))
        for task in self._tasks:
            watch(task)

    async def _gossip(self, leadership: Callable[[], list[list[int]]]) -> None:
        while True:
            item = cbor2.dumps([GOSSIP_TAG, self.node_id, leadership()])
            for link in self.links.values():
                link.enqueue(item)
            await asyncio.sleep(gossip_interval_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
