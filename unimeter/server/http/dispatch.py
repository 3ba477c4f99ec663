"""How an HTTP request reaches the actor that answers it, on this node or on another.

Theory of operation. The HTTP handlers build the same request messages a binary client sends
(``wire/messages.py``) and give them to ``Dispatcher``, which takes the path the connection
actor takes for a binary request: a partition request goes into the partition's mailbox as a
``ClientRequest`` whose token is a ``FutureReply`` (a read that needs no waiting is answered at
once with ``read_now``, as the connection actor does), a catalog request into the catalog's
mailbox. The partition decides everything (leadership, validation, exactly-once); nothing of
it is repeated here.

When another node leads the partition (the gossip says so, or the local replica answers
NOT_LEADER naming the leader) the message is forwarded over the binary protocol to that node,
on one persistent connection per node (the client library's ``NodePool``). Retriable failures
(NOT_LEADER, UNAVAILABLE, BACKPRESSURE, a lost connection) are retried with backoff until the
request's deadline, each retry after re-routing, exactly as ``AsyncClient`` does; retrying an
``Ingest`` sends the very same message, with its producer id and sequence number, so a retry
of a batch that was in fact applied is answered as a duplicate, never applied twice.

The dispatcher is one producer for all the node's HTTP ingest (``Session``: a producer id,
per-partition sequence windows, acknowledged log indices). Reads carry the highest log index
it was acknowledged for their partition, so an HTTP client reads its own writes through the
same node, as a binary client does through its own connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

from unimeter import errors, limits
from unimeter.actors.catalog import CatalogRequest
from unimeter.actors.mailbox import MailboxClosed, MailboxFull
from unimeter.actors.partition import ClientRequest
from unimeter.actors.runtime import FutureReply
from unimeter.client.ingest import Pending
from unimeter.client.pool import NodePool
from unimeter.client.retry import Backoff, retry_until
from unimeter.client.session import Session
from unimeter.errors import BackpressureError, NotLeaderError, UnavailableError, UnimeterError
from unimeter.wire import messages as m

log = logging.getLogger("unimeter.http")

if TYPE_CHECKING:
    from unimeter.node import Node
    from unimeter.node_runtimes import PartitionRuntime

CATALOG = -1  # the routing target of catalog requests (any partition is >= 0)

PartitionRequest = (
    m.Ingest | m.Query | m.QueryRealtime | m.QueryBreakdown | m.ListEvents | m.ListAlerts
)
CatalogMessage = m.MetricCreate | m.MetricUpdate | m.MetricGet | m.MetricList | m.MetricDelete

_NO_TOKEN = object()  # the token of a read answered at once (it is never used)


class Dispatcher:
    def __init__(self, node: Node, *, timeout_s: float = limits.http_request_timeout_s) -> None:
        self.node = node
        self.timeout_s = timeout_s
        self.session = Session()
        # Forwarded requests were authorised here; other nodes accept them as a member's.
        hello = node.own_client_hello(f"unimeter-http-forward/{node.node_id}")
        self._pool = NodePool(hello, dial_timeout_s=timeout_s, tls=node.dial_tls)
        self._hints: dict[int, str] = {}  # target -> leader address a NOT_LEADER named
        self._rng = random.Random()  # backoff jitter only

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.timeout_s

    async def close(self) -> None:
        await self._pool.close()

    # ------------------------------------------------------------------ requests

    async def partition(
        self, partition: int, request: PartitionRequest, deadline: float
    ) -> m.Reply:
        """The OK reply to ``request``; a typed error once it fails for good."""
        return await self.call(partition, request, deadline)

    async def catalog(self, request: CatalogMessage) -> m.Reply:
        reply = await self.call(CATALOG, request, self.deadline())
        version = getattr(reply, "catalog_version", None)
        if isinstance(version, int):
            self.session.note_catalog(version)
        return reply

    async def catch_up_catalog(self, codes: Iterable[str]) -> bool:
        """Whether the catalog leader knows one of ``codes`` in a catalog version this node's
        requests did not carry yet (it then carries it from now on).

        Reads and ingests carry the catalog version this node has seen, so a partition leader
        first learns of every metric this node knows. A metric just created through another
        node may not have reached this node's catalog replica yet: its events come back
        ``unknown_metric`` (a read: UNKNOWN_METRIC). Asking the catalog leader, which answered
        that create, tells whether sending again with its version will find the metric."""
        node = self.node
        catalog = node.catalog
        leader = None if catalog is None else catalog.core.raft.leader_id
        if leader is None:
            return False
        sent = self.session.catalog_version
        deadline = self.deadline()
        for code in codes:
            request = m.MetricGet(code=code)
            try:
                if leader == node.node_id:
                    reply = await _answer(self._post_local(CATALOG, request), deadline)
                else:
                    reply = await self._forward(node.addresses[leader], request, deadline)
            except UnimeterError:
                continue  # no such metric, or the leader moved: the first answer stands
            if isinstance(reply, m.SchemaReply):
                self.session.note_catalog(reply.catalog_version)
        if self.session.catalog_version <= sent:
            return False
        log.info(
            "event=catalog_caught_up from_version=%d to_version=%d",
            sent, self.session.catalog_version,
        )  # fmt: skip
        return True

    async def call(
        self,
        target: int,
        request: m.Request,
        deadline: float,
        failed: UnimeterError | None = None,
    ) -> m.Reply:
        """Send ``request`` to whoever serves ``target``, retrying retriable failures until
        ``deadline`` (``failed``: a retriable error of an attempt already made)."""
        if failed is None:
            # The common case without the retry machinery's allocations: a first attempt that
            # succeeds (or fails for good). Anything retriable takes the general path.
            try:
                return await self._attempt(target, request, deadline)
            except UnimeterError as exc:
                if not exc.retriable:
                    raise
                failed = exc

        def before_retry(exc: UnimeterError) -> None:
            if isinstance(exc, NotLeaderError) and exc.leader is not None:
                self._hints[target] = exc.leader
            elif exc.refresh_routing:
                self._hints.pop(target, None)

        return await retry_until(
            lambda: self._attempt(target, request, deadline),
            deadline=deadline,
            backoff=Backoff(self._rng),
            before_retry=before_retry,
            failed=failed,
        )

    def _attempt(self, target: int, request: m.Request, deadline: float) -> Awaitable[m.Reply]:
        address = self._remote_address(target)
        if address is None:
            return _answer(self._post_local(target, request), deadline)
        return self._forward(address, request, deadline)

    def _remote_address(self, target: int) -> str | None:
        """Where to forward a request for ``target``; None to serve it here."""
        node = self.node
        runtime = node.partitions.get(target)
        if runtime is not None and runtime.core.raft.leader_id == node.node_id:
            return None
        hint = self._hints.get(target)
        if hint is not None:
            return None if hint == node.advertised() else hint
        if target == CATALOG:
            return None  # any replica reads the catalog; a follower names the leader for writes
        leader = node.leader_of(target)
        if leader is None or leader == node.node_id:
            if runtime is not None:
                return None  # the local replica answers (it names the leader when it knows)
            raise UnavailableError(f"partition {target} has no known leader yet")
        return node.addresses[leader]

    async def _forward(self, address: str, request: m.Request, deadline: float) -> m.Reply:
        connection = await self._pool.get(address, deadline)
        return await connection.request(request, deadline)

    def _post_local(self, target: int, request: m.Request) -> FutureReply | m.Reply:
        """Hand ``request`` to the local actor: its reply (a read answered at once) or the
        token its answer will come through. Raises the typed error of a refusal."""
        node = self.node
        if not node.serving:
            raise UnavailableError("the node is starting or stopping")
        if target == CATALOG:
            assert isinstance(request, CatalogMessage)
            token = FutureReply()
            _post(node.catalog_mailbox, CatalogRequest(token, request))
            return token
        assert isinstance(request, PartitionRequest)
        runtime = node.partitions[target]
        if isinstance(request, m.Ingest):
            problem = node.check_ingest(request)
            if problem is not None:
                raise errors.error_for(problem[0], problem[1])
        elif runtime.tracer is None:
            # As the connection actor does: the state is this thread's, no mailbox hop.
            answer = runtime.core.read_now(ClientRequest(_NO_TOKEN, request), runtime.now())
            if answer is not None:
                return _checked(answer.status, answer.message)
        token = (
            _IngestToken(node, request.batch) if isinstance(request, m.Ingest) else FutureReply()
        )
        _post(runtime.mailbox, ClientRequest(token, request))
        return token

    def read_period_here(
        self,
        partition: int,
        account: int,
        code: str,
        start_us: int,
        end_us: int,
        filters: tuple[tuple[str, str], ...] = (),
    ) -> list[Any] | None:
        """The read fast path, as the connection actor takes it: a read of one whole stored
        period (unfiltered, or filtered on declared dimension values) answered straight from
        the local leader's rows (no request, token or reply object), as its wire form ``[sum,
        count, max, last_value, last_timestamp_us, alert_flags]``; None whenever it needs
        anything else (another node leads, the read must wait for this node's writes or
        catalog, the node is traced, a filter the rows cannot plainly answer): ``call``
        then."""
        node = self.node
        runtime = node.partitions.get(partition)
        if runtime is None or runtime.tracer is not None or not node.serving:
            return None
        session = self.session
        body = runtime.core.read_period_body(
            account, code, start_us, end_us, session.min_index(partition),
            session.catalog_version, filters,
        )  # fmt: skip
        return None if body is None else body["v"]

    def read_realtime_here(
        self, partition: int, account: int, code: str
    ) -> tuple[list[Any], int, int] | None:
        """``read_period_here`` for QUERY_REALTIME: (the row's wire form, the period's start
        and end) of the period ingest is filling, read straight from the local leader's rows;
        None whenever ``call`` must answer."""
        node = self.node
        runtime = node.partitions.get(partition)
        if runtime is None or runtime.tracer is not None or not node.serving:
            return None
        body = runtime.core.read_realtime_body(
            account, code, self.session.catalog_version, runtime.now()
        )
        return None if body is None else (body["v"], body["ps"], body["pe"])

    # ------------------------------------------------------------------ ingest (Sender)

    def start(self, target: int, request: m.Request, deadline: float) -> Pending | None:
        """``client.ingest.Sender.start``: hand an Ingest to a local leader at once, or None
        (the general path then calls ``call``). Raises only non-retriable errors."""
        runtime: PartitionRuntime | None = self.node.partitions.get(target)
        if runtime is None or runtime.core.raft.leader_id != self.node.node_id:
            return None
        try:
            posted = self._post_local(target, request)
        except UnimeterError as exc:
            if exc.retriable:
                return None
            raise
        assert isinstance(posted, FutureReply)
        return _LocalPending(posted, deadline)


class _IngestToken(FutureReply):
    """An Ingest's token: counts what became of its events, as the connection actor's does."""

    __slots__ = ("_batch", "_node")

    def __init__(self, node: Node, batch: m.EventBatch) -> None:
        super().__init__()
        self._node = node
        self._batch = batch

    def send(self, status: int, message: m.Reply) -> None:
        super().send(status, message)
        if type(message) is m.IngestReply:
            self._node.stats.ingest.note(self._batch, message)


class _LocalPending:
    """An Ingest in a local partition's mailbox (``client.ingest.Pending``)."""

    __slots__ = ("_deadline", "_token")

    def __init__(self, token: FutureReply, deadline: float) -> None:
        self._token = token
        self._deadline = deadline

    def flush(self) -> None:
        """Nothing to write: the message is already in the mailbox."""

    async def reply(self) -> m.Reply:
        return await _answer(self._token, self._deadline)

    def abandon(self) -> None:
        self._token.future.cancel()


def _post(mailbox: object, item: object) -> None:
    try:
        mailbox.try_send(item)  # type: ignore[attr-defined]
    except MailboxFull:
        raise BackpressureError("the node is busy; retry shortly") from None
    except MailboxClosed:
        raise UnavailableError("the node is stopping") from None


async def _answer(posted: FutureReply | m.Reply, deadline: float) -> m.Reply:
    if not isinstance(posted, FutureReply):
        return posted
    try:
        async with asyncio.timeout_at(deadline):
            status, message = await posted.future
    except TimeoutError:
        raise errors.TimeoutError("the partition did not answer in time") from None
    return _checked(status, message)


def _checked(status: int, message: m.Reply) -> m.Reply:
    if status == errors.Status.OK:
        return message
    if isinstance(message, m.ErrorReply):
        raise errors.error_for(status, message.message, message.leader)
    raise errors.error_for(status, f"status {status} without an error body")
