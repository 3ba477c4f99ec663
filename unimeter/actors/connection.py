"""The connection actor: one per client connection, an asyncio Protocol around ``ServerCodec``.

It decodes frames, answers the connection-level requests itself (HELLO, the partition map,
cluster status), and hands everything else to the owning actor with a non-blocking send: a full
mailbox is answered BACKPRESSURE at once, so one slow partition never stalls the connection or
the node. Replies may leave in any order; each carries its request id.

Per connection state machine (one rule table; anything else is answered INVALID_REQUEST):
    AWAIT_HELLO --HELLO--> READY        (any other request before HELLO is refused)
    READY       --HELLO--> READY        (a repeated HELLO is answered again; harmless)
A frame the codec cannot parse is a protocol error: answered once with PROTOCOL, then closed.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import TYPE_CHECKING

from unimeter import errors, limits
from unimeter.actors.alert_feed import ConnectionFeeds
from unimeter.actors.catalog import CatalogRequest
from unimeter.actors.mailbox import MailboxClosed, MailboxFull
from unimeter.actors.partition import ClientRequest
from unimeter.consensus.codec import PeerMessageError, decode_message
from unimeter.observe import RequestStats
from unimeter.peer import GOSSIP_TAG
from unimeter.wire import messages as m
from unimeter.wire.codec import BadRequest, ServerCodec

if TYPE_CHECKING:
    from unimeter.node import Node

log = logging.getLogger("unimeter.connection")

_PARTITION_KINDS = (
    m.Ingest,
    m.Query,
    m.QueryRealtime,
    m.QueryBreakdown,
    m.ListEvents,
    m.ListAlerts,
)
_CATALOG_KINDS = (m.MetricCreate, m.MetricUpdate, m.MetricGet, m.MetricList, m.MetricDelete)


class Reply:
    """The token a core carries for one request: answering it writes the response frame, and
    counts the request's latency and outcome (per request, never per event: ``observe.py``)."""

    __slots__ = ("batch", "conn", "request_id", "started", "stats")

    def __init__(
        self,
        conn: ClientConnection,
        request_id: int,
        stats: RequestStats,
        batch: m.EventBatch | None = None,
    ) -> None:
        self.conn = conn
        self.request_id = request_id
        self.stats = stats
        self.batch = batch  # an Ingest's events, to count what became of them
        self.started = perf_counter()

    def send(self, status: int, message: m.Reply) -> None:
        self.conn.respond(self.request_id, status, message)
        self.stats.done(status, perf_counter() - self.started)
        if self.batch is not None and type(message) is m.IngestReply:
            self.conn.node.stats.ingest.note(self.batch, message)


