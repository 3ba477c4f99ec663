"""``ingest_columns`` against a real node process: exact totals, rejections named by the
caller's index, and exactly-once across a reply lost on the way back (a proxy between the
client and the node forwards the INGEST, lets the node apply it, then swallows the reply and
breaks the connection, so the client retries the very same batch)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from tests.support.nodeproc import NodeProcess
from tests.test_sdk_page import run_snippets
from unimeter import (
    AggType,
    AsyncClient,
    DeliveryMode,
    DimensionFilter,
    MetricSchema,
    current_month,
)
from unimeter.routing import partition_of

REQUESTS = MetricSchema(
    code="requests",
    agg_type=AggType.COUNT,
    filters=[DimensionFilter(key="region", values=["eu", "us", "apac"])],
)
BYTES = MetricSchema(code="bytes", agg_type=AggType.SUM)
SEATS = MetricSchema(code="seats", agg_type=AggType.COUNT_UNIQUE)


DOCS = Path(__file__).resolve().parents[1] / "docs" / "client.md"


def docs_example() -> str:
    """The page's ``ingest_columns`` example, as the page shows it."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOCS.read_text(), re.MULTILINE | re.DOTALL)
    [example] = [b for b in blocks if "ingest_columns(" in b]
    return str(example)


async def test_the_pages_example_runs_as_written(node: NodeProcess) -> None:
    async with AsyncClient([node.address]) as client:
        await client.metrics.create(
            MetricSchema(
                code="compute_seconds",
                agg_type=AggType.SUM,
                filters=[DimensionFilter(key="provider", values=["aws", "gcp", "azure"])],
            )
        )
        out = await run_snippets(docs_example(), client=client)
        assert out == "stored 3 events\n"
        aws = await client.query(42, "compute_seconds", current_month(), {"provider": "aws"})
        assert (aws.value.count, aws.value.sum) == (1, 1_500_000)
        assert (await client.query(7, "compute_seconds", current_month())).value.sum == 250_000


async def create_metrics(client: AsyncClient) -> None:
    for schema in (REQUESTS, BYTES, SEATS):
        await client.metrics.create(schema)


async def test_columns_are_stored_exactly_and_rejections_use_the_callers_indices(
    node: NodeProcess,
) -> None:
    n = 3000
    accounts = np.arange(n, dtype=np.uint64) % 40
    now = datetime.now(UTC) - timedelta(seconds=5)
    stamps = [now - timedelta(microseconds=i) for i in range(n)]
    codes = np.array(["requests", "bytes"] * (n // 2))
    values = np.arange(n, dtype=np.int64) + 1
    regions = [("eu", "us", "apac")[i % 3] for i in range(n)]
    ids = [f"evt-{i:06}" for i in range(n)]
    # Three events the node refuses one by one, at known places.
    codes[17] = "no_such_metric"
    stamps[1234] = now - timedelta(days=3000)  # older than the retention
    operations = np.zeros(n, np.uint8)
    operations[2500] = 1  # an ADD to a COUNT metric
    async with AsyncClient([node.address]) as client:
        await create_metrics(client)
        result = await client.ingest_columns(
            account_ids=accounts,
            metric_codes=codes,
            values=values,
            timestamps=stamps,
            event_ids=ids,
            properties={"region": regions},
            operation_types=operations,
            delivery=DeliveryMode.SYNC,
        )
        assert [index for index, _ in result.rejected] == [17, 1234, 2500]
        assert [reason for _, reason in result.rejected] == [
            "unknown_metric",
            "timestamp_too_old",
            "operation_type_requires_count_unique",
        ]
        assert (result.n_stored, result.n_duplicates, result.n_rejected) == (n - 3, 0, 3)
        stored = np.ones(n, bool)
        stored[[17, 1234, 2500]] = False
        period = current_month()
        for account in (0, 17, 39):
            mine = stored & (accounts == account)
            requests = mine & (codes == "requests")
            usage = await client.query(account, "requests", period)
            assert usage.value.count == int(np.count_nonzero(requests))
            total = await client.query(account, "bytes", period)
            assert total.value.sum == int(values[mine & (codes == "bytes")].sum())
            eu = await client.query(account, "requests", period, filters={"region": "eu"})
            in_eu = np.array([r == "eu" for r in regions])
            assert eu.value.count == int(np.count_nonzero(requests & in_eu))
        # The same ids again: every stored event is a duplicate, the refused ones refused again.
        again = await client.ingest_columns(
            account_ids=accounts,
            metric_codes=codes,
            values=values,
            timestamps=stamps,
            event_ids=ids,
            properties={"region": regions},
            operation_types=operations,
        )
        assert (again.n_stored, again.n_duplicates, again.n_rejected) == (0, n - 3, 3)


class ReplyLosingProxy:
    """Forwards bytes between clients and the node; once armed, the next bytes the node sends
    back are swallowed and that client connection is broken (the node has applied what they
    answer)."""

    def __init__(self, upstream: str) -> None:
        self.host, port = upstream.rsplit(":", 1)
        self.port = int(port)
        self.armed = False
        self.swallowed = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, up_writer, back=False, client=writer))
                group.create_task(self._pump(up_reader, writer, back=True, client=writer))
        except* (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.tasks.discard(task)
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        back: bool,
        client: asyncio.StreamWriter,
    ) -> None:
        while data := await source.read(65536):
            if back and self.armed:
                self.armed = False
                self.swallowed += 1
                client.transport.abort()  # the reply is lost with the connection
                raise ConnectionResetError("reply swallowed")
            sink.write(data)
            await sink.drain()
        raise ConnectionResetError("closed")


async def test_a_retry_after_a_lost_reply_counts_nothing_twice(node: NodeProcess) -> None:
    proxy = ReplyLosingProxy(node.address)
    address = await proxy.start()
    try:
        # Accounts of one partition: one INGEST, whose one reply is lost.
        account = next(a for a in range(100) if partition_of(a, node.partitions) == 0)
        n = 500
        async with AsyncClient([address], request_timeout=20) as client:
            await create_metrics(client)
            proxy.armed = True
            result = await client.ingest_columns(
                account_ids=np.full(n, account, np.uint64),
                metric_codes="bytes",
                values=np.arange(1, n + 1, dtype=np.int64),
                delivery=DeliveryMode.SYNC,
            )
            assert proxy.swallowed == 1
            assert result.n_rejected == 0
            assert result.n_stored + result.n_duplicates == n
            usage = await client.query(account, "bytes", current_month())
            assert usage.value.count == n
            assert usage.value.sum == n * (n + 1) // 2
    finally:
        await proxy.close()
