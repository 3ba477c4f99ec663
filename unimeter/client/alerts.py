"""``client.alerts``: live alert subscriptions (docs/client.md, docs/protocol.md §12).

::

    async with client.alerts.subscribe() as alerts:          # every account
        async for alert in alerts:                           # AlertRecord, committed only
            handle(alert)
            save(alerts.cursors)                             # {partition: cursor}
    ...
    client.alerts.subscribe(42, since=saved_cursor)          # one account, from a cursor
    client.alerts.subscribe(since=saved_cursors)             # every account, from cursors

Theory of operation. One task per partition followed (one for an account subscription, every
partition otherwise) keeps a subscription at that partition's leader: it sends
SUBSCRIBE_ALERTS from the newest cursor it has queued, pages through the backlog, and once the
server says the subscription is live, takes the pushes of the shared connection (``_Stream``,
a ``PushSink``) until the subscription ends. Whatever ends it -- a leader change, a restart or
a lost connection (retriable errors, re-routed like any request), a server that found us too
slow (BACKPRESSURE) -- the task subscribes again from its cursor, so nothing is missed, and an
alert seen twice (same partition, cursor not above the last one queued) is dropped, so nothing
is handed out twice. Only a non-retriable error ends the subscription; the iterator raises it
once the alerts queued before it are consumed.

The queue between the tasks and the consumer holds at most ``queue_max`` alerts. A live
stream that finds it full drops the rest of that push, unsubscribes, and waits until the
consumer has drained half of the queue, then catches up from its cursor like after any other
end: a slow consumer costs bounded memory here and on the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

from unimeter import limits
from unimeter.errors import ClosedError, InvalidRequestError, UnimeterError, error_for
from unimeter.model import AlertRecord
from unimeter.wire.messages import (
    AlertsPush,
    Push,
    StoredAlert,
    SubscribeAlerts,
    Subscribed,
    UnsubscribeAlerts,
)

from . import convert
from .connection import Connection
from .retry import Backoff

if TYPE_CHECKING:
    from .client import AsyncClient

log = logging.getLogger("unimeter.client")

_UNSUBSCRIBE_TIMEOUT_S = 1.0

# ``since``: a cursor (one account's subscription), or partition -> cursor, or None.
Since = int | Mapping[int, int] | None


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class AlertsApi:
    __slots__ = ("_client", "_open")

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._open: set[AlertSubscription] = set()

    def subscribe(
        self,
        account_id: int | None = None,
        *,
        since: Since = None,
        queue_max: int = limits.alert_queue_max_default,
    ) -> AlertSubscription:
        """Committed alerts of one account (or of every account when None), live, after the
        cursor(s) in ``since`` (every retained alert when None).

        For one account ``since`` is the ``cursor`` of its last alert you handled; for every
        account it is a mapping partition -> cursor, as ``AlertSubscription.cursors`` gives
        it. Use the result with ``async with`` (or call ``close``) so it stops promptly.
        """
        account = None if account_id is None else convert.account_id(account_id)
        if isinstance(queue_max, bool) or not isinstance(queue_max, int) or queue_max < 1:
            raise InvalidRequestError(f"queue_max must be a positive integer, got {queue_max!r}")
        if account is None and since is not None and not isinstance(since, Mapping):
            raise InvalidRequestError(
                "since must map partition -> cursor for a subscription to every account "
                "(use AlertSubscription.cursors)"
            )
        if isinstance(since, Mapping):
            since = {
                _partition_key(p): convert.cursor(c, f"since[{p!r}]") for p, c in since.items()
            }
        else:
            convert.cursor(since, "since")
        subscription = AlertSubscription(self, account, since, queue_max)
        return subscription

    async def close_all(self) -> None:
        await asyncio.gather(*(s.close() for s in list(self._open)))


def _partition_key(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"since: {value!r} is not a partition number")
    return value


class AlertSubscription:
    """An async iterator (and async context manager) of ``AlertRecord``s; see the module."""

    def __init__(self, api: AlertsApi, account: int | None, since: Since, queue_max: int) -> None:
        self._api = api
        self._client = api._client
        self._account = account
        self._since = since
        self._queue_max = queue_max
        self._queue: deque[tuple[int, AlertRecord]] = deque()
        self._queued: dict[int, int] = {}  # partition -> cursor of the newest alert queued
        self._delivered: dict[int, int] = {}  # partition -> cursor of the newest handed out
        self._state = _State.NEW
        self._start_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._item_waiters: list[asyncio.Future[None]] = []
        self._room_waiters: list[asyncio.Future[None]] = []

    @property
    def cursors(self) -> dict[int, int]:
        """Partition -> cursor of the last alert handed out (-1: none yet): pass it as
        ``since`` to a later subscription to go on exactly after it."""
        return dict(self._delivered)

    # ------------------------------------------------------------------ consumer side

    def __aiter__(self) -> AlertSubscription:
        return self

    async def __anext__(self) -> AlertRecord:
        await self.start()
        while True:
            if self._queue:
                partition, record = self._queue.popleft()
                self._delivered[partition] = record.cursor
                if len(self._queue) <= self._queue_max // 2:
                    _wake_all(self._room_waiters)
                return record
            if self._failure is not None:
                failure = self._failure
                if isinstance(failure, UnimeterError):
                    raise type(failure)(failure.message, leader=failure.leader)
                raise failure
            if self._state is _State.CLOSED:
                raise StopAsyncIteration
            await _wait(self._item_waiters)

    async def __aenter__(self) -> AlertSubscription:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect and start following (iterating starts it too)."""
        if self._state is not _State.NEW:
            return
        async with self._start_lock:
            if self._state is not _State.NEW:
                return
            client = self._client
            await client._ensure_open()
            partition_count = client._map.partitions
            if self._account is not None:
                partitions = [client._map.partition_of(self._account)]
            else:
                partitions = list(range(partition_count))
            since = self._since
            if isinstance(since, Mapping) and self._account is None:
                unknown = sorted(p for p in since if p >= partition_count)
                if unknown:
                    raise InvalidRequestError(
                        f"since names partition {unknown[0]}; the cluster has {partition_count}"
                    )
            default = -1 if isinstance(since, Mapping) else convert.cursor(since, "since")
            for p in partitions:
                cursor = since.get(p, default) if isinstance(since, Mapping) else default
                self._queued[p] = self._delivered[p] = cursor
            self._state = _State.RUNNING
            self._api._open.add(self)
            loop = asyncio.get_running_loop()
            for p in partitions:
                task = loop.create_task(self._follow(p), name=f"unimeter-alerts-p{p}")
                self._tasks.add(task)
                task.add_done_callback(self._task_done)

    async def close(self) -> None:
        """Stop following; iteration ends once the alerts already queued are consumed."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._api._open.discard(self)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        _wake_all(self._item_waiters)
        _wake_all(self._room_waiters)

    aclose = close

    # ------------------------------------------------------------------ the queue

    def enqueue(self, partition: int, alerts: tuple[StoredAlert, ...]) -> bool:
        """Queue the alerts not seen yet; False if the queue filled up before the last one."""
        last = self._queued[partition]
        taken = True
        for alert in alerts:
            if alert.cursor <= last:
                continue  # seen before (a repeat after subscribing again)
            if len(self._queue) >= self._queue_max:
                taken = False
                break
            self._queue.append((partition, convert.alert_record(alert)))
            last = alert.cursor
        self._queued[partition] = last
        _wake_all(self._item_waiters)
        return taken

    async def _wait_room(self) -> None:
        while len(self._queue) > self._queue_max // 2 and self._state is _State.RUNNING:
            await _wait(self._room_waiters)

    # ------------------------------------------------------------------ following a partition

    async def _follow(self, partition: int) -> None:
        client = self._client
        backoff = Backoff(client._rng)
        while True:
            await self._wait_room()
            stream = _Stream(self, partition)
            try:
                await self._session(stream)
            except ClosedError:
                return  # the client is closing; it closes this subscription too
            except UnimeterError as exc:
                if not exc.retriable:
                    self._fail(exc)
                    return
                if stream.went_live:
                    backoff = Backoff(client._rng)
                log.debug("alerts of partition %d: subscribing again after %s", partition, exc)
                client._reroute(partition, exc)
                await asyncio.sleep(backoff.next_delay())
            else:
                backoff = Backoff(client._rng)  # fell behind; subscribe again once drained

    async def _session(self, stream: _Stream) -> None:
        """One subscription at the partition's leader, from catch-up to its end. Returns when
        the queue filled up; raises the error that ended it otherwise."""
        client = self._client
        partition = stream.partition
        connection = await client._pool.get(client._address_for(partition), client._deadline())
        sid = connection.open_stream(stream)
        try:
            while True:
                room = max(1, self._queue_max - len(self._queue))
                request = SubscribeAlerts(
                    partition=partition,
                    subscription_id=sid,
                    account_id=self._account,
                    after_cursor=self._queued[partition],
                    limit=min(limits.list_page_alerts_max, room),
                    min_index=client._session.min_index(partition),
                )
                stream.asking = True  # until answered, it may have gone live on the node
                reply = await connection.request(request, client._deadline())
                stream.asking = False
                page = convert.expect(reply, Subscribed)
                taken = self.enqueue(partition, page.alerts)
                if page.next_cursor is None:
                    stream.went_live = True
                    if not taken:
                        return  # live already, but no room: drop it and catch up later
                    failure = await stream.run_live()
                    if failure is not None:
                        stream.ended_by_server = True
                        raise failure
                    return
                if not taken:
                    await self._wait_room()
        finally:
            connection.close_stream(sid)
            if (stream.went_live or stream.asking) and not stream.ended_by_server:
                await _unsubscribe(connection, sid)

    def _fail(self, failure: BaseException) -> None:
        if self._failure is None:
            self._failure = failure
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        _wake_all(self._item_waiters)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("alert subscription task %s failed", task.get_name(), exc_info=exc)
            self._fail(exc)


class _Stream:
    """The pushes of one live subscription, from the connection to the queue.

    Pushes may arrive before the task has queued the reply that made the subscription live
    (the reply only wakes the task; the pushes behind it are decoded at once), so they are held
    until ``run_live`` and queued after that reply's alerts, keeping cursor order.
    """

    __slots__ = (
        "_end",
        "_held",
        "_held_count",
        "_live",
        "asking",
        "ended",
        "ended_by_server",
        "partition",
        "subscription",
        "went_live",
    )

    def __init__(self, subscription: AlertSubscription, partition: int) -> None:
        self.subscription = subscription
        self.partition = partition
        self.went_live = False
        self.asking = False  # a SUBSCRIBE_ALERTS is unanswered (cancelled, timed out, failed)
        self.ended_by_server = False
        self.ended: asyncio.Future[UnimeterError | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._live = False
        self._held: list[tuple[StoredAlert, ...]] = []
        self._held_count = 0
        self._end: UnimeterError | None = None

    def push(self, message: Push) -> None:
        if self.ended.done() or self._end is not None:
            return
        if not isinstance(message, AlertsPush):
            self._finish(error_for(message.status, message.message, message.leader))
        elif self._live:
            self._take(message.alerts)
        elif self._held_count <= self.subscription._queue_max:
            self._held.append(message.alerts)
            self._held_count += len(message.alerts)

    def lost(self, failure: UnimeterError) -> None:
        if not self.ended.done() and self._end is None:
            self._finish(failure)

    async def run_live(self) -> UnimeterError | None:
        """Wait for the end: the error that ended it, or None if the queue filled up."""
        self._live = True
        held, self._held = self._held, []
        for alerts in held:
            self._take(alerts)
        if self._held_count > self.subscription._queue_max and not self.ended.done():
            self.ended.set_result(None)  # more held than the queue could take: behind
        if self._end is not None and not self.ended.done():
            self.ended.set_result(self._end)
        return await self.ended

    def _take(self, alerts: tuple[StoredAlert, ...]) -> None:
        if self.ended.done():
            return
        if not self.subscription.enqueue(self.partition, alerts):
            self.ended.set_result(None)

    def _finish(self, failure: UnimeterError) -> None:
        if self._live:
            self.ended.set_result(failure)
        else:
            self._end = failure  # after the held alerts, in run_live


async def _unsubscribe(connection: Connection, sid: int) -> None:
    """Best effort: a lost connection ends the subscription on the node anyway."""
    if not connection.usable:
        return
    deadline = asyncio.get_running_loop().time() + _UNSUBSCRIBE_TIMEOUT_S
    with contextlib.suppress(UnimeterError):
        await connection.request(UnsubscribeAlerts(subscription_id=sid), deadline)


async def _wait(waiters: list[asyncio.Future[None]]) -> None:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    finally:
        if not waiter.done():
            waiters.remove(waiter)


def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
    woken, waiters[:] = list(waiters), []
    for waiter in woken:
        if not waiter.done():
            waiter.set_result(None)
