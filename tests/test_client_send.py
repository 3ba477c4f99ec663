"""Unit tests of how the client sends: the task-free path of ``send_groups``, the connection's
started requests and shared writes, the single-timer deadlines, and the ``Router`` shared with
the simulator. Nothing here talks to a node: a scripted sender or transport stands in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from unimeter import (
    Event,
    InvalidRequestError,
    NotLeaderError,
    UnavailableError,
    UnknownMetricError,
    current_month,
    errors,
    periods,
)
from unimeter.client.batching import Group, build_groups
from unimeter.client.cluster_map import ANY_NODE, ClusterMap, Partitioner, Router
from unimeter.client.connection import Connection
from unimeter.client.deadlines import Deadlines
from unimeter.client.ingest import send_groups
from unimeter.client.session import Session
from unimeter.model import AggValue
from unimeter.wire import messages as m
from unimeter.wire.codec import ServerCodec, announced_limits

# --------------------------------------------------------------------------- send_groups


def reply(n: int, log_index: int = 1) -> m.IngestReply:
    return m.IngestReply(
        n_stored=n, n_duplicates=0, n_rejected=0, rejected=(), last_offset=None, log_index=log_index
    )


class FakePending:
    def __init__(self, sender: FakeSender, request: m.Ingest) -> None:
        self.sender = sender
        self.request = request
        self.future: asyncio.Future[m.Reply] = asyncio.get_running_loop().create_future()
        self.flushed = False
        self.abandoned = False

    def flush(self) -> None:
        self.flushed = True

    async def reply(self) -> m.Reply:
        assert self.flushed, "awaited before its frame was written"
        try:
            return await self.future
        except asyncio.CancelledError:
            self.abandoned = True  # as the connection's own reply() gives up when cancelled
            raise

    def abandon(self) -> None:
        self.abandoned = True


class FakeSender:
    """Starts every request (its answer set by the test) unless told to refuse a partition;
    the retrying path answers from a script."""

    def __init__(self, refuse: frozenset[int] = frozenset()) -> None:
        self.refuse = refuse
        self.started: list[FakePending] = []
        self.calls: list[tuple[m.Request, errors.UnimeterError | None]] = []
        self.call_outcomes: list[m.Reply | Exception] = []

    def start(self, target: int, request: m.Request, deadline: float) -> FakePending | None:
        if target in self.refuse:
            return None
        assert isinstance(request, m.Ingest) and request.partition == target
        pending = FakePending(self, request)
        self.started.append(pending)
        return pending

    async def call(
        self,
        target: int,
        request: m.Request,
        deadline: float,
        failed: errors.UnimeterError | None = None,
    ) -> m.Reply:
        self.calls.append((request, failed))
        await asyncio.sleep(0)
        outcome = self.call_outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def groups_over(partitions: int, n: int = 40) -> list[Group]:
    events = [Event(account_id=a, metric_code="m") for a in range(n)]
    groups = build_groups(events, Partitioner(partitions).many)
    assert len(groups) == partitions
    return groups


def far() -> float:
    return asyncio.get_running_loop().time() + 30


def windows_empty(session: Session, groups: list[Group]) -> bool:
    return all(session.window(g.partition).outstanding == frozenset() for g in groups)


async def answer_all(sender: FakeSender, outcomes: dict[int, m.Reply | Exception]) -> None:
    await asyncio.sleep(0)
    for pending in sender.started:
        outcome = outcomes[pending.request.partition]
        if isinstance(outcome, Exception):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)


async def test_every_group_is_started_and_written_before_any_reply_is_awaited() -> None:
    session = Session(producer_id=3)
    groups = groups_over(4)
    sender = FakeSender()
    outcomes: dict[int, m.Reply | Exception] = {
        g.partition: reply(len(g.origin), log_index=10 + g.partition) for g in groups
    }
    task = asyncio.ensure_future(send_groups(groups, session, sender, sync=True, deadline=far()))
    await answer_all(sender, outcomes)
    result = await task
    assert result.n_stored == 40
    assert [p.request.partition for p in sender.started] == [g.partition for g in groups]
    assert all(p.request.seq == 1 and p.request.sync for p in sender.started)
    assert all(p.flushed and not p.abandoned for p in sender.started)
    assert sender.calls == []
    assert windows_empty(session, groups)
    assert all(session.min_index(g.partition) == 10 + g.partition for g in groups)


async def test_a_retriable_first_failure_is_retried_with_the_same_message() -> None:
    session = Session(producer_id=3)
    groups = groups_over(3)
    sender = FakeSender()
    lost = UnavailableError("connection lost")
    outcomes: dict[int, m.Reply | Exception] = {g.partition: reply(len(g.origin)) for g in groups}
    outcomes[groups[1].partition] = lost
    sender.call_outcomes = [reply(len(groups[1].origin))]
    task = asyncio.ensure_future(send_groups(groups, session, sender, sync=False, deadline=far()))
    await answer_all(sender, outcomes)
    assert (await task).n_stored == 40
    [(request, failed)] = sender.calls
    assert request is sender.started[1].request  # same producer id and sequence number
    assert failed is lost
    assert windows_empty(session, groups)


async def test_groups_that_cannot_start_at_once_take_the_retrying_path() -> None:
    session = Session(producer_id=3)
    groups = groups_over(3)
    refused = groups[2].partition
    sender = FakeSender(refuse=frozenset({refused}))
    sender.call_outcomes = [reply(len(groups[2].origin))]
    outcomes: dict[int, m.Reply | Exception] = {g.partition: reply(len(g.origin)) for g in groups}
    task = asyncio.ensure_future(send_groups(groups, session, sender, sync=False, deadline=far()))
    await answer_all(sender, outcomes)
    assert (await task).n_stored == 40
    [(request, failed)] = sender.calls
    assert isinstance(request, m.Ingest) and request.partition == refused and failed is None
    assert windows_empty(session, groups)


async def test_a_refused_group_fails_the_call_with_what_settled_in_a_note() -> None:
    session = Session(producer_id=3)
    groups = groups_over(3)
    sender = FakeSender()
    outcomes: dict[int, m.Reply | Exception] = {g.partition: reply(len(g.origin)) for g in groups}
    outcomes[groups[0].partition] = UnknownMetricError("no such metric")
    task = asyncio.ensure_future(send_groups(groups, session, sender, sync=False, deadline=far()))
    await answer_all(sender, outcomes)
    with pytest.raises(UnknownMetricError) as info:
        await task
    [note] = info.value.__notes__
    assert f"{len(groups[0].origin)} event(s) in 1 batch(es) were not acknowledged" in note
    assert windows_empty(session, groups)


async def test_cancelling_the_call_gives_up_on_everything_in_flight() -> None:
    session = Session(producer_id=3)
    groups = groups_over(4)
    sender = FakeSender()
    task = asyncio.ensure_future(send_groups(groups, session, sender, sync=False, deadline=far()))
    await asyncio.sleep(0)
    sender.started[0].future.set_result(reply(len(groups[0].origin)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [p.abandoned for p in sender.started] == [False, True, True, True]
    assert windows_empty(session, groups)
    # The numbers are spent: the next batch of each partition gets the next one.
    assert session.window(groups[2].partition).try_acquire() == 2


async def test_cancelling_the_call_stops_the_retrying_groups_too() -> None:
    session = Session(producer_id=3)
    groups = groups_over(3)
    stuck = groups[0].partition
    sender = FakeSender(refuse=frozenset({stuck}))
    blocked = asyncio.Event()
    stopped: list[bool] = []

    async def call(*args: Any, **kwargs: Any) -> m.Reply:
        try:
            await blocked.wait()  # never set
        finally:
            stopped.append(True)
        raise AssertionError("unreachable")

    sender.call = call  # type: ignore[method-assign]
    task = asyncio.ensure_future(send_groups(groups, session, sender, sync=False, deadline=far()))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stopped == [True]
    assert all(p.abandoned for p in sender.started)
    assert windows_empty(session, groups)


async def test_a_full_window_waits_for_earlier_batches_until_the_deadline() -> None:
    session = Session(producer_id=3, window_size=1)
    groups = groups_over(2)
    busy = session.window(groups[1].partition)
    assert busy.try_acquire() == 1  # an earlier batch of that partition is unsettled
    sender = FakeSender()
    deadline = asyncio.get_running_loop().time() + 0.05
    task = asyncio.ensure_future(
        send_groups(groups, session, sender, sync=False, deadline=deadline)
    )
    await answer_all(sender, {groups[0].partition: reply(len(groups[0].origin))})
    with pytest.raises(errors.TimeoutError, match="earlier batches still unsettled"):
        await task
    assert len(sender.started) == 1 and sender.calls == []
    assert busy.outstanding == frozenset({1})


# --------------------------------------------------------------------------- the connection


class FakeTransport:
    """Answers HELLO; answers Query frames when ``answering``, else keeps silent."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.codec = ServerCodec()
        self.writes: list[int] = []  # frames per write call
        self.answering = True
        self.closing = False
        self.late: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writelines([data])

    def writelines(self, frames: list[bytes]) -> None:
        self.writes.append(len(frames))
        for frame in frames:
            self.codec.feed(frame)
            request = self.codec.next_frame()
            assert isinstance(request, m.RequestFrame)
            answer = self._answer(request)
            if isinstance(request.message, m.Hello) or self.answering:
                asyncio.get_running_loop().call_soon(self.connection.data_received, answer)
            else:
                self.late.append(answer)

    def _answer(self, request: m.RequestFrame) -> bytes:
        message: m.Reply
        if isinstance(request.message, m.Hello):
            message = m.Welcome(
                node_id=1,
                cluster_id="c",
                version=m.PROTOCOL_VERSION,
                limits=announced_limits(),
                partitions=1,
            )
        else:
            assert isinstance(request.message, m.Query)
            message = m.AggReply(
                value=AggValue(
                    sum=request.message.account_id,
                    count=1,
                    max=1,
                    last_value=1,
                    last_timestamp=None,
                    alert_flags=0,
                ),
                period_start_us=0,
                period_end_us=1,
            )
        return self.codec.encode_response(request.request_id, 0, message)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.connection.connection_lost, None)

    def abort(self) -> None:
        self.close()


