"""Every code example of the Python client's page (docs/client.md) runs as written.

They are the examples of the SDK page this client keeps compatible with; ``tests/test_docs.py``
checks that the page shows each of them exactly as it is run here.

Each example runs against a fresh node started as the README starts it, but on a free port:
the page's ``localhost:7001`` reaches it through ``AsyncClient`` itself, which the test swaps
for a subclass that dials the node's real address for that one seed (so the suite passes
while a node the README started still holds 7001). After a setup step that
gives it what the page assumes already happened (a metric to delete, a ``user_id`` to add,
``events`` to send). The example's own text is not changed beyond restoring line breaks. Its
output is compared with the numbers the page implies.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import unimeter
from tests.support.nodeproc import NodeProcess

PAGE_SEED = "localhost:7001"

CONNECT_CM = """
from unimeter import AsyncClient
async with AsyncClient(["localhost:7001"]) as client:
    # client is ready to use
    ...
"""

CONNECT_EXPLICIT = """
client = AsyncClient(["localhost:7001"])
await client.connect()
# ... use client ...
await client.close()
"""

DEFINE_METRICS = """
from unimeter import (
    MetricSchema, AggType, PeriodType, DimensionFilter, AlertThreshold,
)

await client.metrics.create(MetricSchema(
    code="api_calls",
    agg_type=AggType.COUNT,
))

await client.metrics.create(MetricSchema(
    code="compute_seconds",
    agg_type=AggType.SUM,
    filters=[
        DimensionFilter(key="provider", values=["aws", "gcp", "azure"]),
    ],
    thresholds=[
        AlertThreshold(code="free_tier", value=10_000),
    ],
))
"""

CALENDAR = """
await client.metrics.create(MetricSchema(
    code="api_calls",
    agg_type=AggType.COUNT,
    period_type=PeriodType.CALENDAR,
    billing_cycle_day=1,  # 1-28; day of month when the period starts
))
"""

PERIOD_HELPERS = """
from unimeter import current_month, last_month, current_billing_period, last_billing_period

current_month()               # 1st to 1st of next month
last_month()                  # previous calendar month
current_billing_period(15)    # current period starting on the 15th
last_billing_period(15)       # previous period starting on the 15th
"""

LIST_METRICS = """
schemas = await client.metrics.list()
for s in schemas:
    print(f"{s.code}: {s.agg_type.name}")
"""

DELETE_METRIC = """
await client.metrics.delete("api_calls")
"""

SEND_EVENTS = """
from unimeter import Event, DeliveryMode, scale

await client.ingest([
    Event(account_id=42, metric_code="api_calls", value=1),
    Event(account_id=42, metric_code="api_calls", value=1),
    Event(account_id=42, metric_code="api_calls", value=1),
])
"""

SEND_PROPERTIES = """
await client.ingest([
    Event(
        account_id=42,
        metric_code="compute_seconds",
        value=scale(45.0),
        properties={"provider": "aws"},
    ),
])
"""

SEND_SYNC = """
result = await client.ingest(
    [Event(account_id=42, metric_code="payment", value=scale(9.99))],
    delivery=DeliveryMode.SYNC,
)
print(f"stored {result.n_stored} events")
"""

SEND_UNIQUE = """
from unimeter import OperationType

await client.ingest([
    Event(
        account_id=100,
        metric_code="active_seats",
        value=user_id,
        operation_type=OperationType.ADD,
    ),
])
"""

QUERY_TOTAL = """
from unimeter import current_month, unscale

result = await client.query(42, "api_calls", current_month())
print(f"API calls this month: {result.value.count}")
"""

QUERY_FILTER = """
result = await client.query(
    42,
    "compute_seconds",
    current_month(),
    filters={"provider": "aws"},
)
print(f"AWS compute: {unscale(result.value.sum)} seconds")
"""

QUERY_MULTI = """
result = await client.query(
    42,
    "compute_seconds",
    current_month(),
    filters={"provider": "aws", "region": "us-east"},
)
"""

QUERY_REALTIME = """
agg = await client.query_realtime(42, "api_calls")
print(f"current count: {agg.count}")
"""

ERROR_HANDLING = """
from unimeter import BackpressureError, ServerError

try:
    await client.ingest(events)
except BackpressureError:
    # Server disk is full. Back off and retry.
    await asyncio.sleep(1)
    await client.ingest(events)
except ServerError as e:
    print(f"Server error: {e}")
