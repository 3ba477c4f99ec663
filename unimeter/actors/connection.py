"""The connection actor: a pure core (``ConnectionCore``) and its asyncio Protocol.

Theory of operation. ``ConnectionCore`` is sans-I/O: bytes in (``receive``), reply frames out
(``take_output``; ``wake`` tells the runtime the first one of a batch is waiting). It holds the
codec, the HELLO gate, the in-flight limit and the dispatch: it answers the connection-level
requests itself (HELLO, the partition map, cluster status) and hands everything else to the
owning actor with a non-blocking send, so a full mailbox is answered BACKPRESSURE at once and
one slow partition never stalls the connection or the node. Replies may leave in any order;
each carries its request id. What the core needs of the node it is handed as ``node`` (a
``ConnectionHost``): the real ``Node``, or the simulator's node, which drives this same core.

The read fast path: a QUERY of a whole stored period (unfiltered, or filtered on declared
dimension values), or a QUERY_REALTIME, that needs no waiting is decoded by the direct decoders
(``wire/fast.py``), answered from the partition's state in this callback (the state is this
thread's; a mailbox hop would only add a task switch) and its reply frame built from the rows
in one encode: no request, token or reply object. Anything else on that path -- a read that
must wait for ``min_index``, a replica that does not lead, a traced node (``--trace`` sends
every request through the mailbox so the trace shows it), a body the direct decoder does not
take, a filter the rows cannot plainly answer -- falls through to the general path, which
answers exactly as before. An INGEST in the shape clients write is read straight from the
frame's bytes (``wire/ingest_bytes.py``: no CBOR decoder at all), then dispatched like any
request; any other INGEST is decoded as before.

``ClientConnection`` is the asyncio Protocol around a core: ``data_received`` feeds it, one
``flush`` per loop iteration writes every reply frame the core produced (one system call for all
of them), peer frames (Raft traffic) are delivered to the replicas' lanes with flow control, and
live alert subscriptions push through the transport.

Per connection state machine (one rule table; anything else is answered INVALID_REQUEST):
    AWAIT_HELLO --HELLO--> READY        (any other request before HELLO is refused)
    READY       --HELLO--> READY        (a repeated HELLO is answered again; harmless)
A frame the codec cannot parse is a protocol error: answered once with PROTOCOL, then closed.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from unimeter import errors, limits
from unimeter.actors.alert_feed import ConnectionFeeds
from unimeter.actors.catalog import CatalogRequest
from unimeter.actors.mailbox import MailboxClosed, MailboxFull
from unimeter.actors.partition import ClientRequest, PartitionCore
from unimeter.consensus.codec import PeerMessageError, decode_message
from unimeter.observe import NodeStats, RequestStats
from unimeter.peer import GOSSIP_TAG
from unimeter.routing import PartitionCache
from unimeter.security.gate import Gatekeeper, HelloGate, Principal
from unimeter.wire import fast
from unimeter.wire import messages as m
from unimeter.wire.codec import BadRequest, ServerCodec
from unimeter.wire.ingest_bytes import ingest_payload

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
_OK = int(errors.Status.OK)
_IN_FLIGHT_MAX = limits.in_flight_requests_per_connection_max
_INGEST_START = b"\x83\x08"  # a frame's array of three items, kind 8 (INGEST)


class PartitionTarget(Protocol):
    """What a connection uses of a partition replica's runtime."""

    @property
    def core(self) -> PartitionCore: ...

    @property
    def tracer(self) -> object | None: ...

    def now(self) -> int: ...

    def submit(self, item: ClientRequest, nbytes: int, /) -> None:
        """Queue a request (``Mailbox.try_send``: MailboxFull, MailboxClosed)."""