async def open_connection(monkeypatch: pytest.MonkeyPatch) -> tuple[Connection, FakeTransport]:
    loop = asyncio.get_running_loop()
    connection = Connection("127.0.0.1:9")
    transport = FakeTransport(connection)

    async def create_connection(factory: Any, host: str, port: int) -> tuple[Any, Any]:
        protocol = factory()
        protocol.connection_made(transport)
        return transport, protocol

    monkeypatch.setattr(loop, "create_connection", create_connection)
    hello = m.Hello(version=m.PROTOCOL_VERSION, client_name="test")
    await connection.open(hello, loop.time() + 5)
    return connection, transport


def query(account: int, code: str = "m") -> m.Query:
    month = current_month()
    return m.Query(
        partition=0,
        account_id=account,
        metric_code=code,
        start_us=periods.to_us(month.start),
        end_us=periods.to_us(month.end),
    )


async def test_started_requests_share_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    connection, transport = await open_connection(monkeypatch)
    exchanges = [connection.start(query(a), far()) for a in (5, 6, 7)]
    assert transport.writes == [1]  # HELLO only: nothing written before the flush
    for exchange in exchanges:
        assert exchange is not None
        exchange.flush()
    assert transport.writes == [1, 3]
    replies = [await e.reply() for e in exchanges if e is not None]
    assert [r.value.sum for r in replies if isinstance(r, m.AggReply)] == [5, 6, 7]
    assert connection._pending == {}
    await connection.close()


