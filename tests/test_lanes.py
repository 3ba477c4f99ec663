"""Mailboxes bounded in bytes, a peer lane per replica with flow control, a connection limit.

- A mailbox refuses past its byte bound as past its item bound (but takes one oversized item
  when empty), and calls back ``when_room`` at the next drain.
- Raft messages from a peer go to the replica's own lane: a client mailbox filled by load no
  longer makes the node drop them (it did, silently). A full lane pauses reading that peer's
  connection, and reading resumes -- with every message delivered, in order -- once the
  replica drained the lane.
- ``--max-connections``: a real node refuses the client connection past the limit at HELLO
  with UNAVAILABLE naming the flag, and takes a new one once another has gone.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import cbor2
import pytest

from tests.support.nodeproc import NodeProcess
from tests.test_bad_input import RawConnection
from unimeter import errors
from unimeter.actors.connection import ClientConnection
from unimeter.actors.mailbox import Mailbox, MailboxFull
from unimeter.actors.replicated import PeerMessage
from unimeter.consensus.codec import encode_message
from unimeter.consensus.messages import Heartbeat
from unimeter.node import Node, NodeConfig
from unimeter.peer import peer_frame
from unimeter.wire import messages as m


async def test_a_mailbox_is_bounded_in_bytes_too_and_says_when_there_is_room() -> None:
    box: Mailbox[str] = Mailbox(100, bytes_max=1000)
    box.try_send("a", 600)
    with pytest.raises(MailboxFull):
        box.try_send("b", 600)
    box.try_send("c", 400)
    assert box.stats().bytes == 1000 and box.stats().rejected == 1
    called: list[int] = []
    box.when_room(lambda: called.append(len(box)))
    assert box.drain() == ["a", "c"] and called == [0]
    box.try_send("huge", 5000)  # alone it is accepted, or it could never be delivered
    with pytest.raises(MailboxFull):
        box.try_send("d", 1)
    notified: list[int] = []
    box.notify = lambda: notified.append(1)
    box.drain()
    box.post_internal("tick")
    assert notified == [1]


def node_with_partition(lane: Mailbox[Any], clients: Mailbox[Any]) -> Node:
    node = Node(NodeConfig(data_dir="/nonexistent", partitions=1, peers="2=127.0.0.1:1"))
    node.partitions[0] = SimpleNamespace(peer_lane=lane, mailbox=clients)  # type: ignore[assignment]
    return node


def heartbeat(term: int) -> Heartbeat:
    return Heartbeat(src=2, dst=1, term=term, commit=0)


async def test_peer_messages_get_through_when_the_client_mailbox_is_full() -> None:
    clients: Mailbox[Any] = Mailbox(1)
    clients.try_send("a client request")
    lane: Mailbox[Any] = Mailbox(8)
    node = node_with_partition(lane, clients)
    assert node.deliver_peer(0, heartbeat(1), 40) is None
    assert lane.drain() == [PeerMessage(heartbeat(1))]


class FakeTransport:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        self.paused, self.pauses = True, self.pauses + 1

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 9)

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("the peer's connection was closed")


async def test_a_full_peer_lane_pauses_the_link_and_delivers_everything_in_order() -> None:
    lane: Mailbox[Any] = Mailbox(2)
    node = node_with_partition(lane, Mailbox(8))
    conn = ClientConnection(node)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.core.greeted, conn.core.peer_node_id = True, 2
    frames = [
        peer_frame([cbor2.dumps(encode_message(0, heartbeat(t))) for t in (1, 2, 3)]),
        peer_frame([cbor2.dumps(encode_message(0, heartbeat(4)))]),
    ]
    conn.data_received(b"".join(frames))  # both frames arrive in one read
    assert transport.paused and len(lane) == 2
    got = lane.drain()
    await asyncio.sleep(0)  # the resume runs on the next loop iteration
    got += lane.drain()
    await asyncio.sleep(0)
    got += lane.drain()
    assert [msg.message.term for msg in got] == [1, 2, 3, 4]
    assert not transport.paused and transport.pauses == 1


async def test_connections_past_the_limit_are_refused_at_hello(tmp_path: Any) -> None:
    node = NodeProcess(tmp_path / "data", partitions=1, extra_args=("--max-connections", "2"))
    node.start()
    try:
        first = await RawConnection.open(node)
        second = await RawConnection.open(node)
        third = await RawConnection.open(node, hello=False)
        hello = m.Hello(version=m.PROTOCOL_VERSION, client_name="third")
        frame = await third.call(hello)
        assert frame.status == errors.Status.UNAVAILABLE
        assert "at most 2 client connections (--max-connections)" in frame.message.message  # type: ignore[union-attr]
        with pytest.raises(ConnectionError):
            await third.read()  # closed after the refusal
        third.writer.close()
        first.writer.close()
        await first.writer.wait_closed()
        for _ in range(100):  # the node notices the close within a loop iteration or two
            again = await RawConnection.open(node, hello=False)
            frame = await again.call(hello)
            again.writer.close()
            await again.writer.wait_closed()
            if frame.status == errors.Status.OK:
                break
            await asyncio.sleep(0.02)
        assert frame.status == errors.Status.OK
        second.writer.close()
        await asyncio.gather(third.writer.wait_closed(), second.writer.wait_closed())
    finally:
        node.kill()