class ConnectionHost(Protocol):
    """What a connection core is handed of its node (``Node``, or the simulator's node)."""

    client_connections: int  # greeted client connections (max_connections)

    @property
    def serving(self) -> bool: ...

    @property
    def partition_count(self) -> int: ...

    @property
    def node_id(self) -> int: ...

    @property
    def addresses(self) -> dict[int, str]: ...

    @property
    def config(self) -> Any: ...  # .max_connections

    @property
    def peers(self) -> Any: ...  # .peer_dialed(node_id)

    @property
    def stats(self) -> NodeStats: ...

    @property
    def gate(self) -> Gatekeeper: ...  # tokens, roles and the cluster secret (security/)

    @property
    def route(self) -> PartitionCache: ...  # route[account_id]: its partition

    def runtime_of(self, partition: int, /) -> PartitionTarget | None: ...

    def submit_catalog(self, item: CatalogRequest, nbytes: int, /) -> None:
        """As ``PartitionTarget.submit``, to the catalog."""

    def welcome(self, challenge: bytes | None = None, proof: bytes | None = None) -> m.Welcome:
        """``challenge``/``proof``: the cluster secret handshake's first answer (security/)."""

    def partition_map(self) -> m.PartitionMap: ...

    def cluster_status(self) -> m.ClusterStatusReply: ...

    def leader_of(self, p: int) -> int | None: ...

    def check_ingest(self, msg: m.Ingest) -> tuple[errors.Status, str] | None: ...


