"""Bad input against a real node: a clear error to that client, the node unharmed.

Each case talks raw frames over TCP to a node process, then checks with a well-behaved client
that the node still serves and that nothing was stored wrongly.
"""

from __future__ import annotations

import asyncio
import random
import struct
from array import array

import cbor2
import pytest

from tests.support.nodeproc import NodeProcess
from unimeter import AggType, AsyncClient, Event, MetricSchema, current_month, errors, limits
from unimeter.routing import partition_of
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec
from unimeter.wire.frames import FrameDecoder


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = ClientCodec()
        self.next_id = 1

    @classmethod
    async def open(cls, node: NodeProcess, hello: bool = True) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        conn = cls(reader, writer)
        if hello:
            frame = await conn.call(m.Hello(version=m.PROTOCOL_VERSION, client_name="raw"))
            assert frame.status == errors.Status.OK
        return conn

    async def call(self, msg: m.Request) -> m.ResponseFrame:
        rid = self.next_id
        self.next_id += 1
        self.writer.write(self.codec.encode_request(rid, msg))
        return await self.read()

    async def read(self) -> m.ResponseFrame:
        while True:
            frame = self.codec.next_frame()
            if frame is not None:
                return frame
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("closed by the node")
            self.codec.feed(data)

    async def send_raw(self, data: bytes) -> bytes:
        """Send bytes as they are; return whatever the node answers before closing (bounded)."""
        self.writer.write(data)
        chunks = b""
        try:
            while len(chunks) < 1 << 20:
                data = await asyncio.wait_for(self.reader.read(65536), 2)
                if not data:
                    break
                chunks += data
        except TimeoutError:
            pass
        return chunks

    def close(self) -> None:
        self.writer.close()


async def still_serves(node: NodeProcess) -> int:
    """A normal client can create, ingest and query; returns the api_calls count for 7."""
    async with AsyncClient([node.address]) as client:
        await client.metrics.create(MetricSchema(code="api_calls", agg_type=AggType.COUNT))
        await client.ingest([Event(account_id=7, metric_code="api_calls")])
        usage = await client.query(7, "api_calls", current_month())
        return usage.value.count


def raw_frame(item: object) -> bytes:
    body = cbor2.dumps(item)
    return struct.pack(">I", len(body)) + body


async def test_a_client_of_another_protocol_version_is_told_at_hello(node: NodeProcess) -> None:
    conn = await RawConnection.open(node, hello=False)
    old = await conn.call(m.Hello(version=1, client_name="old"))
    assert old.status == errors.Status.INVALID_REQUEST
    assert isinstance(old.message, m.ErrorReply)
    assert "protocol version 1 is not spoken here" in old.message.message
    refused = await conn.call(m.GetPartitionMap())  # not greeted: still refused
    assert refused.status == errors.Status.INVALID_REQUEST
    welcome = await conn.call(m.Hello(version=m.PROTOCOL_VERSION, client_name="new"))
    assert welcome.status == errors.Status.OK
    conn.close()
    assert await still_serves(node) == 1


async def test_oversized_length_prefix_is_refused_and_node_keeps_serving(
    node: NodeProcess,
) -> None:
    conn = await RawConnection.open(node)
    answer = await conn.send_raw(struct.pack(">I", limits.frame_bytes_max + 1))
    conn.close()
    codec = ClientCodec()
    codec.feed(answer)
    # The node answers once with PROTOCOL, naming the problem, then closes the connection.
    with pytest.raises(errors.ProtocolError, match="exceeds frame_bytes_max"):
        codec.next_frame()
    assert await still_serves(node) == 1


async def test_random_and_truncated_garbage_never_harms_the_node(node: NodeProcess) -> None:
    rng = random.Random(1234)
    for i in range(30):
        conn = await RawConnection.open(node, hello=i % 2 == 0)
        junk = rng.randbytes(rng.randrange(1, 300))
        if i % 3 == 0:  # a plausible prefix followed by a truncated body
            junk = struct.pack(">I", 200) + junk[:50]
        conn.writer.write(junk)
        await conn.writer.drain()
        conn.close()
    assert await still_serves(node) == 1


