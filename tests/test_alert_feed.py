"""The two ends of a live alert subscription, without sockets.

Node side: ``ConnectionFeeds`` and ``AlertHub`` (unimeter/actors/alert_feed.py) with a fake
connection whose send buffer size the test sets, so the BACKPRESSURE end is exact. Client side:
the subscription's bounded queue and ``_Stream`` (unimeter/client/alerts.py), fed pushes the way
the connection feeds them.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from unimeter import errors, limits
from unimeter.actors.alert_feed import AlertHub, ConnectionFeeds
from unimeter.actors.mailbox import Mailbox
from unimeter.client.alerts import AlertsApi, AlertSubscription, _State, _Stream
from unimeter.consensus.config import Role
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec, ServerCodec

OK = errors.Status.OK


def alert(cursor: int, account: int = 1) -> m.StoredAlert:
    return m.StoredAlert(
        account_id=account,
        metric_code="calls",
        threshold_code="t",
        value_at_cross=cursor,
        triggered_at_us=0,
        cursor=cursor,
    )


# --------------------------------------------------------------------------- node side


class FakeTransport:
    def __init__(self) -> None:
        self.out = b""
        self.waiting_bytes = 0  # what get_write_buffer_size reports

    def write(self, data: bytes) -> None:
        self.out += data

    def get_write_buffer_size(self) -> int:
        return self.waiting_bytes

    def is_closing(self) -> bool:
        return False


class FakeConnection:
    """What the feeds use of ``ClientConnection``; replies are recorded, not framed."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.codec = ServerCodec()
        self.transport: FakeTransport | None = FakeTransport()
        self.peer = "test"
        self.replies: list[tuple[int, int, m.Reply]] = []
        self.feeds = ConnectionFeeds(self)  # type: ignore[arg-type]

    def respond(self, request_id: int, status: int, message: m.Reply) -> None:
        self.replies.append((request_id, status, message))

    def flush(self) -> None:
        """Replies are recorded at once here: nothing waits to be written."""

    def pushes(self) -> list[m.PushFrame]:
        assert self.transport is not None
        codec = ClientCodec()
        codec.feed(self.transport.out)
        self.transport.out = b""
        out = []
        while (frame := codec.next_event()) is not None:
            assert isinstance(frame, m.PushFrame)
            out.append(frame)
        return out


def make_node(mailbox_capacity: int = 8) -> Any:
    core = SimpleNamespace(
        role=Role.LEADER,
        raft=SimpleNamespace(term=3),
        leader_id=1,
        node_id=1,
        addresses={1: "a:1", 2: "b:2"},
    )
    runtime = SimpleNamespace(mailbox=Mailbox(mailbox_capacity), alert_hub=AlertHub(0), core=core)
    return SimpleNamespace(
        node_id=1,
        partition_count=2,
        route=lambda account: account % 2,
        partitions={0: runtime},
        leader_of=lambda p: 2,
        addresses={1: "a:1", 2: "b:2"},
        runtime=runtime,
    )


def answer(node: Any, status: int, reply: m.Reply) -> None:
    """The partition core's answer to the one subscription request in its mailbox."""
    [request] = node.runtime.mailbox.drain()
    request.token.send(status, reply)


def live(
    conn: FakeConnection, sid: int = 5, account: int | None = None, live_from: int = 0
) -> None:
    conn.feeds.subscribe(1, m.SubscribeAlerts(partition=0, subscription_id=sid, account_id=account))
    answer(conn.node, OK, m.Subscribed(alerts=(), next_cursor=None, live_from=live_from))


def test_pushes_start_at_live_from_and_keep_to_the_account() -> None:
    node = make_node()
    conn = FakeConnection(node)
    live(conn, sid=5, account=2, live_from=4)
    assert conn.replies[-1][1] == OK
    hub: AlertHub = node.runtime.alert_hub
    # The step that made it live may also carry alerts from before live_from: not pushed.
    hub.after_step(
        [alert(3, account=2), alert(4, account=2), alert(5, account=4)], node.runtime.core
    )
    hub.after_step([alert(6, account=2)], node.runtime.core)
    hub.after_step([], node.runtime.core)
    frames = conn.pushes()
    assert [(f.subscription_id, [a.cursor for a in f.message.alerts]) for f in frames] == [  # type: ignore[union-attr]
        (5, [4]),
        (5, [6]),
    ]


