"""Unit tests of the client library's surface: routing, conversions, paging, argument checks
and exports. Nothing here talks to a node (see the end-to-end tests)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.nodeproc import free_port
from unimeter import (
    AggValue,
    AsyncClient,
    ClosedError,
    DeliveryMode,
    Event,
    InvalidRequestError,
    OperationType,
    Period,
    ProtocolError,
    UnavailableError,
    current_month,
    errors,
    periods,
)
from unimeter.client import batching, convert
from unimeter.client.cluster_map import ClusterMap, split_address
from unimeter.client.paging import Pages
from unimeter.routing import partition_of
from unimeter.wire.messages import (
    AggReply,
    BreakdownReply,
    PartitionMap,
    StoredAlert,
    StoredEvent,
)

T0 = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)


# --------------------------------------------------------------------------- routing


def pmap(epoch: int, leaders: tuple[int, ...], nodes: dict[int, str] | None = None) -> PartitionMap:
    nodes = nodes if nodes is not None else {1: "a:1", 2: "b:2"}
    return PartitionMap(partitions=len(leaders), nodes=nodes, leaders=leaders, epoch=epoch)


def test_map_routes_each_partition_to_its_leader() -> None:
    cmap = ClusterMap()
    assert not cmap.known
    assert cmap.apply(pmap(3, (1, 2, -1, 1)))
    assert [cmap.leader_address(p) for p in range(4)] == ["a:1", "b:2", None, "a:1"]
    assert all(cmap.partition_of(a) == partition_of(a, 4) for a in range(100))
    assert cmap.addresses() == ["a:1", "b:2"]


def test_map_ignores_an_older_epoch_and_keeps_hints_until_a_newer_one() -> None:
    cmap = ClusterMap()
    cmap.apply(pmap(3, (1, 1)))
    cmap.note_leader(0, "b:2")
    assert cmap.leader_address(0) == "b:2"
    assert not cmap.apply(pmap(2, (2, 2)))
    assert cmap.leader_address(1) == "a:1"
    assert cmap.apply(pmap(3, (1, 1)))  # same epoch: the hint is newer than this view
    assert cmap.leader_address(0) == "b:2"
    assert cmap.apply(pmap(4, (1, 2)))
    assert cmap.leader_address(0) == "a:1"
    cmap.note_leader(1, "c:3")
    cmap.forget_leader(1)
    assert cmap.leader_address(1) == "b:2"


@pytest.mark.parametrize(
    "bad",
    [
        PartitionMap(partitions=3, nodes={1: "a:1"}, leaders=(1, 1), epoch=1),
        PartitionMap(partitions=0, nodes={}, leaders=(), epoch=1),
        PartitionMap(partitions=2, nodes={1: "a:1"}, leaders=(1, 7), epoch=1),
    ],
)
def test_map_refuses_inconsistent_maps(bad: PartitionMap) -> None:
    with pytest.raises(ProtocolError):
        ClusterMap().apply(bad)


def test_map_refuses_a_different_partition_count() -> None:
    cmap = ClusterMap()
    cmap.apply(pmap(1, (1, 1)))
    with pytest.raises(ProtocolError):
        cmap.apply(pmap(2, (1, 1, 1)))


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("localhost:7001", ("localhost", 7001)),
        ("[::1]:9", ("::1", 9)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
    ],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["localhost", ":7001", "host:", "host:0", "host:70000", "h:x"])
def test_split_address_refuses(address: str) -> None:
    with pytest.raises(ValueError):
        split_address(address)


# --------------------------------------------------------------------------- conversions


def test_period_and_times_travel_as_microseconds() -> None:
    period = current_month(T0)
    start_us, end_us = convert.period_us(period)
    assert periods.from_us(start_us) == datetime(2026, 3, 1, tzinfo=UTC)
    assert periods.from_us(end_us) == datetime(2026, 4, 1, tzinfo=UTC)
    assert convert.time_range_us(T0, T0 + timedelta(microseconds=1)) == (
        periods.to_us(T0),
        periods.to_us(T0) + 1,
    )
    usage = convert.usage_result(
        AggReply(value=AggValue(sum=5, count=2), period_start_us=start_us, period_end_us=end_us)
    )
    assert (usage.period_start, usage.period_end) == (period.start, period.end)
    assert usage.value == AggValue(sum=5, count=2)


@pytest.mark.parametrize(
    ("since", "until"),
    [(T0, T0), (T0.replace(tzinfo=None), T0 + timedelta(1)), (T0, "tomorrow")],
)
def test_time_ranges_are_checked(since: object, until: object) -> None:
    with pytest.raises(InvalidRequestError):
        convert.time_range_us(since, until)


def test_records_come_back_with_datetimes() -> None:
    event = convert.event_record(
        StoredEvent(
            account_id=1,
            metric_code="m",
            value=3,
            timestamp_us=periods.to_us(T0),
            operation_type=2,
            properties={"a": "b"},
            event_id=None,
            offset=9,
        )
    )
    assert (event.timestamp, event.operation_type, event.offset) == (T0, OperationType.REMOVE, 9)
    alert = convert.alert_record(
        StoredAlert(
            account_id=1,
            metric_code="m",
            threshold_code="t",
            value_at_cross=10,
            triggered_at_us=periods.to_us(T0),
            cursor=4,
        )
    )
    assert (alert.triggered_at, alert.cursor) == (T0, 4)


def test_filters_and_group_by_travel_sorted_and_checked() -> None:
    assert convert.filters(None) == ()
    assert convert.filters({"region": "eu", "provider": "aws"}) == (
        ("provider", "aws"),
        ("region", "eu"),
    )
    with pytest.raises(InvalidRequestError):
        convert.filters({"a": 1})  # type: ignore[dict-item]
    with pytest.raises(InvalidRequestError):
        convert.filters({f"k{i}": "v" for i in range(5)})
    assert convert.group_by(["provider", "region"]) == ("provider", "region")
    for bad in ("provider", [], ["a", "a"], ["a"] * 5, [""]):
        with pytest.raises(InvalidRequestError):
            convert.group_by(bad)


def test_breakdown_cells_become_frozensets() -> None:
    cells = (
        ((("provider", "aws"), ("region", "eu")), AggValue(count=1)),
        ((("provider", "gcp"),), AggValue(count=2)),
    )
    assert convert.breakdown(BreakdownReply(cells=cells)) == {
        frozenset({("provider", "aws"), ("region", "eu")}): AggValue(count=1),
        frozenset({("provider", "gcp")}): AggValue(count=2),
    }
    with pytest.raises(ProtocolError):
        convert.breakdown(BreakdownReply(cells=cells + cells))


# --------------------------------------------------------------------------- paging


async def test_pages_follow_the_cursor_until_none() -> None:
    served = {-1: ([1, 2], 5), 5: ([], 8), 8: ([3], None)}
    asked: list[int] = []

    async def fetch(after: int) -> tuple[list[int], int | None]:
        asked.append(after)
        return served[after]

    assert [x async for x in Pages(fetch)] == [1, 2, 3]
    assert asked == [-1, 5, 8]


async def test_pages_refuse_a_cursor_that_does_not_advance() -> None:
    async def fetch(after: int) -> tuple[list[int], int | None]:
        return [1], 3

    pages = Pages(fetch, after=3)
    with pytest.raises(ProtocolError):
        await anext(pages)


async def test_a_failed_page_can_be_fetched_again() -> None:
    outcomes: list[Exception | tuple[list[int], int | None]] = [
        ([1], 4),
        UnavailableError("blip"),
        ([2], None),
    ]

    async def fetch(after: int) -> tuple[list[int], int | None]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    pages = Pages(fetch)
    assert await anext(pages) == 1
    with pytest.raises(UnavailableError):
        await anext(pages)
    assert [x async for x in pages] == [2]


# --------------------------------------------------------------------------- the client object


def closed_address() -> str:
    return f"127.0.0.1:{free_port()}"


async def test_bad_events_fail_before_anything_is_sent() -> None:
    # The seed refuses connections: reaching the network would raise UnavailableError.
    client = AsyncClient([closed_address()], request_timeout=2)
    with pytest.raises(InvalidRequestError, match="event 1: account_id"):
        await client.ingest(
            [Event(account_id=1, metric_code="m"), Event(account_id=-5, metric_code="m")]
        )
    await client.close()


async def test_empty_ingest_needs_no_round_trip() -> None:
    client = AsyncClient([closed_address()], request_timeout=2)
    assert await client.ingest([]) == batching.empty_result()
    await client.close()


async def test_connect_names_every_seed_it_tried() -> None:
    seeds = [closed_address(), closed_address()]
    client = AsyncClient(seeds, request_timeout=2)
    with pytest.raises(UnavailableError) as info:
        await client.connect()
    for seed in seeds:
        assert seed in str(info.value)
    await client.close()


async def test_a_closed_client_refuses_work() -> None:
    client = AsyncClient([closed_address()])
    await client.close()
    await client.close()  # idempotent
    with pytest.raises(ClosedError):
        await client.query(1, "m", current_month())
    with pytest.raises(ClosedError):
        await client.connect()
    with pytest.raises(ClosedError):
        await client.ingest([Event(account_id=1, metric_code="m")], DeliveryMode.SYNC)


async def test_calls_are_checked_before_connecting() -> None:
    client = AsyncClient([closed_address()], request_timeout=2)
    month = current_month(T0)
    with pytest.raises(InvalidRequestError):
        await client.query(-1, "m", month)
    with pytest.raises(InvalidRequestError):
        await client.query(1, "bad code", month)
    with pytest.raises(InvalidRequestError):
        await client.query(1, "m", (month.start, month.end))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        await client.query_breakdown(1, "m", month, group_by="provider")
    with pytest.raises(InvalidRequestError):
        await client.list_alerts(1, since=-4)
    with pytest.raises(InvalidRequestError):
        client.list_events(1, T0, T0 - timedelta(1))
    with pytest.raises(InvalidRequestError):
        await client.ingest([Event(account_id=1, metric_code="m")], delivery=7)  # type: ignore[arg-type]
    await client.close()


@pytest.mark.parametrize(
    ("seeds", "kwargs", "error"),
    [
        ("localhost:7001", {}, TypeError),
        ([], {}, ValueError),
        (["localhost"], {}, ValueError),
        (["localhost:7001"], {"request_timeout": 0}, ValueError),
        (["localhost:7001"], {"client_name": "x" * 2000}, ValueError),
    ],
)
def test_constructor_checks_its_arguments(
    seeds: Any, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        AsyncClient(seeds, **kwargs)


def test_import_unimeter_stays_light() -> None:
    code = (
        "import sys, unimeter\n"
        "heavy = {'asyncio', 'cbor2', 'unimeter.client', 'unimeter.wire.codec', 'unimeter.node',"
        " 'unimeter.actors'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
        "assert unimeter.AsyncClient.__name__ == 'AsyncClient'\n"
        "assert unimeter.Period is unimeter.model.Period\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"


def test_every_promised_name_is_exported() -> None:
    import unimeter

    promised = (  # noqa: SIM905 - a list of names reads best as words
        "AsyncClient MetricSchema AggType PeriodType DimensionFilter AlertThreshold Event "
        "DeliveryMode OperationType scale unscale current_month last_month "
        "current_billing_period last_billing_period today_utc yesterday_utc this_week_utc "
        "last_week_utc Period UnimeterError ServerError BackpressureError UnknownMetricError "
        "AlreadyExistsError NotFoundError InvalidRequestError AuthError TimeoutError "
        "UnavailableError NotLeaderError ProtocolError ClosedError IngestResult AggValue "
        "UsageResult EventRecord AlertRecord AlertSubscription"
    ).split()
    for name in promised:
        assert name in unimeter.__all__
        assert getattr(unimeter, name) is not None
    assert unimeter.TimeoutError is errors.TimeoutError
    assert isinstance(Period(T0, T0 + timedelta(1)), unimeter.Period)
