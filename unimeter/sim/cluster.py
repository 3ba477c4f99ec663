"""A whole simulated cluster: its nodes, the network between them, and the client transport.

Client connections: a request reaches its node after a client-link latency, on the connection
(node incarnation) it was sent on; a node that crashed or restarted meanwhile broke that
connection, so the request fails with UNAVAILABLE like ``ClientConnection`` in the real client
(its outcome is unknown to the client). Replies travel back the same way; while faults are on,
a connection may also reset with an answer on its way (``client_reset_p``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from unimeter import errors
from unimeter.sim.checkers import Checkers
from unimeter.sim.net import Network
from unimeter.sim.settings import SimSettings
from unimeter.sim.simnode import SimNode
from unimeter.sim.world import World
from unimeter.wire import messages as m

if TYPE_CHECKING:
    from unimeter.sim.clients import Call


class Cluster:
    def __init__(self, world: World, settings: SimSettings) -> None:
        self.world = world
        self.settings = settings
        self.members = tuple(range(1, settings.nodes + 1))
        self.addresses = {i: f"node{i}:7001" for i in self.members}
        self.by_address = {a: i for i, a in self.addresses.items()}
        self.net = Network(world, settings.net)
        self.checkers = Checkers(self)
        self.nodes = {i: SimNode(self, i) for i in self.members}
        self._inflight: dict[int, dict[int, Call]] = {i: {} for i in self.members}
        # Who restarts a node that stopped by itself (the nemesis, standing in for systemd).
        self.node_exited: Callable[[SimNode], None] = lambda node: None

    def start(self) -> None:
        for node in self.nodes.values():
            node.start()

    # ------------------------------------------------------------------ node to node

    def deliver_peer(self, dst: int, group: int, message: Any) -> None:
        node = self.nodes[dst]
        if node.up:
            node.deliver_peer(group, message)

    def deliver_gossip(self, dst: int, entries: list[tuple[int, int, int]]) -> None:
        node = self.nodes[dst]
        if node.up:
            node.note_gossip(entries)

    # ------------------------------------------------------------------ clients

    def send_request(self, call: Call, address: str) -> None:
        """The client writes ``call.request`` on its connection to ``address``."""
        node_id = self.by_address.get(address)
        if node_id is None or not self.nodes[node_id].up:
            self._fail(call, f"cannot connect to {address}")
            return
        node = self.nodes[node_id]
        call.node_id = node_id
        call.incarnation = node.incarnation
        self.world.after(self.net.client_delay(), self._arrive, call)

    def _arrive(self, call: Call) -> None:
        node = self.nodes[call.node_id]
        if not node.up or node.incarnation != call.incarnation:
            self._fail(call, f"lost the connection to node {call.node_id}")
            return
        self._inflight[node.node_id][call.number] = call
        node.client_request(call)

    def reply_to_client(self, node: SimNode, call: Any, status: int, message: m.Reply) -> None:
        if self._inflight[node.node_id].pop(call.number, None) is None:
            return  # the connection broke before the answer: it never arrives
        if self.net.faulty and self.world.chance(self.settings.net.client_reset_p):
            # The connection resets with the answer on its way: the client cannot know whether
            # its request was applied, and retries it.
            self._fail(call, f"connection to node {node.node_id} reset")
            return
        self.world.after(self.net.client_delay(), call.client.on_reply, call, status, message)

    def connections_lost(self, node: SimNode) -> None:
        calls = self._inflight[node.node_id]
        self._inflight[node.node_id] = {}
        for number in sorted(calls):
            self._fail(calls[number], f"lost the connection to node {node.node_id}")

    def _fail(self, call: Call, text: str) -> None:
        reply = m.ErrorReply(message=text)
        self.world.after(
            self.net.client_delay(), call.client.on_reply, call, errors.Status.UNAVAILABLE, reply
        )
