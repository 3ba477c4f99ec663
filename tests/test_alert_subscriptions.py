"""Live alert subscriptions against a real node process (``client.alerts.subscribe``).

Raw-frame cases pin the wire behaviour (the push after the live reply, the BACKPRESSURE end of
a reader that stopped reading, typed errors); client cases check what a billing user relies
on: every committed alert arrives once, in cursor order per partition, across a catch-up from
a cursor and across a SIGKILL of the node. Every wait is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.nodeproc import NodeProcess
from tests.test_bad_input import raw_frame
from unimeter import (
    AggType,
    AlertThreshold,
    AsyncClient,
    DeliveryMode,
    Event,
    InvalidRequestError,
    MetricSchema,
    errors,
    limits,
)
from unimeter.client.alerts import AlertSubscription
from unimeter.model import AlertRecord
from unimeter.routing import partition_of
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec

PARTITIONS = 4  # NodeProcess default
WAIT_S = 20.0

CALLS = MetricSchema(
    code="calls",
    agg_type=AggType.COUNT,
    thresholds=[AlertThreshold(code="ten", value=10), AlertThreshold("every_5", 5, recurring=True)],
)


def calls(account: int, n: int) -> list[Event]:
    return [Event(account_id=account, metric_code="calls", value=1) for _ in range(n)]


def accounts_in(partition: int, n: int) -> list[int]:
    return [a for a in range(10_000) if partition_of(a, PARTITIONS) == partition][:n]


async def take(sub: AlertSubscription, n: int) -> list[AlertRecord]:
    out: list[AlertRecord] = []
    async with asyncio.timeout(WAIT_S):
        while len(out) < n:
            out.append(await anext(sub))
    return out


async def all_alerts(client: AsyncClient, accounts: list[int]) -> dict[tuple[int, int], object]:
    """Every stored alert of ``accounts``, keyed by (partition, cursor)."""
    out: dict[tuple[int, int], object] = {}
    for account in accounts:
        for alert in await client.list_alerts(account):
            out[(partition_of(account, PARTITIONS), alert.cursor)] = alert
    return out


def by_cursor(records: list[AlertRecord]) -> dict[tuple[int, int], object]:
    out: dict[tuple[int, int], object] = {}
    for record in records:
        key = (partition_of(record.account_id, PARTITIONS), record.cursor)
        assert key not in out, f"alert {key} delivered twice"
        out[key] = record
    return out


def assert_cursor_order(records: list[AlertRecord]) -> None:
    last: dict[int, int] = {}
    for record in records:
        p = partition_of(record.account_id, PARTITIONS)
        assert record.cursor > last.get(p, -1), f"partition {p} went back to {record.cursor}"
        last[p] = record.cursor


@pytest.fixture
async def client(node: NodeProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient([node.address], request_timeout=10) as c:
        await c.metrics.create(CALLS)
        yield c


# --------------------------------------------------------------------------- raw frames


class RawSubscriber:
    """Frames by hand, reading only when asked (so it can play a reader that fell behind)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = ClientCodec()
        self.next_id = 1

    @classmethod
    async def open(cls, node: NodeProcess, *, small_window: bool = False) -> RawSubscriber:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if small_window:  # a slow reader's window: keeps what the kernels absorb small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", node.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        raw = cls(reader, writer)
        welcome = await raw.call(m.Hello(version=m.PROTOCOL_VERSION, client_name="raw"))
        assert welcome.status == errors.Status.OK
        return raw

    def send(self, msg: m.Request) -> int:
        rid = self.next_id
        self.next_id += 1
        self.writer.write(self.codec.encode_request(rid, msg))
        return rid

    async def call(self, msg: m.Request) -> m.ResponseFrame:
        rid = self.send(msg)
        frame = await self.event()
        assert isinstance(frame, m.ResponseFrame) and frame.request_id == rid, frame
        return frame

    async def event(self) -> m.ResponseFrame | m.PushFrame:
        async with asyncio.timeout(WAIT_S):
            while True:
                frame = self.codec.next_event()
                if frame is not None:
                    return frame
                data = await self.reader.read(1 << 16)
                if not data:
                    raise ConnectionError("closed by the node")
                self.codec.feed(data)

    async def push(self) -> m.PushFrame:
        frame = await self.event()
        assert isinstance(frame, m.PushFrame), frame
        return frame

    def close(self) -> None:
        self.writer.close()