class Reply:
    """The token a core carries for one request: answering it writes the response frame, and
    counts the request's latency and outcome (per request, never per event: ``observe.py``)."""

    __slots__ = ("batch", "conn", "request_id", "started", "stats")

    def __init__(
        self,
        conn: ConnectionCore,
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


class ConnectionCore:
    """One client (or peer) connection's logic, without I/O: see the module docstring."""

    # Set by the runtime: called when a reply frame is queued and none was (flush soon).
    wake: Callable[[], None] | None = None
    # Set by the runtime of a peer connection: takes a frame of Raft messages; False stops
    # reading (the frame was bad and the connection closes, or a lane is full: ``process``
    # is called again once it has room).
    on_peer_frame: Callable[[m.PeerFrame], bool] | None = None
    # Set by the runtime: the connection's live alert subscriptions (None: not offered).
    alert_feeds: Callable[[], ConnectionFeeds] | None = None
    # The runtime driving this core (opaque to it).
    owner: object | None = None
    # Set by the simulator: told of every read this core answered itself, from the state.
    on_read_here: Callable[[PartitionTarget, int, int, m.Reply], None] | None = None

    def __init__(self, node: ConnectionHost, peer: str = "?") -> None:
        self.node = node
        self.codec = ServerCodec()
        self.peer = peer
        self.greeted = False
        self.peer_node_id: int | None = None  # set when a cluster peer says HELLO
        self.principal: Principal | None = None  # who the HELLO proved this is (security/)
        self.hello_gate: HelloGate | None = None
        self.in_flight = 0
        self.counted = False  # counted among the node's client connections (max_connections)
        self.closing = False  # the core asked for the connection to be closed
        self.lost = False  # the transport is gone: replies are dropped
        self.paused = False  # the runtime stopped reading (a peer's lane is full)
        self.receiving = False  # inside ``receive``
        self.out: list[bytes] = []  # reply frames not yet taken by the runtime
        self._query_stats: RequestStats | None = None
        self._realtime_stats: RequestStats | None = None

    # ------------------------------------------------------------------ I/O boundary

    def receive(self, data: bytes) -> None:
        """Take bytes from the socket. Replies made while they are handled are not announced
        through ``wake``: the runtime takes them when this returns (one write)."""
        self.codec.feed(data)
        self.receiving = True
        try:
            self.process()
        finally:
            self.receiving = False

    def take_output(self) -> list[bytes]:
        out = self.out
        self.out = []
        return out

    def connection_lost(self) -> None:
        self.lost = True
        self.out = []
        if self.hello_gate is not None:
            self.hello_gate.closed()
        if self.counted:
            self.node.client_connections -= 1
            self.counted = False

    def close(self) -> None:
        """Ask the runtime to write what is queued, then close the connection."""
        self.closing = True
        if not self.receiving and self.wake is not None:
            self.wake()

    def respond(self, request_id: int, status: int, message: m.Reply) -> None:
        self.in_flight -= 1
        if self.lost:
            return  # the client went away; its request may still have been applied
        try:
            frame = self.codec.encode_response(request_id, status, message)
        except errors.ServerError as exc:  # a reply over the frame limit: say so instead
            frame = self.codec.encode_response(
                request_id, errors.Status.INTERNAL, m.ErrorReply(message=exc.message)
            )
        self._queue(frame)

    def _queue(self, frame: bytes) -> None:
        out = self.out
        out.append(frame)
        if not self.receiving and len(out) == 1 and self.wake is not None:
            self.wake()

    # ------------------------------------------------------------------ dispatch

    def process(self) -> None:
        """Handle every complete frame received (stops early while peer reading is paused)."""
        decoder = self.codec.decoder
        while not self.closing and not self.paused:
            try:
                # ``decoder.next_item()``, its two steps called here (once per request).
                payload = decoder.next_payload()
                if payload is None:
                    return
                # An INGEST in the clients' shape read straight from its bytes, else the CBOR item.
                direct = ingest_payload(payload) if payload[:2] == _INGEST_START else None
                if direct is not None and self._ingest_here(*direct):
                    if not decoder.frame_ready:
                        return
                    continue
                item = decoder.item_of(payload)
            except errors.ProtocolError as exc:
                self._protocol_error(exc)
                return
            if (type(item) is not list or not self._fast(item)) and not self._general(item):
                return
            if not decoder.frame_ready:
                return  # (next_item would say None)

    def _general(self, item: Any) -> bool:
        """Decode an item generically and act on it; False: stop reading for now."""
        try:
            frame = self.codec.request_of(item)
        except errors.ProtocolError as exc:
            self._protocol_error(exc)
            return False
        self.in_flight += 1
        if isinstance(frame, m.PeerFrame):
            self.in_flight -= 1  # peer frames are never answered
            if self.peer_node_id is None or self.on_peer_frame is None:
                # Only a member's link may carry Raft messages (docs/security.md).
                self.node.gate.refuse("binary", "not_a_member", "a PEER frame", self.peer)
                self.close()
                return False
            return self.on_peer_frame(frame)
        if isinstance(frame, BadRequest):
            self._refuse(frame.request_id, errors.Status.INVALID_REQUEST, frame.message)
            return True
        self._dispatch(frame)
        return True

    def _protocol_error(self, exc: errors.ProtocolError) -> None:
        log.info("event=protocol_error peer=%s error=%r", self.peer, exc.message)
        if not self.lost:
            self.in_flight += 1
            self.respond(0, errors.Status.PROTOCOL, m.ErrorReply(message=exc.message))
            self.close()

    # ------------------------------------------------------------------ read fast path

    def _fast(self, item: list[Any]) -> bool:
        """Answer a whole-period QUERY or a QUERY_REALTIME here if it needs nothing else, or
        dispatch an INGEST of a small plain batch decoded directly; False: the general path
        handles the item (decoding it again, generically)."""
        try:
            kind, rid, body = item
        except ValueError:
            return False  # not 3 items: the general path names the problem
        if type(rid) is not int or not 0 <= rid <= fast.REQUEST_ID_MAX:
            return False
        if kind == fast.KIND_INGEST:
            ingest = fast.ingest(body)
            return ingest is not None and self._ingest_here(rid, ingest)
        if not self.greeted or self.in_flight >= _IN_FLIGHT_MAX:
            return False
        if kind == fast.KIND_QUERY:
            q = fast.query(body)
            if q is None:
                return False
            part, account, code, start, end, min_index, catalog, filters = q
        elif kind == fast.KIND_QUERY_REALTIME:
            r = fast.query_realtime(body)
            if r is None:
                return False
            part, account, code, catalog = r
            start = end = min_index = 0
            filters = ()
        else:
            return False
        # The principal may send this kind, under the token file in force (else the general
        # path refuses it, counted); then the partition's runtime, if this node may answer the
        # read from it here: serving, hosting it, untraced, and the account routes there.
        node = self.node
        principal = self.principal
        if (
            principal is None
            or principal.generation != node.gate.generation
            or kind not in principal.kinds
            or not node.serving
        ):
            return False
        target = node.runtime_of(part)
        if target is None or target.tracer is not None or node.route[account] != part:
            return False
        started = perf_counter()
        if kind == fast.KIND_QUERY:
            reply = target.core.read_period_body(
                account, code, start, end, min_index, catalog, filters
            )
            stats = self._query_stats
        else:
            reply = target.core.read_realtime_body(account, code, catalog, target.now())
            stats = self._realtime_stats
        if reply is None:
            return False
        if stats is None:
            stats = self._fast_stats(kind)
        if not self.lost:
            frame = self.codec.encode_ok(rid, reply)
            if self.receiving:
                self.out.append(frame)  # taken when ``receive`` returns
            else:
                self._queue(frame)
        # stats.done(OK, seconds), inlined: the histogram bucket, the total, the status count
        seconds = perf_counter() - started
        latency = stats.latency
        latency.counts[bisect_left(latency.bounds, seconds)] += 1
        latency.total += seconds
        stats.statuses[_OK] += 1
        if self.on_read_here is not None:
            self.on_read_here(target, rid, _OK, self.codec.reply_of(kind, reply))
        return True

    def _ingest_here(self, rid: int, ingest: m.Ingest) -> bool:
        """Handle an INGEST decoded directly (``rid`` in range) as the general path handles
        any request; False (the general path decodes it again) before the HELLO or at the
        in-flight limit."""
        if not self.greeted or self.in_flight >= _IN_FLIGHT_MAX:
            return False
        self.in_flight += 1
        self._dispatch(m.RequestFrame(request_id=rid, message=ingest))
        return True

    def _fast_stats(self, kind: int) -> RequestStats:
        if kind == fast.KIND_QUERY:
            stats = self._query_stats = self.node.stats.request("binary", "query")
        else:
            stats = self._realtime_stats = self.node.stats.request("binary", "query_realtime")
        return stats

    # ------------------------------------------------------------------ general path

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
            if self.hello_gate is None:
                self.hello_gate = node.gate.session(self.peer)
            verdict = self.hello_gate.hello(msg)
            if verdict.refusal is not None:
                self._refuse(rid, errors.Status.AUTH, verdict.refusal)
                return
            if verdict.principal is None:  # a member's first HELLO: challenged, not greeted
                self.respond(rid, errors.Status.OK, node.welcome(verdict.challenge, verdict.proof))
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
            self.principal = verdict.principal
            self.peer_node_id = msg.peer_node_id
            self.respond(rid, errors.Status.OK, node.welcome())
            if msg.peer_node_id is not None:
                node.peers.peer_dialed(msg.peer_node_id)
            return
        if not self.greeted:
            self._refuse(rid, errors.Status.INVALID_REQUEST, "the first request must be HELLO")
            return
        admitted = node.gate.admit(self.principal, msg.KIND, self.peer)
        if isinstance(admitted, str):  # a role that may not send this kind, a revoked token
            self._refuse(rid, errors.Status.AUTH, admitted)
            return
        self.principal = admitted
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
            self._send(node.submit_catalog, CatalogRequest(reply, msg), self.codec.last_frame_bytes)
        elif isinstance(msg, m.ClusterStatus):
            self.respond(rid, errors.Status.OK, node.cluster_status())
        elif isinstance(msg, m.SubscribeAlerts | m.UnsubscribeAlerts) and self.alert_feeds is None:
            self._refuse(rid, errors.Status.INVALID_REQUEST, "alert subscriptions not offered")
        elif isinstance(msg, m.SubscribeAlerts):
            self.alert_feeds().subscribe(rid, msg)
        elif isinstance(msg, m.UnsubscribeAlerts):
            self.alert_feeds().unsubscribe(rid, msg)
        else:  # pragma: no cover - the codec only yields known kinds
            self._refuse(rid, errors.Status.INVALID_REQUEST, f"unexpected request {msg!r}")

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
        runtime = node.runtime_of(part)
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
                if self.on_read_here is not None:
                    self.on_read_here(runtime, rid, answer.status, answer.message)
                return
        self._send(runtime.submit, request, self.codec.last_frame_bytes)

    def _send(self, submit: Callable[[Any, int], None], item: ClientRequest | CatalogRequest,
              nbytes: int) -> None:  # fmt: skip
        # Refusals go through the request's token, so they are counted like any answer.
        reply: Reply = item.token  # type: ignore[assignment]
        try:
            submit(item, nbytes)
        except MailboxFull:
            reply.send(
                errors.Status.BACKPRESSURE, m.ErrorReply(message="the node is busy; retry shortly")
            )
        except MailboxClosed:
            reply.send(errors.Status.UNAVAILABLE, m.ErrorReply(message="the node is stopping"))


class ClientConnection(asyncio.Protocol):
    """The asyncio runtime of one connection's core."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.core = ConnectionCore(node)
        self.codec = self.core.codec
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.feeds: ConnectionFeeds | None = None  # live alert subscriptions, made on demand
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_soon = False
        # Raft messages of a peer frame that found their replica's lane full: reading this
        # peer is paused until they are all delivered (flow control, nothing dropped).
        self._peer_backlog: list[tuple[int, object, int]] = []
        core = self.core
        core.owner = self
        core.wake = self._wake
        core.on_peer_frame = self._on_peer_frame
        core.alert_feeds = self._alert_feeds

    # ------------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self.peer = self.core.peer = str(transport.get_extra_info("peername"))
        self.node.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.node.connections.discard(self)
        core = self.core
        core.connection_lost()
        self.transport = None
        self._peer_backlog.clear()
        if core.peer_node_id is not None and self.node.serving:
            # Most often the peer's process died (the kernel closed its end at once): its
            # replicas' followers here need not wait out an election timeout to replace it.
            self.node.peer_lost(core.peer_node_id)
        if self.feeds is not None:
            self.feeds.close_all()

    def data_received(self, data: bytes) -> None:
        core = self.core
        core.receive(data)
        if core.out or core.closing:
            self.flush()  # the replies this data made, in one write

    def respond(self, request_id: int, status: int, message: m.Reply) -> None:
        self.core.respond(request_id, status, message)

    def _wake(self) -> None:
        if not self._flush_soon and self._loop is not None:
            self._flush_soon = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the replies waiting since the last flush, in order (before any push); close
        the connection if the core asked to."""
        self._flush_soon = False
        core = self.core
        out = core.out
        transport = self.transport
        if out:
            core.out = []
            if transport is not None and not transport.is_closing():
                transport.writelines(out)
        if core.closing and transport is not None:
            transport.close()

    def close(self) -> None:
        self.core.close()
        self.flush()

    # ------------------------------------------------------------------ peers

    def _on_peer_frame(self, frame: m.PeerFrame) -> bool:
        """Hand each Raft message to its replica; False (and close) if the frame is bad, or
        (paused) if a lane is full."""
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
        return not self.core.paused

    def _deliver_peer_backlog(self) -> None:
        """Deliver queued Raft messages in order; at a full lane, pause reading this peer and
        go on once that lane has been drained."""
        backlog = self._peer_backlog
        for delivered, (group, message, nbytes) in enumerate(backlog):
            full = self.node.deliver_peer(group, message, nbytes)
            if full is not None:
                del backlog[:delivered]
                self.core.paused = True
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
        self.core.paused = False
        self._deliver_peer_backlog()
        if not self.core.paused:
            self.transport.resume_reading()
            self.core.process()  # frames that arrived with the paused one

    def _alert_feeds(self) -> ConnectionFeeds:
        if self.feeds is None:
            self.feeds = ConnectionFeeds(self)
        return self.feeds
