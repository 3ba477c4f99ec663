"""``ConnectionCore`` without a socket: bytes in, reply frames out.

The HELLO gate, the in-flight limit, typed refusals, a protocol error answered once and then
closed, and the same replies however the bytes are cut into reads (Hypothesis). The read fast
path against a real partition is covered by the simulator (which drives this core) and by the
node tests; its pieces by ``test_fast_decode.py``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from unimeter import errors, limits
from unimeter.actors.connection import ConnectionCore
from unimeter.model import AggType, MetricSchema
from unimeter.observe import NodeStats
from unimeter.routing import PartitionCache
from unimeter.security.gate import Gatekeeper
from unimeter.security.roles import Role
from unimeter.security.tokens import TokenTable, entry_for, new_token
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec, announced_limits


class Host:
    """A node hosting no partition; everything a core may ask for."""

    def __init__(self, max_connections: int = 10) -> None:
        self.serving = True
        self.partition_count = 4
        self.node_id = 1
        self.addresses = {1: "n1:7001", 2: "n2:7001"}
        self.client_connections = 0
        self.config = SimpleNamespace(max_connections=max_connections)
        self.peers = SimpleNamespace(peer_dialed=lambda node_id: None)
        self.stats = NodeStats()
        self.route = PartitionCache(4)
        self.catalog: list[Any] = []
        self.gate = Gatekeeper(1)  # no tokens: every client is let in

    def runtime_of(self, partition: int, /) -> None:
        return None

    def submit_catalog(self, item: Any, nbytes: int, /) -> None:
        self.catalog.append(item)

    def welcome(self, challenge: bytes | None = None, proof: bytes | None = None) -> m.Welcome:
        return m.Welcome(node_id=1, cluster_id="c", version=m.PROTOCOL_VERSION,
                         limits=announced_limits(), partitions=4,
                         challenge=challenge, proof=proof)  # fmt: skip

    def partition_map(self) -> m.PartitionMap:
        return m.PartitionMap(partitions=4, nodes=self.addresses, leaders=(2, 2, 2, 2), epoch=1)

    def cluster_status(self) -> m.ClusterStatusReply:
        raise AssertionError("not asked")

    def leader_of(self, p: int) -> int | None:
        return 2

    def check_ingest(self, msg: m.Ingest) -> None:
        return None


HELLO = m.Hello(version=m.PROTOCOL_VERSION, client_name="t")
QUERY = m.Query(partition=1, account_id=5, metric_code="x", start_us=0, end_us=10)


def replies(core: ConnectionCore, client: ClientCodec) -> list[m.ResponseFrame]:
    out = []
    for frame in core.take_output():
        client.feed(frame)
        response = client.next_frame()
        assert response is not None
        out.append(response)
    return out


def exchange(core: ConnectionCore, client: ClientCodec, *messages: m.Request) -> list[Any]:
    data = b"".join(client.encode_request(i + 1, msg) for i, msg in enumerate(messages))
    core.receive(data)
    return [(r.request_id, r.status, type(r.message)) for r in replies(core, client)]


def fresh(host: Host | None = None) -> tuple[ConnectionCore, ClientCodec]:
    return ConnectionCore(host or Host()), ClientCodec()


def test_nothing_but_hello_before_hello() -> None:
    core, client = fresh()
    got = exchange(core, client, m.GetPartitionMap(), HELLO, m.GetPartitionMap())
    assert got == [
        (1, errors.Status.INVALID_REQUEST, m.ErrorReply),
        (2, errors.Status.OK, m.Welcome),
        (3, errors.Status.OK, m.PartitionMap),
    ]


def test_with_tokens_hello_decides_what_the_connection_may_send() -> None:
    made = {"ingest": new_token(), "read": new_token()}
    lines = [entry_for(t, Role(r), r).line() for r, t in made.items()]
    host = Host()
    host.gate = Gatekeeper(1, tokens=TokenTable.parse("\n".join(lines)))
    refused, client = fresh(host)
    assert exchange(refused, client, HELLO, m.GetPartitionMap()) == [
        (1, errors.Status.AUTH, m.ErrorReply),  # no token
        (2, errors.Status.INVALID_REQUEST, m.ErrorReply),  # still not greeted
    ]
    create = m.MetricCreate(schema=MetricSchema(code="x", agg_type=AggType.SUM))
    for role, query_status in (("read", errors.Status.NOT_LEADER), ("ingest", errors.Status.AUTH)):
        core, client = fresh(host)
        hello = m.Hello(version=m.PROTOCOL_VERSION, client_name="t", token=made[role])
        assert exchange(core, client, hello, QUERY, create, m.GetPartitionMap()) == [
            (1, errors.Status.OK, m.Welcome),
            (2, query_status, m.ErrorReply),  # read: on to routing; ingest: refused first
            (3, errors.Status.AUTH, m.ErrorReply),  # only admin changes schemas
            (4, errors.Status.OK, m.PartitionMap),  # any role may route
        ]
    assert host.catalog == []
    assert host.gate.refusals[("binary", "role")] == 3


def test_a_partition_this_node_does_not_host_is_not_leader_with_a_hint() -> None:
    core, client = fresh()
    core.receive(client.encode_request(1, HELLO) + client.encode_request(2, QUERY))
    answers = replies(core, client)
    assert answers[1].status == errors.Status.NOT_LEADER
    assert isinstance(answers[1].message, m.ErrorReply)
    assert answers[1].message.leader == "n2:7001"


def test_past_max_connections_hello_is_refused_and_the_connection_closed() -> None:
    host = Host(max_connections=1)
    first, _ = fresh(host)
    exchange(first, ClientCodec(), HELLO)
    second, client = fresh(host)
    assert exchange(second, client, HELLO) == [(1, errors.Status.UNAVAILABLE, m.ErrorReply)]
    assert second.closing and host.client_connections == 1
    first.connection_lost()
    assert host.client_connections == 0


def test_the_in_flight_limit_answers_backpressure() -> None:
    core, client = fresh()
    exchange(core, client, HELLO)
    core.in_flight = limits.in_flight_requests_per_connection_max  # that many unanswered
    core.receive(client.encode_request(9, m.MetricList()))
    (answer,) = replies(core, client)
    assert answer.status == errors.Status.BACKPRESSURE


def test_bytes_that_are_no_frame_get_protocol_once_then_the_connection_closes() -> None:
    core, _ = fresh()
    core.receive(b"\x00\x00\x00\x02\xff\xff" + b"\x00\x00\x00\x01\x00")
    (frame,) = core.take_output()
    assert core.closing
    client = ClientCodec()
    client.feed(frame)
    try:
        client.next_frame()
    except errors.ProtocolError as exc:
        assert "refused the connection" in exc.message
    else:
        raise AssertionError("a PROTOCOL reply must be fatal to the client")


def test_replies_after_the_transport_went_away_are_dropped() -> None:
    core, client = fresh()
    core.receive(client.encode_request(1, HELLO))
    core.connection_lost()
    assert core.take_output() == []
    core.respond(5, errors.Status.OK, m.Unsubscribed())
    assert core.take_output() == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=20))
def test_the_same_replies_however_the_bytes_are_cut(cuts: list[int]) -> None:
    messages = [m.GetPartitionMap(), HELLO, QUERY, m.MetricList(), m.GetPartitionMap()]
    host = Host()
    whole_core, whole_client = fresh(host)
    want = exchange(whole_core, whole_client, *messages)
    core, client = fresh(host)
    data = b"".join(client.encode_request(i + 1, msg) for i, msg in enumerate(messages))
    at = 0
    for cut in cuts:
        core.receive(data[at : at + cut])
        at += cut
    core.receive(data[at:])
    got = [(r.request_id, r.status, type(r.message)) for r in replies(core, client)]
    # The catalog request waits for its owner: neither run answers it here.
    assert got == want and len(host.catalog) == 2
