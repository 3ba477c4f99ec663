"""``AsyncClient``: the public face of the client library (docs/client.md).

Theory of operation. ``connect`` asks the seeds, in order, for the partition map; from then on
every request goes to the node that leads its partition (catalog and status requests go to any
node, following a NOT_LEADER hint to the catalog leader), over one pipelined connection per node
(``pool.py``). Every request runs under one deadline (``request_timeout``) inside ``_call``,
which retries whatever the error classes call retriable, with jittered exponential backoff,
after re-routing: a NOT_LEADER naming the leader is followed at once, and any routing failure
also triggers a map refresh in the background (as does a timer every ``map_refresh_s``).

``ingest`` (``Event`` objects) and ``ingest_columns`` (parallel columns) validate every
event and pack them into columns (``columns.py``, ``arrays.py``), which are split into
per-partition batches (``batching.py``) sent in parallel, each with its own sequence number
that every retry reuses (``session.py``), so a retry is never applied twice. Reads carry the
highest log index this client was acknowledged for their partition, so they see this client's
own writes.

Every task the client starts (dials, map fetches, the refresh timer, the per-partition sends of
one ingest) is owned: ``close`` cancels and awaits the background ones, and the sends of an
ingest are gathered before ``ingest`` returns or raises.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import numpy.typing as npt

from unimeter import limits
from unimeter.errors import (
    AuthError,
    ClosedError,
    InvalidRequestError,
    UnavailableError,
    UnimeterError,
)
from unimeter.model import (
    AggValue,
    AlertRecord,
    DeliveryMode,
    Event,
    EventRecord,
    IngestResult,
    OperationType,
    Period,
    UsageResult,
)
from unimeter.security.tls import for_client
from unimeter.wire.messages import (
    PROTOCOL_VERSION,
    AggReply,
    AlertsPage,
    BreakdownReply,
    ClusterStatus,
    ClusterStatusReply,
    EventsPage,
    GetPartitionMap,
    Hello,
    ListAlerts,
    ListEvents,
    PartitionMap,
    Query,
    QueryBreakdown,
    QueryRealtime,
    Reply,
    Request,
    Welcome,
)

from . import convert
from .alerts import AlertsApi
from .arrays import pack_arrays
from .batching import empty_result, split_packed
from .cluster_map import ANY_NODE, ClusterMap, Router, split_address
from .columns import pack_events
from .connection import Exchange, Greeting
from .ingest import send_groups
from .metrics import MetricsApi
from .packed import Packed
from .paging import Pages
from .pool import NodePool
from .retry import Attempts, Backoff, retry_until
from .session import Session

log = logging.getLogger("unimeter.client")


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class AsyncClient:
    def __init__(
        self,
        seeds: Iterable[str],
        *,
        client_name: str = "unimeter-python",
        token: str | None = None,
        request_timeout: float = limits.request_timeout_s_default,
        delivery: DeliveryMode = DeliveryMode.ASYNC,
        tls: ssl.SSLContext | bool | None = None,
        _greeting: Callable[[], Greeting] | None = None,  # a node's own client (security/)
    ) -> None:
        if isinstance(seeds, str):
            raise TypeError("seeds must be a list of 'host:port' strings, not one string")
        self._seeds = list(seeds)
        if not self._seeds:
            raise ValueError("at least one seed address is needed")
        for seed in self._seeds:
            split_address(seed)
        if not isinstance(request_timeout, int | float) or not request_timeout > 0:
            raise ValueError(f"request_timeout must be a positive number, got {request_timeout}")
        for name, text in (("client_name", client_name), ("token", token)):
            if text is not None and len(text.encode()) > limits.string_bytes_max:
                raise ValueError(f"{name} exceeds {limits.string_bytes_max} bytes")
        self._request_timeout = float(request_timeout)
        self._delivery = DeliveryMode(delivery)
        hello = Hello(version=PROTOCOL_VERSION, client_name=client_name, token=token)
        self._pool = NodePool(
            _greeting or hello, dial_timeout_s=self._request_timeout, tls=for_client(tls)
        )
        self._session = Session()
        self._map = ClusterMap()
        self._router = Router(self._map, self._seeds)
        self._rng = random.Random()  # backoff jitter only
        self._state = _State.NEW
        self._connect_lock = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None
        self._map_fetch: asyncio.Task[None] | None = None
        self._refresh_failing = False
        self._events_per_batch_max = limits.events_per_batch_max
        self._frame_bytes_max = limits.frame_bytes_max
        self.metrics = MetricsApi(self._catalog_call, self._session)
        self.alerts = AlertsApi(self)  # live subscriptions: client.alerts.subscribe(...)
        self._sender = _Sender(self)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Fetch the partition map from the first seed that answers and start the refresher."""
        async with self._connect_lock:
            if self._state is _State.OPEN:
                return
            if self._state is _State.CLOSED:
                raise ClosedError("the client is closed")
            deadline = self._deadline()
            try:
                failures = await self._fetch_map_from(self._seeds, deadline)
            except BaseException:
                await self._pool.close(final=False)
                raise
            if self._closed():
                raise ClosedError("the client was closed while connecting")
            if failures is not None:
                # Dials still running for silent seeds must not outlive a failed connect: an
                # `async with` whose connect raises never reaches close().
                await self._pool.close(final=False)
                raise UnavailableError("no seed answered: " + "; ".join(failures))
            self._state = _State.OPEN
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_periodically(), name="unimeter-map-refresh"
            )
            self._refresher.add_done_callback(_log_failure)
            self._pool.warm(self._map.addresses())

    async def close(self) -> None:
        """Fail pending requests with ``ClosedError``, stop background work, close sockets."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        tasks = [t for t in (self._refresher, self._map_fetch) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.alerts.close_all()
        await self._pool.close()

    # ------------------------------------------------------------------ ingest

    async def ingest(
        self, events: Iterable[Event], delivery: DeliveryMode | None = None
    ) -> IngestResult:
        """Store ``events``; groups go to their partition leaders in parallel.

        If a group fails after its retries, the error of the first failed group is raised; the
        groups of other partitions may have been stored (a note on the error says which).
        """
        sync = self._sync(delivery)
        batch = events if isinstance(events, list | tuple) else list(events)
        if not batch:
            return empty_result()
        packed = pack_events(batch)  # a bad event fails before anything, even HELLO, is sent
        return await self._send_packed(packed, sync)

    async def ingest_columns(
        self,
        *,
        account_ids: Sequence[int] | npt.NDArray[Any],
        metric_codes: str | Sequence[str] | npt.NDArray[Any],
        values: int | Sequence[int] | npt.NDArray[Any],
        timestamps: Sequence[datetime | int | None] | npt.NDArray[Any] | None = None,
        event_ids: Sequence[str | None] | npt.NDArray[Any] | None = None,
        properties: (
            Mapping[str, Sequence[str | None] | npt.NDArray[Any]]
            | Sequence[Mapping[str, str] | None]
            | None
        ) = None,
        operation_types: OperationType | int | Sequence[int] | npt.NDArray[Any] | None = None,
        delivery: DeliveryMode | None = None,
    ) -> IngestResult:
        """Store the events described by parallel columns (entry ``i`` of each is event ``i``)
        exactly as ``ingest`` would store the ``Event`` objects they describe: same checks,
        routing, retries and result, with rejections named by index into the columns."""
        sync = self._sync(delivery)
        packed = pack_arrays(
            account_ids=account_ids,
            metric_codes=metric_codes,
            values=values,
            timestamps=timestamps,
            operation_types=operation_types,
            properties=properties,
            event_ids=event_ids,
        )
        if not len(packed):
            return empty_result()
        return await self._send_packed(packed, sync)

    def _sync(self, delivery: DeliveryMode | None) -> bool:
        try:
            mode = self._delivery if delivery is None else DeliveryMode(delivery)
        except ValueError:
            raise InvalidRequestError(f"unknown delivery mode {delivery!r}") from None
        return mode is DeliveryMode.SYNC

    async def _send_packed(self, packed: Packed, sync: bool) -> IngestResult:
        if self._state is not _State.OPEN:
            await self._ensure_open()
        groups = split_packed(
            packed,
            self._map.partitions_of,
            events_per_batch_max=self._events_per_batch_max,
            frame_bytes_max=self._frame_bytes_max,
        )
        return await send_groups(
            groups, self._session, self._sender, sync=sync, deadline=self._deadline()
        )

    # ------------------------------------------------------------------ reads

    async def query(
        self,
        account_id: int,
        metric_code: str,
        period: Period,
        filters: Mapping[str, str] | None = None,
    ) -> UsageResult:
        """The aggregate of ``metric_code`` for ``account_id`` over ``period``."""
        account = convert.account_id(account_id)
        code = convert.metric_code(metric_code)
        start_us, end_us = convert.period_us(period)
        pairs = convert.filters(filters)
        if self._state is _State.OPEN:
            partition = self._map.partition_of(account)
        else:
            partition = await self._partition_of(account)
        request = Query(
            partition=partition,
            account_id=account,
            metric_code=code,
            start_us=start_us,
            end_us=end_us,
            filters=pairs,
            min_index=self._session.min_index(partition),
            catalog_version=self._session.catalog_version,
        )
        reply = await self._call(partition, request, self._deadline())
        return convert.usage_result(convert.expect(reply, AggReply))

    async def query_realtime(self, account_id: int, metric_code: str) -> AggValue:
        """The current period's aggregate, from the leader's memory."""
        account = convert.account_id(account_id)
        code = convert.metric_code(metric_code)
        if self._state is _State.OPEN:
            partition = self._map.partition_of(account)
        else:
            partition = await self._partition_of(account)
        request = QueryRealtime(
            partition=partition,
            account_id=account,
            metric_code=code,
            catalog_version=self._session.catalog_version,
        )
        reply = await self._call(partition, request, self._deadline())
        return convert.expect(reply, AggReply).value

    async def query_breakdown(
        self,
        account_id: int,
        metric_code: str,
        period: Period,
        group_by: Iterable[str],
        filters: Mapping[str, str] | None = None,
    ) -> dict[frozenset[tuple[str, str]], AggValue]:
        """One aggregate per non-empty combination of the ``group_by`` dimensions' values."""
        account = convert.account_id(account_id)
        code = convert.metric_code(metric_code)
        start_us, end_us = convert.period_us(period)
        keys = convert.group_by(group_by)
        pairs = convert.filters(filters)
        partition = await self._partition_of(account)
        request = QueryBreakdown(
            partition=partition,
            account_id=account,
            metric_code=code,
            start_us=start_us,
            end_us=end_us,
            group_by=keys,
            filters=pairs,
            min_index=self._session.min_index(partition),
            catalog_version=self._session.catalog_version,
        )
        reply = await self._call(partition, request, self._deadline())
        return convert.breakdown(convert.expect(reply, BreakdownReply))

    def list_events(
        self, account_id: int, since: datetime, until: datetime, *, after_offset: int | None = None
    ) -> AsyncIterator[EventRecord]:
        """The account's stored events with timestamps in ``[since, until)``, fetched in pages,
        in offset order; with ``after_offset`` (the ``offset`` of a record seen before) only
        those stored after it (to follow an account's new events)."""
        account = convert.account_id(account_id)
        since_us, until_us = convert.time_range_us(since, until)
        start = convert.cursor(after_offset, "after_offset")

        async def fetch(after: int) -> tuple[list[EventRecord], int | None]:
            partition = await self._partition_of(account)
            request = ListEvents(
                partition=partition,
                account_id=account,
                since_us=since_us,
                until_us=until_us,
                after_offset=after,
                limit=limits.list_page_events_max,
                min_index=self._session.min_index(partition),
            )
            page = convert.expect(
                await self._call(partition, request, self._deadline()), EventsPage
            )
            return [convert.event_record(e) for e in page.events], page.next_offset

        return Pages(fetch, start)

    async def list_alerts(self, account_id: int, since: int | None = None) -> list[AlertRecord]:
        """The account's alerts after the cursor ``since`` (all of them when None)."""
        account = convert.account_id(account_id)
        after = convert.cursor(since, "since")
        out: list[AlertRecord] = []
        async for record in Pages(lambda cursor: self._alerts_page(account, cursor), after):
            out.append(record)
        return out

    async def cluster_status(self) -> ClusterStatusReply:
        await self._ensure_open()
        reply = await self._call(ANY_NODE, ClusterStatus(), self._deadline())
        status = convert.expect(reply, ClusterStatusReply)
        self._session.note_catalog(status.catalog_version)
        return status

    async def _alerts_page(self, account: int, after: int) -> tuple[list[AlertRecord], int | None]:
        partition = await self._partition_of(account)
        request = ListAlerts(
            partition=partition,
            account_id=account,
            after_cursor=after,
            limit=limits.list_page_alerts_max,
            min_index=self._session.min_index(partition),
        )
        page = convert.expect(await self._call(partition, request, self._deadline()), AlertsPage)
        return [convert.alert_record(a) for a in page.alerts], page.next_cursor

    # ------------------------------------------------------------------ routing and retries

    async def _call(
        self,
        target: int,
        request: Request,
        deadline: float,
        attempts: Attempts | None = None,
        failed: UnimeterError | None = None,
    ) -> Reply:
        """Send ``request`` to the node serving ``target`` (a partition or ``ANY_NODE``),
        retrying retriable failures until ``deadline``; ``failed`` is the retriable error of an
        attempt the caller already made."""
        if attempts is None and failed is None:
            # The common case, without the retry machinery's allocations: the first attempt on
            # a connection that is already open. Anything else takes the general path.
            try:
                connection = self._pool.ready(self._router.address_for(target))
            except UnimeterError:
                connection = None  # no leader known: the general path retries that
            if connection is not None:
                try:
                    return await connection.request(request, deadline)
                except UnimeterError as exc:
                    if not exc.retriable:
                        raise
                    failed = exc

        async def attempt() -> Reply:
            connection = await self._pool.get(self._address_for(target), deadline)
            return await connection.request(request, deadline)

        def before_retry(exc: UnimeterError) -> None:
            if self._closed():
                raise ClosedError("the client is closed") from exc
            self._reroute(target, exc)

        return await retry_until(
            attempt,
            deadline=deadline,
            backoff=Backoff(self._rng),
            before_retry=before_retry,
            attempts=attempts,
            failed=failed,
        )

    def _start(self, target: int, request: Request, deadline: float) -> Exchange | None:
        """Write ``request`` to ``target``'s node now, if its connection is open and free."""
        try:
            connection = self._pool.ready(self._router.address_for(target))
            return None if connection is None else connection.start(request, deadline)
        except UnimeterError as exc:
            if exc.retriable:
                return None  # the general path retries it
            raise

    async def _catalog_call(self, request: Request, attempts: Attempts) -> Reply:
        await self._ensure_open()
        return await self._call(ANY_NODE, request, self._deadline(), attempts)

    def _address_for(self, target: int) -> str:
        return self._router.address_for(target)

    def _reroute(self, target: int, exc: UnimeterError) -> None:
        """Learn from a retriable failure where ``target``'s requests go now."""
        if self._router.reroute(target, exc):
            self._refresh_soon()

    async def _partition_of(self, account_id: int) -> int:
        await self._ensure_open()
        return self._map.partition_of(account_id)

    def _closed(self) -> bool:
        return self._state is _State.CLOSED

    async def _ensure_open(self) -> None:
        if self._state is not _State.OPEN:
            if self._state is _State.CLOSED:
                raise ClosedError("the client is closed")
            await self.connect()

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._request_timeout

    # ------------------------------------------------------------------ the partition map

    async def _fetch_map_from(self, addresses: list[str], deadline: float) -> list[str] | None:
        """Ask each address in turn for the map and adopt the first answer; None on success,
        else one "address (reason)" per address that failed. Each address gets an equal share
        of the time left, so one silent node cannot use up the whole deadline."""
        loop = asyncio.get_running_loop()
        failures: list[str] = []
        for position, address in enumerate(addresses):
            share = (deadline - loop.time()) / (len(addresses) - position)
            attempt_deadline = loop.time() + share
            try:
                connection = await self._pool.get(address, attempt_deadline)
                reply = await connection.request(GetPartitionMap(), attempt_deadline)
                self._adopt_map(convert.expect(reply, PartitionMap), connection.welcome)
                if connection.welcome is not None:
                    node_address = self._map.nodes.get(connection.welcome.node_id)
                    if node_address is not None and node_address != address:
                        self._pool.alias(node_address, connection)
                return None
            except AuthError:
                raise  # the same credentials would fail everywhere
            except UnimeterError as exc:
                failures.append(f"{address} ({exc.message or type(exc).__name__})")
        return failures

    def _adopt_map(self, new: PartitionMap, welcome: Welcome | None) -> None:
        if self._map.apply(new):
            log.debug("partition map epoch %d: %d partitions", new.epoch, new.partitions)
        if welcome is not None:
            announced = welcome.limits
            self._events_per_batch_max = _lower(
                self._events_per_batch_max, announced.get("events_per_batch_max")
            )
            self._frame_bytes_max = _lower(self._frame_bytes_max, announced.get("frame_bytes_max"))

    def _refresh_soon(self) -> None:
        if self._state is not _State.OPEN:
            return
        if self._map_fetch is None or self._map_fetch.done():
            self._map_fetch = asyncio.get_running_loop().create_task(
                self._refresh_map(), name="unimeter-map-fetch"
            )
            self._map_fetch.add_done_callback(_log_failure)

    async def _refresh_map(self) -> None:
        connected = self._pool.connected()
        candidates = list(dict.fromkeys([*connected, *self._map.addresses(), *self._seeds]))
        try:
            failures = await self._fetch_map_from(candidates, self._deadline())
        except UnimeterError as exc:
            failures = [str(exc)]
        if failures is None:
            self._refresh_failing = False
            self._pool.warm(self._map.addresses())
        else:
            # Every retry of every request asks for a refresh while the cluster is unreachable:
            # warn once per outage, not once per attempt.
            level = logging.DEBUG if self._refresh_failing else logging.WARNING
            self._refresh_failing = True
            log.log(level, "partition map refresh failed: %s", "; ".join(failures))

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(limits.map_refresh_s)
            self._refresh_soon()


class _Sender:
    """``ingest.Sender`` for this client: writes at once on an open connection, else takes
    the retrying path."""

    __slots__ = ("_client",)

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def start(self, target: int, request: Request, deadline: float) -> Exchange | None:
        return self._client._start(target, request, deadline)

    async def call(
        self,
        target: int,
        request: Request,
        deadline: float,
        failed: UnimeterError | None = None,
    ) -> Reply:
        return await self._client._call(target, request, deadline, failed=failed)


def _log_failure(task: asyncio.Task[None]) -> None:
    # A background task's failure is a bug; say so rather than "exception never retrieved".
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", task.get_name(), exc_info=exc)


def _lower(current: int, announced: object) -> int:
    if isinstance(announced, int) and not isinstance(announced, bool) and announced > 0:
        return min(current, announced)
    return current