async def test_a_live_subscription_gets_the_alert_pushed_once_committed(
    node: NodeProcess, client: AsyncClient
) -> None:
    account = 42
    p = partition_of(account, PARTITIONS)
    # Fires every_5 before anyone subscribes (SYNC: the raw subscriber sends no min_index).
    await client.ingest(calls(account, 5), delivery=DeliveryMode.SYNC)
    raw = await RawSubscriber.open(node)
    live = await raw.call(m.SubscribeAlerts(partition=p, subscription_id=7, account_id=account))
    assert isinstance(live.message, m.Subscribed)
    assert [a.threshold_code for a in live.message.alerts] == ["every_5"]  # the backlog
    assert live.message.next_cursor is None  # live now
    assert live.message.live_from == 1

    await client.ingest(calls(account, 5))  # total 10: both thresholds cross
    await client.ingest(calls(account + 1, 5), delivery=DeliveryMode.SYNC)  # another account
    push = await raw.push()
    assert push.subscription_id == 7
    assert isinstance(push.message, m.AlertsPush) and push.message.partition == p
    assert [(a.threshold_code, a.value_at_cross) for a in push.message.alerts] == [
        ("ten", 10),
        ("every_5", 10),
    ]
    assert [a.cursor for a in push.message.alerts] == [1, 2]
    stored = await client.list_alerts(account)
    assert [a.cursor for a in stored] == [0, 1, 2]

    # Unsubscribed: nothing more is pushed; the reply to the next request comes next.
    assert (await raw.call(m.UnsubscribeAlerts(subscription_id=7))).status == errors.Status.OK
    await client.ingest(calls(account, 5), delivery=DeliveryMode.SYNC)
    status = await raw.call(m.ClusterStatus())
    assert status.status == errors.Status.OK
    raw.close()