def test_a_big_step_is_pushed_in_frames_of_at_most_a_page() -> None:
    node = make_node()
    conn = FakeConnection(node)
    live(conn)
    many = [alert(c) for c in range(2 * limits.list_page_alerts_max + 1)]
    node.runtime.alert_hub.after_step(many, node.runtime.core)
    sizes = [len(f.message.alerts) for f in conn.pushes()]  # type: ignore[union-attr]
    assert sizes == [limits.list_page_alerts_max, limits.list_page_alerts_max, 1]


def test_a_reader_that_falls_behind_is_ended_with_backpressure_once() -> None:
    node = make_node()
    conn = FakeConnection(node)
    live(conn, sid=9)
    hub: AlertHub = node.runtime.alert_hub
    hub.after_step([alert(0)], node.runtime.core)
    assert conn.transport is not None
    conn.transport.waiting_bytes = limits.alert_push_buffer_bytes_max + 1
    hub.after_step([alert(1)], node.runtime.core)
    hub.after_step([alert(2)], node.runtime.core)
    frames = conn.pushes()
    assert [type(f.message) for f in frames] == [m.AlertsPush, m.SubscriptionEnd]
    end = frames[1].message
    assert isinstance(end, m.SubscriptionEnd) and end.status == errors.Status.BACKPRESSURE
    assert not hub.subs and 9 not in conn.feeds.subs  # the id is free to subscribe again


def test_losing_leadership_ends_every_subscription_naming_the_leader() -> None:
    node = make_node()
    conns = [FakeConnection(node), FakeConnection(node)]
    for conn in conns:
        live(conn)
    core = node.runtime.core
    core.role, core.leader_id = Role.FOLLOWER, 2
    node.runtime.alert_hub.after_step([alert(0)], core)  # applied while still subscribed
    for conn in conns:
        push, end = conn.pushes()
        assert isinstance(push.message, m.AlertsPush)
        assert end.message == m.SubscriptionEnd(
            partition=0,
            status=errors.Status.NOT_LEADER,
            message="node 1 no longer leads partition 0",
            leader="b:2",
        )
    assert not node.runtime.alert_hub.subs


def test_a_new_term_ends_subscriptions_made_in_the_old_one() -> None:
    node = make_node()
    conn = FakeConnection(node)
    live(conn)
    node.runtime.core.raft.term = 4  # re-elected: it may have missed nothing, but cannot know
    node.runtime.alert_hub.after_step([], node.runtime.core)
    [end] = conn.pushes()
    assert isinstance(end.message, m.SubscriptionEnd)
    assert end.message.status == errors.Status.NOT_LEADER


def test_only_the_last_catch_up_page_goes_live() -> None:
    node = make_node()
    conn = FakeConnection(node)
    request = m.SubscribeAlerts(partition=0, subscription_id=5)
    conn.feeds.subscribe(1, request)
    answer(node, OK, m.Subscribed(alerts=(alert(0),), next_cursor=0, live_from=9))
    assert 5 not in conn.feeds.subs and not node.runtime.alert_hub.subs
    conn.feeds.subscribe(2, request)  # the next page, same id
    answer(node, errors.Status.NOT_LEADER, m.ErrorReply(message="moved"))
    assert 5 not in conn.feeds.subs and not node.runtime.alert_hub.subs
    assert [r[1] for r in conn.replies] == [OK, errors.Status.NOT_LEADER]


def test_unsubscribing_while_pending_keeps_it_from_going_live() -> None:
    node = make_node()
    conn = FakeConnection(node)
    conn.feeds.subscribe(1, m.SubscribeAlerts(partition=0, subscription_id=5))
    conn.feeds.unsubscribe(2, m.UnsubscribeAlerts(subscription_id=5))
    answer(node, OK, m.Subscribed(alerts=(), next_cursor=None, live_from=0))
    assert not node.runtime.alert_hub.subs
    node.runtime.alert_hub.after_step([alert(0)], node.runtime.core)
    assert conn.pushes() == []
    assert [(r[0], r[1]) for r in conn.replies] == [(2, OK), (1, OK)]


def test_a_closed_connection_leaves_the_hub() -> None:
    node = make_node()
    conn = FakeConnection(node)
    live(conn, sid=1)
    live(conn, sid=2)
    assert len(node.runtime.alert_hub.subs) == 2
    conn.feeds.close_all()
    assert not node.runtime.alert_hub.subs and not conn.feeds.subs