async def test_an_unanswered_request_times_out_and_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection, transport = await open_connection(monkeypatch)
    transport.answering = False
    loop = asyncio.get_running_loop()
    with pytest.raises(errors.TimeoutError, match=r"Query to 127\.0\.0\.1:9 got no answer in time"):
        await connection.request(query(1), loop.time() + 0.02)
    assert connection._pending == {} and connection._codec.in_flight == 0
    connection.data_received(transport.late.pop())  # the late answer is dropped quietly
    transport.answering = True
    reply = await connection.request(query(2), far())
    assert isinstance(reply, m.AggReply) and reply.value.sum == 2
    await connection.close()


async def test_an_abandoned_request_frees_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    connection, transport = await open_connection(monkeypatch)
    transport.answering = False
    exchange = connection.start(query(1), far())
    assert exchange is not None
    exchange.flush()
    exchange.abandon()
    assert connection._pending == {} and connection._codec.in_flight == 0
    connection.data_received(transport.late.pop())
    await connection.close()


async def test_a_lost_connection_fails_what_is_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    connection, transport = await open_connection(monkeypatch)
    transport.answering = False
    exchange = connection.start(query(1), far())
    assert exchange is not None
    exchange.flush()
    transport.close()
    with pytest.raises(UnavailableError, match=r"lost 127\.0\.0\.1:9"):
        await exchange.reply()
    assert connection.start(query(2), far()) is None
    await connection.close()


