"""Live alert subscriptions, node side (protocol.md §12): committed alerts pushed to connections.

Theory of operation. A SUBSCRIBE_ALERTS request travels to the partition actor like any read,
so the partition answers it in log order: one page of the alerts after the client's cursor
(``PartitionState.alerts_catch_up``) and ``live_from``, the cursor the next alert will get.
When that page ends the backlog, the reply token (``SubscribeReply``) makes the subscription
live in the partition runtime's ``AlertHub`` as it writes the reply, before the runtime
publishes the alerts of that very step. From then on the hub hands every alert the replica
applies (``Effects.alerts``: applied entries are committed entries) to the subscription,
filtered to cursors ``>= live_from`` and to the subscribed account. So the client sees the
backlog, then every later alert once, in cursor order, with no gap between the two; a backlog
longer than a page is paged by the client asking again from ``next_cursor`` (its own pace,
nothing buffered here).

Ends (each sends SUBSCRIPTION_END once, then nothing more for that id):
- the replica stops leading, or leads in a later term: NOT_LEADER, naming the leader if known;
- the connection's unsent bytes exceed ``alert_push_buffer_bytes_max``: BACKPRESSURE. A slow
  reader costs the node that much at most, and resubscribes from its cursor.
UNSUBSCRIBE_ALERTS and a closed connection end subscriptions silently.

Subscription states (per connection, keyed by the client's subscription id):
    (none) --SUBSCRIBE--> PENDING --reply: more backlog, or an error--> (none)
                          PENDING --reply: backlog done--> LIVE --end/unsubscribe/close--> (none)
    PENDING --UNSUBSCRIBE--> (none): the pending reply is still written, but never goes live.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from unimeter import errors, limits
from unimeter.actors.mailbox import MailboxClosed, MailboxFull
from unimeter.actors.partition import ClientRequest, PartitionCore
from unimeter.consensus.config import Role
from unimeter.wire import messages as m

if TYPE_CHECKING:
    from unimeter.actors.connection import ClientConnection
    from unimeter.node_runtimes import PartitionRuntime

log = logging.getLogger("unimeter.alerts")

_PUSH_ALERTS_MAX = limits.list_page_alerts_max  # alerts per push frame: keeps frames small


class Subscription:
    __slots__ = ("account_id", "feeds", "hub", "live_from", "partition", "sid")

    def __init__(
        self, feeds: ConnectionFeeds, sid: int, partition: int, account_id: int | None
    ) -> None:
        self.feeds = feeds
        self.sid = sid
        self.partition = partition
        self.account_id = account_id
        self.live_from = 0
        self.hub: AlertHub | None = None  # set while live


class AlertHub:
    """The live subscriptions to one partition replica; lives on its runtime."""

    __slots__ = ("partition", "subs", "term")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.subs: dict[Subscription, None] = {}  # insertion-ordered set
        self.term = -1  # the leader term every subscription here was made in

    def add(self, sub: Subscription, term: int) -> None:
        if self.subs and term != self.term:  # unreachable while ends run after every step
            self.end_all(errors.Status.NOT_LEADER, "the partition changed leader term", None)
        self.term = term
        self.subs[sub] = None
        sub.hub = self

    def discard(self, sub: Subscription) -> None:
        self.subs.pop(sub, None)
        sub.hub = None

    def after_step(self, alerts: list[m.StoredAlert], core: PartitionCore) -> None:
        """Push a step's alerts (from applied, so committed, entries), then end everything if
        this replica no longer leads in the term the subscriptions were made in."""
        if alerts:
            for sub in list(self.subs):
                sub.feeds.push(sub, alerts)
        if core.role is not Role.LEADER or core.raft.term != self.term:
            leader = core.leader_id
            hint = core.addresses.get(leader) if leader not in (None, core.node_id) else None
            self.end_all(
                errors.Status.NOT_LEADER,
                f"node {core.node_id} no longer leads partition {self.partition}",
                hint,
            )

    def end_all(self, status: errors.Status, message: str, leader: str | None) -> None:
        for sub in list(self.subs):
            sub.feeds.end(sub, status, message, leader)


class SubscribeReply:
    """The token the partition core carries for one SUBSCRIBE_ALERTS request."""

    __slots__ = ("request_id", "runtime", "sub")

    def __init__(self, sub: Subscription, request_id: int, runtime: PartitionRuntime) -> None:
        self.sub = sub
        self.request_id = request_id
        self.runtime = runtime

    def send(self, status: int, message: m.Reply) -> None:
        sub = self.sub
        feeds = sub.feeds
        feeds.conn.respond(self.request_id, status, message)
        if feeds.subs.get(sub.sid) is not sub:
            return  # unsubscribed while pending, or the connection is gone
        if (
            status == errors.Status.OK
            and isinstance(message, m.Subscribed)
            and message.next_cursor is None
        ):
            sub.live_from = message.live_from
            self.runtime.alert_hub.add(sub, self.runtime.core.raft.term)
        else:
            del feeds.subs[sub.sid]  # not live: the id is free for the next page or a retry


class ConnectionFeeds:
    """One connection's alert subscriptions, over every partition it subscribed to."""

    __slots__ = ("conn", "subs")

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.subs: dict[int, Subscription] = {}

    def subscribe(self, rid: int, msg: m.SubscribeAlerts) -> None:
        conn = self.conn
        node = conn.node
        part = msg.partition
        problem: str | None = None
        if msg.subscription_id in self.subs:
            problem = (
                f"SubscribeAlerts.subscription_id: {msg.subscription_id} is already in use "
                "on this connection"
            )
        elif len(self.subs) >= limits.alert_subscriptions_per_connection_max:
            problem = (
                f"at most {limits.alert_subscriptions_per_connection_max} alert "
                "subscriptions per connection"
            )
        elif not 0 <= part < node.partition_count:
            problem = f"partition {part} does not exist (this cluster has {node.partition_count})"
        elif msg.account_id is not None and node.route(msg.account_id) != part:
            problem = (
                f"account {msg.account_id} lives in partition {node.route(msg.account_id)}, "
                f"not {part}"
            )
        if problem is not None:
            conn.respond(rid, errors.Status.INVALID_REQUEST, m.ErrorReply(message=problem))
            return
        runtime = node.partitions.get(part)
        if runtime is None:
            leader = node.leader_of(part)
            conn.respond(rid, errors.Status.NOT_LEADER, m.ErrorReply(
                message=f"node {node.node_id} holds no replica of partition {part}",
                leader=node.addresses.get(leader) if leader is not None else None,
            ))  # fmt: skip
            return
        sub = Subscription(self, msg.subscription_id, part, msg.account_id)
        try:
            runtime.mailbox.try_send(ClientRequest(SubscribeReply(sub, rid, runtime), msg))
        except MailboxFull:
            status, text = errors.Status.BACKPRESSURE, "the node is busy; retry shortly"
        except MailboxClosed:
            status, text = errors.Status.UNAVAILABLE, "the node is stopping"
        else:
            self.subs[sub.sid] = sub
            return
        conn.respond(rid, status, m.ErrorReply(message=text))

    def unsubscribe(self, rid: int, msg: m.UnsubscribeAlerts) -> None:
        """Always OK: the subscription may have ended on its own a moment ago."""
        sub = self.subs.pop(msg.subscription_id, None)
        if sub is not None and sub.hub is not None:
            sub.hub.discard(sub)
        self.conn.respond(rid, errors.Status.OK, m.Unsubscribed())

    def close_all(self) -> None:
        """The connection is gone: drop every subscription without a word."""
        for sub in self.subs.values():
            if sub.hub is not None:
                sub.hub.discard(sub)
        self.subs.clear()

    def push(self, sub: Subscription, alerts: list[m.StoredAlert]) -> None:
        account = sub.account_id
        live_from = sub.live_from
        picked = [
            a
            for a in alerts
            if a.cursor >= live_from and (account is None or a.account_id == account)
        ]
        if not picked:
            return
        self.conn.flush()  # replies first: a push never overtakes the reply it follows
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return  # connection_lost drops the subscription
        codec = self.conn.codec
        for start in range(0, len(picked), _PUSH_ALERTS_MAX):
            if transport.get_write_buffer_size() > limits.alert_push_buffer_bytes_max:
                log.info(
                    "event=alert_subscriber_too_slow peer=%s partition=%d subscription=%d",
                    self.conn.peer, sub.partition, sub.sid,
                )  # fmt: skip
                self.end(
                    sub,
                    errors.Status.BACKPRESSURE,
                    f"more than {limits.alert_push_buffer_bytes_max} bytes wait to be read on "
                    "this connection; subscribe again from your cursor",
                    None,
                )
                return
            chunk = tuple(picked[start : start + _PUSH_ALERTS_MAX])
            push = m.AlertsPush(partition=sub.partition, alerts=chunk)
            transport.write(codec.encode_push(sub.sid, push))

    def end(
        self, sub: Subscription, status: errors.Status, message: str, leader: str | None
    ) -> None:
        if sub.hub is not None:
            sub.hub.discard(sub)
        if self.subs.get(sub.sid) is sub:
            del self.subs[sub.sid]
        self.conn.flush()  # replies first: a push never overtakes the reply it follows
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return
        end = m.SubscriptionEnd(
            partition=sub.partition, status=int(status), message=message, leader=leader
        )
        transport.write(self.conn.codec.encode_push(sub.sid, end))