@pytest.mark.parametrize(
    ("request_", "status", "text"),
    [
        (m.SubscribeAlerts(partition=5, subscription_id=1), "INVALID_REQUEST", "does not exist"),
        (
            m.SubscribeAlerts(partition=0, subscription_id=1, account_id=3),
            "INVALID_REQUEST",
            "account 3 lives in partition 1, not 0",
        ),
        (m.SubscribeAlerts(partition=1, subscription_id=1), "NOT_LEADER", "holds no replica"),
    ],
)
def test_refusals(request_: m.SubscribeAlerts, status: str, text: str) -> None:
    node = make_node()
    conn = FakeConnection(node)
    conn.feeds.subscribe(1, request_)
    [(_, got, reply)] = conn.replies
    assert got == errors.Status[status] and isinstance(reply, m.ErrorReply)
    assert text in reply.message
    assert not conn.feeds.subs and len(node.runtime.mailbox) == 0
    if status == "NOT_LEADER":
        assert reply.leader == "b:2"


def test_ids_in_use_limits_and_a_full_mailbox(monkeypatch: pytest.MonkeyPatch) -> None:
    node = make_node(mailbox_capacity=1)
    conn = FakeConnection(node)
    conn.feeds.subscribe(1, m.SubscribeAlerts(partition=0, subscription_id=5))
    conn.feeds.subscribe(2, m.SubscribeAlerts(partition=0, subscription_id=5))
    conn.feeds.subscribe(3, m.SubscribeAlerts(partition=0, subscription_id=6))  # mailbox full
    monkeypatch.setattr(limits, "alert_subscriptions_per_connection_max", 1)
    conn.feeds.subscribe(4, m.SubscribeAlerts(partition=0, subscription_id=7))
    statuses = [(rid, errors.Status(status)) for rid, status, _ in conn.replies]
    assert statuses == [
        (2, errors.Status.INVALID_REQUEST),
        (3, errors.Status.BACKPRESSURE),
        (4, errors.Status.INVALID_REQUEST),
    ]
    assert "already in use" in conn.replies[0][2].message  # type: ignore[union-attr]
    assert "at most 1 alert subscriptions" in conn.replies[2][2].message  # type: ignore[union-attr]
    assert list(conn.feeds.subs) == [5]


# --------------------------------------------------------------------------- client side


def subscription(queue_max: int) -> AlertSubscription:
    sub = AlertSubscription(AlertsApi(None), None, None, queue_max)  # type: ignore[arg-type]
    sub._state = _State.RUNNING
    sub._queued[0] = sub._delivered[0] = -1
    return sub


async def drained(sub: AlertSubscription) -> list[int]:
    out = []
    while sub._queue:
        out.append((await anext(sub)).cursor)
    return out


async def test_repeats_are_dropped_and_the_queue_is_bounded() -> None:
    sub = subscription(queue_max=3)
    assert sub.enqueue(0, (alert(0), alert(1)))
    assert sub.enqueue(0, (alert(1), alert(2)))  # 1 again, after subscribing again
    assert not sub.enqueue(0, (alert(3), alert(4)))  # full after 3 alerts
    assert await drained(sub) == [0, 1, 2]
    assert sub.cursors == {0: 2}
    assert sub.enqueue(0, (alert(3),))  # resumed from the newest cursor queued
    assert await drained(sub) == [3]


async def test_pushes_before_live_wait_for_the_reply_alerts() -> None:
    sub = subscription(queue_max=10)
    stream = _Stream(sub, 0)
    stream.push(m.AlertsPush(partition=0, alerts=(alert(2),)))  # decoded before the task ran
    assert sub.enqueue(0, (alert(0), alert(1)))  # the task queues the live reply's page
    stream.push(m.SubscriptionEnd(partition=0, status=2, message="moved", leader="b:2"))
    failure = await stream.run_live()
    assert isinstance(failure, errors.NotLeaderError) and failure.leader == "b:2"
    assert await drained(sub) == [0, 1, 2]


async def test_a_live_stream_that_finds_the_queue_full_falls_behind() -> None:
    sub = subscription(queue_max=2)
    stream = _Stream(sub, 0)
    run = stream.run_live()
    stream._live = True  # as run_live sets before it waits
    stream.push(m.AlertsPush(partition=0, alerts=(alert(0), alert(1), alert(2))))
    stream.push(m.AlertsPush(partition=0, alerts=(alert(3),)))  # ignored: already behind
    assert await run is None
    assert await drained(sub) == [0, 1]
    assert sub._queued[0] == 1  # the next subscription starts after cursor 1


async def test_a_lost_connection_ends_the_stream() -> None:
    sub = subscription(queue_max=2)
    stream = _Stream(sub, 0)
    stream.lost(errors.UnavailableError("lost a:1"))
    failure = await stream.run_live()
    assert isinstance(failure, errors.UnavailableError) and failure.retriable