async def test_a_message_that_cannot_be_encoded_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection, _ = await open_connection(monkeypatch)
    with pytest.raises(InvalidRequestError, match="cannot encode Query"):
        connection.start(query(2, "\ud800"), far())  # a lone surrogate has no UTF-8
    assert connection._pending == {}
    await connection.close()


# --------------------------------------------------------------------------- deadlines


@pytest.fixture
def futures() -> Iterator[dict[int, asyncio.Future[Any]]]:
    yield {}


async def test_deadlines_resolve_what_is_still_pending_in_order(
    futures: dict[int, asyncio.Future[Any]],
) -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, futures)
    now = loop.time()
    for request_id, delay in [(1, 0.03), (2, 0.01), (3, 0.02), (4, 0.02)]:
        futures[request_id] = loop.create_future()
        deadlines.add(now + delay, request_id)
    answered = futures.pop(3)  # answered in time: its entry must resolve nothing
    answered.set_result("reply")
    order: list[int] = []

    def note(request_id: int) -> None:
        futures[request_id].add_done_callback(lambda _: order.append(request_id))

    for request_id in (1, 2, 4):
        note(request_id)
    await asyncio.gather(*futures.values())
    assert order == [2, 4, 1]
    assert all(f.result() is None for f in futures.values())
    assert answered.result() == "reply"
    deadlines.close()


async def test_deadlines_of_answered_requests_do_not_pile_up(
    futures: dict[int, asyncio.Future[Any]],
) -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, futures)
    for request_id in range(10_000):
        futures[request_id] = loop.create_future()
        deadlines.add(loop.time() + 30, request_id)
        del futures[request_id]  # answered at once
        assert len(deadlines._heap) <= 2 * 1 + 64 + 1  # one was pending at each add
    deadlines.close()


# --------------------------------------------------------------------------- routing


def router_over(leaders: tuple[int, ...]) -> tuple[Router, ClusterMap]:
    cmap = ClusterMap()
    cmap.apply(
        m.PartitionMap(
            partitions=len(leaders), nodes={1: "a:1", 2: "b:2"}, leaders=leaders, epoch=1
        )
    )
    return Router(cmap, ["seed:1"]), cmap


def test_router_sends_partition_requests_to_the_leader_and_follows_hints() -> None:
    router, _ = router_over((1, 2, -1))
    assert [router.address_for(p) for p in (0, 1)] == ["a:1", "b:2"]
    with pytest.raises(UnavailableError, match="partition 2 has no known leader"):
        router.address_for(2)
    assert router.reroute(0, NotLeaderError("moved", leader="b:2"))
    assert router.address_for(0) == "b:2"
    assert router.reroute(0, UnavailableError("lost"))  # the hinted leader failed: forget it
    assert router.address_for(0) == "a:1"
    assert not router.reroute(0, errors.BackpressureError("full"))  # no routing lesson
    assert router.address_for(0) == "a:1"


def test_router_rotates_any_node_requests_after_routing_failures() -> None:
    router, _ = router_over((1, 1))
    assert router.address_for(ANY_NODE) == "a:1"
    assert router.reroute(ANY_NODE, UnavailableError("lost"))
    assert router.address_for(ANY_NODE) == "b:2"
    router.reroute(ANY_NODE, NotLeaderError("not the catalog leader", leader="c:3"))
    assert router.address_for(ANY_NODE) == "c:3"
    router.reroute(ANY_NODE, UnavailableError("lost"))
    assert router.address_for(ANY_NODE) == "a:1"


def test_router_uses_the_seeds_before_a_map_arrives() -> None:
    router = Router(ClusterMap(), ["s:1", "s:2"])
    assert router.address_for(ANY_NODE) == "s:1"
    router.reroute(ANY_NODE, UnavailableError("lost"))
    assert router.address_for(ANY_NODE) == "s:2"