class ClientConnection(asyncio.Protocol):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.codec = ServerCodec()
        self.transport: asyncio.Transport | None = None
        self.greeted = False
        self.peer_node_id: int | None = None  # set when a cluster peer says HELLO
        self.in_flight = 0
        self.peer = "?"
        self.feeds: ConnectionFeeds | None = None  # live alert subscriptions, made on demand
        # Reply frames of this loop iteration, written together by ``flush`` (one syscall for
        # all the replies an iteration produces, instead of one each).
        self._out: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Raft messages of a peer frame that found their replica's lane full: reading this
        # peer is paused until they are all delivered (flow control, nothing dropped).
        self._peer_backlog: list[tuple[int, object, int]] = []
        self.counted = False  # counted among the node's client connections (max_connections)

    # ------------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self.peer = str(transport.get_extra_info("peername"))
        self.node.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.node.connections.discard(self)
        if self.counted:
            self.node.client_connections -= 1
            self.counted = False
        self.transport = None
        self._peer_backlog.clear()
        if self.peer_node_id is not None and self.node.serving:
            # Most often the peer's process died (the kernel closed its end at once): its
            # replicas' followers here need not wait out an election timeout to replace it.
            self.node.peer_lost(self.peer_node_id)
        if self.feeds is not None:
            self.feeds.close_all()

    def data_received(self, data: bytes) -> None:
        self.codec.feed(data)
        self._process()

    def respond(self, request_id: int, status: int, message: m.Reply) -> None:
        self.in_flight -= 1
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client went away; its request may still have been applied
        try:
            frame = self.codec.encode_response(request_id, status, message)
        except errors.ServerError as exc:  # a reply over the frame limit: say so instead
            frame = self.codec.encode_response(
                request_id, errors.Status.INTERNAL, m.ErrorReply(message=exc.message)
            )
        out = self._out
        out.append(frame)
        if len(out) == 1 and self._loop is not None:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the replies waiting since the last flush, in order (before any push)."""
        out = self._out
        if not out:
            return
        self._out = []
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if len(out) == 1:
            transport.write(out[0])
        else:
            transport.writelines(out)

    def close(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------ dispatch

    def _process(self) -> None:
        while True:
            if self._peer_backlog:
                return  # paused: the rest waits until the backlog is delivered
            try:
                frame = self.codec.next_frame()
            except errors.ProtocolError as exc:
                log.info("event=protocol_error peer=%s error=%r", self.peer, exc.message)
                if self.transport is not None:
                    self.in_flight += 1
                    self.respond(0, errors.Status.PROTOCOL, m.ErrorReply(message=exc.message))
                    self.close()
                return
            if frame is None:
                return
            self.in_flight += 1
            if isinstance(frame, m.PeerFrame):
                self.in_flight -= 1  # peer frames are never answered
                if not self._on_peer_frame(frame):
                    return
                continue
            if isinstance(frame, BadRequest):
                self._refuse(frame.request_id, errors.Status.INVALID_REQUEST, frame.message)
                continue
            self._dispatch(frame)

    def _on_peer_frame(self, frame: m.PeerFrame) -> bool:
        """Hand each Raft message to its replica; False (and close) if the frame is bad."""
        if self.peer_node_id is None:
            log.info("event=peer_frame_refused peer=%s reason=not_a_peer", self.peer)
            self.close()
            return False
        node = self.node
        each = max(1, self.codec.last_frame_bytes // max(1, len(frame.items)))
        try:
            for item in frame.items:
                if type(item) is list and len(item) == 3 and item[0] == GOSSIP_TAG:
                    node.note_gossip(item[2])
                    continue
                group, message = decode_message(item)
                self._peer_backlog.append((group, message, each))
        except (PeerMessageError, TypeError, ValueError) as exc:
            log.warning("event=peer_frame_bad peer=%s error=%r", self.peer, exc)
            self._peer_backlog.clear()
            self.close()
            return False
        self._deliver_peer_backlog()
        return True

    def _deliver_peer_backlog(self) -> None:
        """Deliver queued Raft messages in order; at a full lane, pause reading this peer and
        go on once that lane has been drained."""
        backlog = self._peer_backlog
        for delivered, (group, message, nbytes) in enumerate(backlog):
            full = self.node.deliver_peer(group, message, nbytes)
            if full is not None:
                del backlog[:delivered]
                if self.transport is not None:
                    self.transport.pause_reading()
                full.when_room(self._resume_soon)
                return
        backlog.clear()

    def _resume_soon(self) -> None:
        # Called from inside the draining actor's run(): go on in a later loop iteration.
        asyncio.get_running_loop().call_soon(self._resume_peer)

    def _resume_peer(self) -> None:
        if self.transport is None:
            return
        self._deliver_peer_backlog()
        if not self._peer_backlog:
            self.transport.resume_reading()
            self._process()  # frames that arrived with the paused one

    def _refuse(
        self, request_id: int, status: errors.Status, message: str, leader: str | None = None
    ) -> None:
        self.respond(request_id, status, m.ErrorReply(message=message, leader=leader))

    def _dispatch(self, frame: m.RequestFrame) -> None:
        msg = frame.message
        rid = frame.request_id
        node = self.node
        if isinstance(msg, m.Hello):
            if msg.version != m.PROTOCOL_VERSION:
                self._refuse(
                    rid,
                    errors.Status.INVALID_REQUEST,
                    f"protocol version {msg.version} is not spoken here; this node speaks "
                    f"version {m.PROTOCOL_VERSION} (upgrade the client)",
                )
                return
            if msg.peer_node_id is None and not self.counted:
                if node.client_connections >= node.config.max_connections:
                    self._refuse(
                        rid,
                        errors.Status.UNAVAILABLE,
                        f"this node serves at most {node.config.max_connections} client "
                        "connections (--max-connections); try another node or later",
                    )
                    log.warning("event=connection_refused peer=%s reason=max_connections",
                                self.peer)  # fmt: skip
                    self.close()
                    return
                node.client_connections += 1
                self.counted = True
            self.greeted = True
            self.peer_node_id = msg.peer_node_id
            self.respond(rid, errors.Status.OK, node.welcome())
            if msg.peer_node_id is not None:
                node.peers.peer_dialed(msg.peer_node_id)
            return
        if not self.greeted:
            self._refuse(rid, errors.Status.INVALID_REQUEST, "the first request must be HELLO")
            return
        if self.in_flight > limits.in_flight_requests_per_connection_max:
            self._refuse(
                rid,
                errors.Status.BACKPRESSURE,
                f"more than {limits.in_flight_requests_per_connection_max} requests "
                "in flight on this connection",
            )
            return
        if isinstance(msg, m.GetPartitionMap):  # answered while starting too: no state needed
            self.respond(rid, errors.Status.OK, node.partition_map())
            return
        if not node.serving:
            self._refuse(rid, errors.Status.UNAVAILABLE, "the node is starting or stopping")
            return
        if isinstance(msg, _PARTITION_KINDS):
            self._to_partition(rid, msg)
        elif isinstance(msg, _CATALOG_KINDS):
            reply = Reply(self, rid, node.stats.binary(msg))
            self._send(
                node.catalog_mailbox, CatalogRequest(reply, msg), self.codec.last_frame_bytes
            )
        elif isinstance(msg, m.ClusterStatus):
            self.respond(rid, errors.Status.OK, node.cluster_status())
        elif isinstance(msg, m.SubscribeAlerts):
            self._alert_feeds().subscribe(rid, msg)
        elif isinstance(msg, m.UnsubscribeAlerts):
            self._alert_feeds().unsubscribe(rid, msg)
        else:  # pragma: no cover - the codec only yields known kinds
            self._refuse(rid, errors.Status.INVALID_REQUEST, f"unexpected request {msg!r}")

    def _alert_feeds(self) -> ConnectionFeeds:
        if self.feeds is None:
            self.feeds = ConnectionFeeds(self)
        return self.feeds

    def _to_partition(
        self,
        rid: int,
        msg: m.Ingest | m.Query | m.QueryRealtime | m.QueryBreakdown | m.ListEvents | m.ListAlerts,
    ) -> None:
        node = self.node
        part = msg.partition
        if not 0 <= part < node.partition_count:
            self._refuse(
                rid,
                errors.Status.INVALID_REQUEST,
                f"partition {part} does not exist (this cluster has {node.partition_count})",
            )
            return
        runtime = node.partitions.get(part)
        if runtime is None:
            leader = node.leader_of(part)
            self._refuse(
                rid,
                errors.Status.NOT_LEADER,
                f"node {node.node_id} holds no replica of partition {part}",
                leader=node.addresses.get(leader) if leader is not None else None,
            )
            return
        if isinstance(msg, m.Ingest):
            problem = node.check_ingest(msg)
            if problem is not None:
                status, text = problem
                self._refuse(rid, status, text)
                return
        elif node.route(msg.account_id) != part:
            self._refuse(
                rid,
                errors.Status.INVALID_REQUEST,
                f"account {msg.account_id} lives in partition "
                f"{node.route(msg.account_id)}, not {part}",
            )
            return
        batch = msg.batch if isinstance(msg, m.Ingest) else None
        reply = Reply(self, rid, node.stats.binary(msg), batch)
        request = ClientRequest(reply, msg)
        if batch is None and runtime.tracer is None:
            # A read that needs no waiting is answered here, in this callback: the partition's
            # state is this thread's, and the mailbox hop would only add a task switch. (With
            # --trace every request goes through the mailbox, so the trace shows it.)
            answer = runtime.core.read_now(request, runtime.now())
            if answer is not None:
                reply.send(answer.status, answer.message)
                return
        self._send(runtime.mailbox, request, self.codec.last_frame_bytes)

    def _send(self, mailbox: object, item: ClientRequest | CatalogRequest, nbytes: int) -> None:
        # Refusals go through the request's token, so they are counted like any answer.
        reply: Reply = item.token  # type: ignore[assignment]
        try:
            mailbox.try_send(item, nbytes)  # type: ignore[attr-defined]
        except MailboxFull:
            reply.send(
                errors.Status.BACKPRESSURE, m.ErrorReply(message="the node is busy; retry shortly")
            )
        except MailboxClosed:
            reply.send(errors.Status.UNAVAILABLE, m.ErrorReply(message="the node is stopping"))