async def test_a_reader_that_falls_behind_is_ended_then_catches_up_without_gaps(
    node: NodeProcess, client: AsyncClient
) -> None:
    """Every event crosses a recurring threshold of 1 with long codes: a few MB of pushes, more
    than the kernels hold, to a reader that does not read. The node ends the subscription with
    BACKPRESSURE instead of buffering; paging from the last cursor then gets the rest."""
    code, threshold = "m" * 64, "t" * 64
    await client.metrics.create(
        MetricSchema(
            code=code, agg_type=AggType.COUNT, thresholds=[AlertThreshold(threshold, 1, True)]
        )
    )
    account = 7
    p = partition_of(account, PARTITIONS)
    raw = await RawSubscriber.open(node, small_window=True)
    live = await raw.call(m.SubscribeAlerts(partition=p, subscription_id=1))
    assert isinstance(live.message, m.Subscribed) and live.message.next_cursor is None

    events = [Event(account_id=account, metric_code=code, value=1) for _ in range(5_000)]
    fired = len(events) * -(-pushed_bytes_to_overflow() // (PUSHED_ALERT_BYTES * len(events)))
    for _ in range(fired // len(events)):
        await client.ingest(events, delivery=DeliveryMode.SYNC)

    cursors: list[int] = []
    while True:
        push = await raw.push()
        assert push.subscription_id == 1
        if isinstance(push.message, m.SubscriptionEnd):
            assert push.message.status == errors.Status.BACKPRESSURE
            assert push.message.partition == p
            break
        cursors += [a.cursor for a in push.message.alerts]
    assert 0 < len(cursors) < fired
    assert cursors == list(range(len(cursors)))  # in order, none skipped before the end

    # Catch up from the last cursor: pages until live, nothing twice, nothing missing.
    after = cursors[-1]
    while True:
        page = await raw.call(m.SubscribeAlerts(partition=p, subscription_id=1, after_cursor=after))
        assert isinstance(page.message, m.Subscribed)
        cursors += [a.cursor for a in page.message.alerts]
        if page.message.next_cursor is None:
            break
        after = page.message.next_cursor
    assert cursors == list(range(fired))
    raw.close()


PUSHED_ALERT_BYTES = 150  # one alert with 64-byte codes, as pushed (measured: 149)


def pushed_bytes_to_overflow() -> int:
    """More than the kernels take without the node noticing (its socket's send buffer grows to
    tcp_wmem's maximum; the reader's window is small), plus the node's own bound."""
    try:
        send_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        send_max = 4 << 20
    return send_max * 3 // 2 + limits.alert_push_buffer_bytes_max + (1 << 20)


async def test_bad_subscription_requests_get_typed_errors(
    node: NodeProcess, client: AsyncClient
) -> None:
    raw = await RawSubscriber.open(node)
    account = 42
    p = partition_of(account, PARTITIONS)
    other = (p + 1) % PARTITIONS

    async def refused(msg: m.Request, status: errors.Status, text: str) -> None:
        frame = await raw.call(msg)
        assert frame.status == status, frame
        assert isinstance(frame.message, m.ErrorReply) and text in frame.message.message

    invalid = errors.Status.INVALID_REQUEST
    await refused(m.SubscribeAlerts(partition=PARTITIONS, subscription_id=1), invalid, "not exist")
    await refused(
        m.SubscribeAlerts(partition=other, subscription_id=1, account_id=account),
        invalid,
        f"lives in partition {p}",
    )
    # A body the codec refuses, sent as raw CBOR (the codec is told to expect its reply): a
    # page of 0 names the field.
    rid = raw.next_id
    raw.next_id += 1
    raw.codec.encode_request(rid, m.SubscribeAlerts(partition=p, subscription_id=1))
    raw.writer.write(raw_frame([int(m.Kind.SUBSCRIBE_ALERTS), rid, {"p": p, "s": 1, "l": 0}]))
    frame = await raw.event()
    assert isinstance(frame, m.ResponseFrame) and frame.status == invalid
    assert "SubscribeAlerts.limit" in frame.message.message  # type: ignore[union-attr]

    live = await raw.call(m.SubscribeAlerts(partition=p, subscription_id=1))
    assert isinstance(live.message, m.Subscribed)
    await refused(m.SubscribeAlerts(partition=other, subscription_id=1), invalid, "already in use")
    # Unsubscribing is idempotent; the id is free again afterwards.
    for _ in range(2):
        assert (await raw.call(m.UnsubscribeAlerts(subscription_id=1))).status == errors.Status.OK
    again = await raw.call(m.SubscribeAlerts(partition=other, subscription_id=1))
    assert isinstance(again.message, m.Subscribed)
    raw.close()

    # The client refuses what cannot be right before sending anything.
    with pytest.raises(InvalidRequestError, match="partition -> cursor"):
        client.alerts.subscribe(since=3)
    with pytest.raises(InvalidRequestError, match="queue_max"):
        client.alerts.subscribe(account, queue_max=0)
    with pytest.raises(InvalidRequestError, match="since"):
        client.alerts.subscribe(account, since=-5)
    with pytest.raises(InvalidRequestError, match="names partition 9"):
        await client.alerts.subscribe(since={9: 0}).start()


# --------------------------------------------------------------------------- the client


async def test_subscription_delivers_live_and_catches_up_from_cursors(
    node: NodeProcess, client: AsyncClient
) -> None:
    accounts = [a for p in range(PARTITIONS) for a in accounts_in(p, 2)]
    for account in accounts:
        await client.ingest(calls(account, 5))  # one every_5 alert each
    async with client.alerts.subscribe() as sub:
        first = await take(sub, len(accounts))
        # Live: alerts fired after the backlog arrive without asking again.
        await client.ingest(calls(accounts[0], 5))
        first += await take(sub, 2)
        saved = sub.cursors
    assert_cursor_order(first)
    assert {r.account_id for r in first[-2:]} == {accounts[0]}

    # Alerts fired while nobody listens arrive from the saved cursors, and nothing twice:
    # accounts[0] reaches 15 (every_5), the next two reach 10 (ten and every_5).
    for account in accounts[:3]:
        await client.ingest(calls(account, 5))
    async with client.alerts.subscribe(since=saved) as sub:
        later = await take(sub, 5)
    expected = [(accounts[0], 15), *[(accounts[1], 10)] * 2, *[(accounts[2], 10)] * 2]
    assert sorted((r.account_id, r.value_at_cross) for r in later) == sorted(expected)
    got = by_cursor(first + later)
    assert got == await all_alerts(client, accounts)

    # One account, from a cursor of its own.
    own = await client.list_alerts(accounts[0])
    async with client.alerts.subscribe(accounts[0], since=own[0].cursor) as sub:
        assert await take(sub, len(own) - 1) == own[1:]


async def test_a_slow_consumer_gets_every_alert_once_with_a_bounded_queue(
    node: NodeProcess, client: AsyncClient
) -> None:
    await client.metrics.create(
        MetricSchema(code="each", agg_type=AggType.COUNT, thresholds=[AlertThreshold("e", 1, True)])
    )
    account = 5
    async with client.alerts.subscribe(account, queue_max=16) as sub:
        await client.ingest([Event(account_id=account, metric_code="each")])
        [first] = await take(sub, 1)  # the stream is live once this arrived
        await client.ingest(
            [Event(account_id=account, metric_code="each") for _ in range(400)],
            delivery=DeliveryMode.SYNC,
        )
        rest = await take(sub, 400)
        assert sub._queue.maxlen is None and len(sub._queue) <= 16
    assert [r.cursor for r in [first, *rest]] == list(range(401))


async def test_a_subscriber_gets_every_alert_exactly_once_across_a_sigkill(
    tmp_path: Path,
) -> None:
    node = NodeProcess(tmp_path / "data").start()
    try:
        async with AsyncClient([node.address], request_timeout=30) as client:
            await client.metrics.create(CALLS)
            accounts = [a for p in range(PARTITIONS) for a in accounts_in(p, 2)]
            async with client.alerts.subscribe() as sub:
                for account in accounts:
                    await client.ingest(calls(account, 5), delivery=DeliveryMode.SYNC)
                before = await take(sub, len(accounts))

                node.kill()
                node.start()
                # Fired after the restart, some possibly before the subscriber is back.
                for account in accounts:
                    await client.ingest(calls(account, 5), delivery=DeliveryMode.SYNC)
                after = await take(sub, 2 * len(accounts))  # "ten" and "every_5" each
            records = before + after
            assert_cursor_order(records)
            assert by_cursor(records) == await all_alerts(client, accounts)
    finally:
        node.kill()
