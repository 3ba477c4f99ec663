"""Client connections of a simulated node: the real connection core, driven without a socket.

Each simulated client gets one connection per node incarnation (a restart breaks it, as a
process restart breaks a TCP connection). The connection is ``ConnectionCore``, the one the real
node runs: requests reach it as the bytes ``ClientCodec`` makes of them (after a HELLO the
connection sends first), go through its HELLO gate, in-flight limit, dispatch and read fast
path, and its reply frames are decoded by the client codec and handed back to the cluster's
client transport. Like the asyncio runtime, the replies made while a request's bytes are
handled are taken at once; those a replica makes later are taken in a later event of the
same virtual instant (one "loop iteration" later).

The checkers judge replies by the request they answer: ``judged`` gives them an ``Outgoing``
whose token carries that ``call``, for replies a replica makes (``SimNode.deliver``) and for
reads the core answered itself from a replica's state (``on_read_here``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unimeter import errors
from unimeter.actors.catalog import CatalogRequest
from unimeter.actors.connection import ConnectionCore, PartitionTarget, Reply
from unimeter.actors.effects import Outgoing
from unimeter.actors.mailbox import MailboxFull
from unimeter.actors.partition import ClientRequest, PartitionCore
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec

if TYPE_CHECKING:
    from unimeter.sim.replica import SimReplica
    from unimeter.sim.simnode import SimNode


class CallToken:
    """What a checker reads of a reply's token: the request it answers."""

    __slots__ = ("call",)

    def __init__(self, call: Any) -> None:
        self.call = call


class PartitionLane:
    """A partition replica as a connection core sees it (``PartitionTarget``)."""

    __slots__ = ("capacity", "replica")

    def __init__(self, replica: SimReplica, capacity: int) -> None:
        self.replica = replica
        self.capacity = capacity

    @property
    def core(self) -> PartitionCore:
        return self.replica.partition

    @property
    def tracer(self) -> object | None:
        return self.replica.tracer

    def now(self) -> int:
        return self.replica.world.now

    def submit(self, item: ClientRequest | CatalogRequest, nbytes: int, /) -> None:
        if not self.replica.try_send(item, self.capacity):
            raise MailboxFull()


class SimConnection:
    """One client's connection to one incarnation of a node."""

    def __init__(self, node: SimNode, name: str) -> None:
        self.node = node
        self.world = node.world
        self.core = ConnectionCore(node, peer=name)
        self.core.owner = self
        self.core.wake = self._wake
        self.core.on_read_here = self._read_here
        self.codec = ClientCodec()
        self.calls: dict[int, Any] = {}  # request id -> the client's call, until answered
        self._next_id = 0
        self._flush_soon = False
        hello = m.Hello(version=m.PROTOCOL_VERSION, client_name=name)
        self._send(hello, None)

    def request(self, call: Any) -> None:
        self._send(call.request, call)

    def _send(self, message: m.Request, call: Any) -> None:
        self._next_id += 1
        rid = self._next_id
        self.calls[rid] = call
        self.core.receive(self.codec.encode_request(rid, message))
        self.flush()

    def call_of(self, request_id: int) -> Any:
        return self.calls.get(request_id)

    def _wake(self) -> None:
        if not self._flush_soon:
            self._flush_soon = True
            self.world.at(self.world.now, self.flush)

    def flush(self) -> None:
        self._flush_soon = False
        node = self.node
        for frame in self.core.take_output():
            self.codec.feed(frame)
            response = self.codec.next_frame()
            assert response is not None, "a reply frame holds one whole reply"
            call = self.calls.pop(response.request_id)
            if call is None:  # the HELLO
                assert response.status == errors.Status.OK, response
                continue
            node.cluster.reply_to_client(node, call, response.status, response.message)
        assert not self.core.closing, "the node closed a simulated client's connection"

    def _read_here(self, target: PartitionTarget, rid: int, status: int, message: m.Reply) -> None:
        assert isinstance(target, PartitionLane)
        call = self.calls.get(rid)
        if call is not None:
            self.node.checkers.judge_now(target.replica, Outgoing(CallToken(call), status, message))


def judged(out: Outgoing) -> Outgoing:
    """``out`` as a checker reads it: its token carries the client's call, when it has one."""
    token = out.token
    if isinstance(token, Reply):
        owner = token.conn.owner
        if isinstance(owner, SimConnection):
            return Outgoing(CallToken(owner.call_of(token.request_id)), out.status, out.message)
    return out