async def test_requests_before_hello_and_bad_bodies_get_typed_errors(node: NodeProcess) -> None:
    conn = await RawConnection.open(node, hello=False)
    frame = await conn.call(m.MetricList())
    assert frame.status == errors.Status.INVALID_REQUEST
    assert "HELLO" in frame.message.message  # type: ignore[union-attr]
    conn.close()
    # Well framed, wrong types inside: answered INVALID_REQUEST naming the field; the
    # connection stays usable.
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    decoder = FrameDecoder()
    writer.write(raw_frame([int(m.Kind.HELLO), 1, {"v": m.PROTOCOL_VERSION, "n": "raw"}]))
    writer.write(raw_frame([int(m.Kind.QUERY), 99, {"p": "zero", "a": -3}]))
    writer.write(raw_frame([int(m.Kind.METRIC_LIST), 100, {}]))
    answers: dict[int, list[object]] = {}
    while len(answers) < 3:
        item = decoder.next_item()
        if item is None:
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "the node closed the connection"
            decoder.feed(data)
            continue
        assert isinstance(item, list)
        answers[item[1]] = item
    writer.close()
    assert answers[1][0] == errors.Status.OK
    assert answers[99][0] == errors.Status.INVALID_REQUEST
    assert "Query.partition" in str(answers[99][2])
    assert answers[100][0] == errors.Status.OK


async def test_misrouted_ingest_and_unknown_partition_are_refused(node: NodeProcess) -> None:
    async with AsyncClient([node.address]) as client:
        await client.metrics.create(MetricSchema(code="api_calls", agg_type=AggType.COUNT))
    conn = await RawConnection.open(node)
    account = 5
    wrong = (partition_of(account, node.partitions) + 1) % node.partitions
    batch = m.EventBatch(
        metric_codes=("api_calls",),
        metric_index=array("B", [0]),
        account_ids=array("Q", [account]),
        values=array("q", [1]),
    )
    frame = await conn.call(
        m.Ingest(partition=wrong, producer_id=1, seq=1, sync=True, catalog_version=0, batch=batch)
    )
    assert frame.status == errors.Status.INVALID_REQUEST
    frame = await conn.call(
        m.Ingest(partition=999, producer_id=1, seq=1, sync=True, catalog_version=0, batch=batch)
    )
    assert frame.status == errors.Status.INVALID_REQUEST
    # The node remembers accounts it has seen routed correctly; one it has already seen in
    # ``wrong`` must not let a misrouted account through in the same batch.
    right = next(a for a in range(1, 1000) if partition_of(a, node.partitions) == wrong)
    ok_batch = m.EventBatch(
        metric_codes=("api_calls",),
        metric_index=array("B", [0]),
        account_ids=array("Q", [right]),
        values=array("q", [1]),
    )
    frame = await conn.call(
        m.Ingest(
            partition=wrong, producer_id=1, seq=2, sync=True, catalog_version=0, batch=ok_batch
        )
    )
    assert frame.status == errors.Status.OK
    mixed = m.EventBatch(
        metric_codes=("api_calls",),
        metric_index=array("B", [0, 0]),
        account_ids=array("Q", [right, account]),
        values=array("q", [1, 1]),
    )
    frame = await conn.call(
        m.Ingest(partition=wrong, producer_id=1, seq=3, sync=True, catalog_version=0, batch=mixed)
    )
    assert frame.status == errors.Status.INVALID_REQUEST
    assert f"account {account} lives in partition" in str(frame.message)
    # Larger batches are checked as one array expression: the same verdict.
    large = m.EventBatch(
        metric_codes=("api_calls",),
        metric_index=array("B", [0] * 12),
        account_ids=array("Q", [right] * 11 + [account]),
        values=array("q", [1] * 12),
    )
    frame = await conn.call(
        m.Ingest(partition=wrong, producer_id=1, seq=4, sync=True, catalog_version=0, batch=large)
    )
    assert frame.status == errors.Status.INVALID_REQUEST
    assert f"account {account} lives in partition" in str(frame.message)
    conn.close()
    async with AsyncClient([node.address]) as client:
        usage = await client.query(account, "api_calls", current_month())
        assert usage.value.count == 0
        usage = await client.query(right, "api_calls", current_month())
        assert usage.value.count == 1


async def test_unknown_metric_and_bad_timestamps_are_rejected_per_event(
    node: NodeProcess,
) -> None:
    from datetime import UTC, datetime, timedelta

    async with AsyncClient([node.address]) as client:
        await client.metrics.create(MetricSchema(code="api_calls", agg_type=AggType.COUNT))
        now = datetime.now(UTC)
        result = await client.ingest(
            [
                Event(account_id=3, metric_code="api_calls"),
                Event(account_id=3, metric_code="no_such_metric"),
                Event(account_id=3, metric_code="api_calls", timestamp=now + timedelta(hours=1)),
                Event(account_id=3, metric_code="api_calls", timestamp=now - timedelta(days=900)),
                Event(account_id=3, metric_code="api_calls", timestamp=now - timedelta(seconds=5)),
            ]
        )
        assert (result.n_stored, result.n_rejected) == (2, 3)
        assert result.rejected == [
            (1, "unknown_metric"),
            (2, "timestamp_in_future"),
            (3, "timestamp_too_old"),
        ]
        usage = await client.query(3, "api_calls", current_month())
        assert usage.value.count == 2