"""


@pytest.fixture
def sdk_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path / "data", partitions=8).start()
    real = unimeter.AsyncClient

    class PageClient(real):  # type: ignore[misc, valid-type]
        """``AsyncClient`` with the page's seed pointed at this test's node."""

        def __init__(self, seeds: list[str], *args: object, **kwargs: object) -> None:
            seeds = [proc.address if seed == PAGE_SEED else seed for seed in seeds]
            super().__init__(seeds, *args, **kwargs)

    monkeypatch.setattr(unimeter, "AsyncClient", PageClient)
    try:
        yield proc
    finally:
        proc.kill()


async def run_snippets(*snippets: str, **names: object) -> str:
    """Run snippets in one namespace inside a coroutine (as in an async main), return stdout."""
    from unimeter import AsyncClient  # the fixture's PageClient

    namespace: dict[str, object] = {"asyncio": asyncio, "AsyncClient": AsyncClient, **names}
    out = io.StringIO()
    for snippet in snippets:
        body = textwrap.indent(textwrap.dedent(snippet), "    ")
        code = "async def __example__():\n" + body + "\n    return locals()\n"
        exec(compile(code, "<sdk-page>", "exec"), namespace)
        with contextlib.redirect_stdout(out):
            made = await namespace["__example__"]()  # type: ignore[operator]
        namespace.update(made)
    return out.getvalue()


OPEN = """
client = AsyncClient(["localhost:7001"])
await client.connect()
"""
CLOSE = "await client.close()"


async def test_connect_examples(sdk_node: NodeProcess) -> None:
    await run_snippets(CONNECT_CM)
    await run_snippets(CONNECT_EXPLICIT)


async def test_define_list_delete(sdk_node: NodeProcess) -> None:
    out = await run_snippets(OPEN, DEFINE_METRICS, LIST_METRICS, DELETE_METRIC, LIST_METRICS, CLOSE)
    assert out.splitlines() == [
        "api_calls: COUNT",
        "compute_seconds: SUM",  # the first listing
        "compute_seconds: SUM",  # after the delete
    ]


async def test_calendar_and_period_helpers(sdk_node: NodeProcess) -> None:
    out = await run_snippets(
        OPEN,
        "from unimeter import MetricSchema, AggType, PeriodType",
        CALENDAR,
        PERIOD_HELPERS,
        LIST_METRICS,
        CLOSE,
    )
    assert out.splitlines() == ["api_calls: COUNT"]


async def test_send_and_query(sdk_node: NodeProcess) -> None:
    setup = """
from unimeter import MetricSchema, AggType, DimensionFilter
await client.metrics.create(MetricSchema(code="payment", agg_type=AggType.SUM))
await client.metrics.create(MetricSchema(code="active_seats", agg_type=AggType.COUNT_UNIQUE))
"""
    out = await run_snippets(
        OPEN,
        DEFINE_METRICS,
        setup,
        SEND_EVENTS,
        SEND_PROPERTIES,
        SEND_SYNC,
        SEND_UNIQUE,
        QUERY_TOTAL,
        QUERY_FILTER,
        QUERY_REALTIME,
        CLOSE,
        user_id=7,
    )
    assert out.splitlines() == [
        "stored 1 events",
        "API calls this month: 3",
        "AWS compute: 45.0 seconds",
        "current count: 3",
    ]


async def test_query_with_two_dimensions(sdk_node: NodeProcess) -> None:
    setup = """
from unimeter import MetricSchema, AggType, DimensionFilter, Event, scale
await client.metrics.create(MetricSchema(
    code="compute_seconds", agg_type=AggType.SUM,
    filters=[DimensionFilter(key="provider", values=["aws", "gcp"]),
             DimensionFilter(key="region", values=["us-east", "eu-west"])],
))
await client.ingest([
    Event(account_id=42, metric_code="compute_seconds", value=scale(10),
          properties={"provider": "aws", "region": "us-east"}),
    Event(account_id=42, metric_code="compute_seconds", value=scale(20),
          properties={"provider": "aws", "region": "eu-west"}),
    Event(account_id=42, metric_code="compute_seconds", value=scale(40),
          properties={"provider": "gcp", "region": "us-east"}),
])
from unimeter import current_month
"""
    check = "print(result.value.sum)"
    out = await run_snippets(OPEN, setup, QUERY_MULTI, check, CLOSE)
    assert out.splitlines() == [str(10_000_000)]


async def test_error_handling(sdk_node: NodeProcess) -> None:
    setup = """
from unimeter import Event
events = [Event(account_id=1, metric_code="api_calls", value=1)]
"""
    # With the metric unknown the events are rejected per event (no exception); with a bad
    # event the client raises a ServerError subclass, which the example prints.
    out = await run_snippets(OPEN, DEFINE_METRICS, setup, ERROR_HANDLING, CLOSE)
    assert out == ""
    bad = "from unimeter import Event\nevents = [Event(account_id=-1, metric_code='x')]"
    out = await run_snippets(OPEN, bad, ERROR_HANDLING, CLOSE)
    assert out.startswith("Server error: ")
