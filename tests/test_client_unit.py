"""Unit tests of the client library's ingest path: batching, result merging, sequence numbers
and their reuse on retry, read-your-writes indices. Nothing here talks to a node (the
end-to-end tests do); "sending" is a scripted stand-in for the retrying call."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.wire_cases import typecode
from unimeter import (
    Event,
    IngestResult,
    InvalidRequestError,
    NotLeaderError,
    OperationType,
    ProtocolError,
    UnavailableError,
    UnknownMetricError,
    errors,
    limits,
    periods,
)
from unimeter.client import batching, columns
from unimeter.client.batching import Group, build_groups, merge_results
from unimeter.client.cluster_map import Partitioner
from unimeter.client.ingest import CallSender, send_group, send_groups
from unimeter.client.retry import Attempts, Backoff, retry_until
from unimeter.client.session import SeqWindow, Session
from unimeter.routing import partition_of
from unimeter.wire.messages import (
    NO_TIMESTAMP,
    GetPartitionMap,
    Ingest,
    IngestReply,
    Reply,
    Request,
)

T0 = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)
SETTINGS = settings(max_examples=200, deadline=None)


part8 = Partitioner(8).many


def one_part8(account_id: int) -> int:
    return partition_of(account_id, 8)


def reply(
    n_stored: int = 0,
    *,
    n_duplicates: int = 0,
    rejected: tuple[tuple[int, str], ...] = (),
    last_offset: int | None = None,
    log_index: int = 1,
) -> IngestReply:
    return IngestReply(
        n_stored=n_stored,
        n_duplicates=n_duplicates,
        n_rejected=len(rejected),
        rejected=rejected,
        last_offset=last_offset,
        log_index=log_index,
    )


# --------------------------------------------------------------------------- batching


def test_columns_of_a_mixed_batch() -> None:
    events = [
        Event(account_id=5, metric_code="api_calls"),
        Event(
            account_id=5,
            metric_code="seats",
            value=77,
            timestamp=T0,
            operation_type=OperationType.ADD,
            properties={"provider": "aws"},
            event_id="e-1",
        ),
        Event(account_id=5, metric_code="api_calls", value=-3),
    ]
    [group] = build_groups(events, part8)
    batch = group.batch
    assert group.partition == one_part8(5)
    assert list(group.origin) == [0, 1, 2]
    assert batch.metric_codes == ("api_calls", "seats")
    assert (typecode(batch.metric_index), list(batch.metric_index)) == ("B", [0, 1, 0])
    assert (typecode(batch.account_ids), list(batch.account_ids)) == ("Q", [5, 5, 5])
    assert (typecode(batch.values), list(batch.values)) == ("q", [1, 77, -3])
    assert batch.timestamps is not None and typecode(batch.timestamps) == "q"
    assert list(batch.timestamps) == [NO_TIMESTAMP, periods.to_us(T0), NO_TIMESTAMP]
    assert batch.operation_types is not None and typecode(batch.operation_types) == "B"
    assert list(batch.operation_types) == [0, 1, 0]
    assert batch.properties == (None, {"provider": "aws"}, None)
    assert batch.event_ids == (None, "e-1", None)


def test_absent_columns_are_none() -> None:
    [group] = build_groups([Event(account_id=1, metric_code="m", value=v) for v in range(3)], part8)
    batch = group.batch
    assert batch.timestamps is None
    assert batch.operation_types is None
    assert batch.properties is None
    assert batch.event_ids is None


def test_metric_index_widens_past_256_codes() -> None:
    events = [Event(account_id=9, metric_code=f"m{i}") for i in range(300)]
    [group] = build_groups(events, part8)
    assert typecode(group.batch.metric_index) == "H"
    batch = group.batch
    assert [batch.metric_codes[i] for i in batch.metric_index] == [e.metric_code for e in events]
    assert len(batch.metric_codes) == 300
    [small] = build_groups(events[:256], part8)
    assert typecode(small.batch.metric_index) == "B"


def test_groups_split_at_the_events_per_batch_limit() -> None:
    events = [Event(account_id=3, metric_code="m", value=i) for i in range(10)]
    groups = build_groups(events, part8, events_per_batch_max=4)
    assert [list(g.origin) for g in groups] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [list(g.batch.values) for g in groups] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_groups_split_before_the_frame_limit() -> None:
    # Distinct values: repeated ones are dictionary-encoded down to an index byte each.
    events = [
        Event(
            account_id=3,
            metric_code="m",
            properties={f"k{i}": f"{n:064}" for i in range(limits.properties_per_event_max)},
        )
        for n in range(200)
    ]
    groups = build_groups(events, part8, frame_bytes_max=64 * 1024)
    assert len(groups) > 1
    assert sorted(i for g in groups for i in g.origin) == list(range(200))
    # Measured, not estimated: every batch encodes well inside the frame.
    from unimeter.wire.codec import ClientCodec

    codec = ClientCodec(frame_bytes_max=64 * 1024)
    for request_id, g in enumerate(groups, 1):
        codec.encode_request(request_id, ingest_of(g))


def ingest_of(group: Group, seq: int = 1) -> Ingest:
    return Ingest(
        partition=group.partition,
        producer_id=1,
        seq=seq,
        sync=False,
        catalog_version=0,
        batch=group.batch,
    )


codes = st.sampled_from(["api_calls", "compute", "seats", "x.y:z-1"])
events_strategy = st.builds(
    Event,
    account_id=st.one_of(st.integers(0, 40), st.integers(0, limits.account_id_max)),
    metric_code=codes,
    value=st.integers(limits.value_min, limits.value_max),
    timestamp=st.none() | st.datetimes(timezones=st.just(UTC)),
    operation_type=st.sampled_from(OperationType),
    properties=st.dictionaries(st.sampled_from(["a", "b", "provider"]), st.text(max_size=5)),
    event_id=st.none() | st.text(min_size=1, max_size=10),
)


def rebuild(group: Group) -> list[Event]:
    """The events a batch describes, read back column by column (the oracle)."""
    b = group.batch
    out = []
    properties, event_ids = b.properties, b.event_ids
    stamps = None if b.timestamps is None else b.timestamps.tolist()
    ops = None if b.operation_types is None else b.operation_types.tolist()
    accounts, values, index = b.account_ids.tolist(), b.values.tolist(), b.metric_index.tolist()
    for i in range(len(b)):
        ts = None if stamps is None else stamps[i]
        props = None if properties is None else properties[i]
        out.append(
            Event(
                account_id=accounts[i],
                metric_code=b.metric_codes[index[i]],
                value=values[i],
                timestamp=None if ts in (None, NO_TIMESTAMP) else periods.from_us(ts),
                operation_type=OperationType(0 if ops is None else ops[i]),
                properties=props or {},
                event_id=None if event_ids is None else event_ids[i],
            )
        )
    return out


@SETTINGS
@given(st.lists(events_strategy, max_size=60), st.integers(1, 16), st.integers(1, 25))
def test_groups_hold_every_event_once_in_its_partition(
    events: list[Event], partitions: int, per_batch: int
) -> None:
    def route(account_id: int) -> int:
        return partition_of(account_id, partitions)

    groups = build_groups(events, Partitioner(partitions).many, events_per_batch_max=per_batch)
    seen: list[int] = []
    for group in groups:
        assert 1 <= len(group.batch) <= per_batch
        assert list(group.origin) == sorted(group.origin)
        for index, event in zip(group.origin, rebuild(group), strict=True):
            original = events[index]
            assert route(original.account_id) == group.partition
            assert event.timestamp == (
                None if original.timestamp is None else original.timestamp.astimezone(UTC)
            )
            assert event == Event(
                account_id=original.account_id,
                metric_code=original.metric_code,
                value=original.value,
                timestamp=event.timestamp,
                operation_type=original.operation_type,
                properties=dict(original.properties),
                event_id=original.event_id,
            )
        seen.extend(group.origin)
    assert sorted(seen) == list(range(len(events)))
    assert [g.partition for g in groups] == sorted(g.partition for g in groups)


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (Event(account_id=-1, metric_code="m"), "account_id"),
        (Event(account_id=1, metric_code="no spaces"), "metric code"),
        (Event(account_id=1, metric_code="m", value=2**63), "signed 64-bit"),
        (Event(account_id=1, metric_code="m", value=1.5), "scale()"),  # type: ignore[arg-type]
        (Event(account_id=1, metric_code="m", timestamp=datetime(2026, 1, 1)), "timezone"),
        (Event(account_id=1, metric_code="m", properties={"k": "v" * 65}), "exceeds"),
        (Event(account_id=1, metric_code="m", event_id=""), "event_id"),
        ({"account_id": 1, "metric_code": "m"}, "expected an Event"),
    ],
)
def test_a_bad_event_is_named_by_index(bad: object, problem: str) -> None:
    events: list[Any] = [Event(account_id=1, metric_code="m")] * 3 + [bad]
    with pytest.raises(InvalidRequestError, match=r"^event 3: ") as info:
        build_groups(events, part8)
    assert problem in str(info.value)
    with pytest.raises(InvalidRequestError, match=r"^event 3: "):
        batching.validate_events(events)


wild_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
wild_fields = {
    "account_id": st.one_of(
        st.integers(-3, 3), st.integers(2**64 - 2, 2**64 + 1), st.booleans(), st.floats()
    ),
    "metric_code": st.one_of(codes, wild_text, st.integers()),
    "value": st.one_of(
        st.integers(-(2**63) - 1, -(2**63) + 1), st.integers(2**63 - 1, 2**63), st.floats()
    ),
    "timestamp": st.one_of(st.datetimes(), st.datetimes(timezones=st.just(UTC)), st.integers()),
    "operation_type": st.one_of(st.sampled_from(OperationType), st.integers(-1, 3), wild_text),
    "properties": st.one_of(
        st.dictionaries(wild_text, wild_text, max_size=3),
        st.dictionaries(
            st.text("abcdef", min_size=1, max_size=3), st.just("v"), min_size=16, max_size=18
        ),
        st.fixed_dictionaries({"k": st.sampled_from(["é" * 32, "é" * 33])}),
        st.lists(st.tuples(st.just("k"), st.just("v")), max_size=1),
    ),
    "event_id": st.one_of(wild_text, st.sampled_from(["é" * 32, "é" * 33]), st.integers()),
}
# A valid event with one field replaced by anything at all.
wild_events = st.builds(
    lambda event, field: dataclasses.replace(event, **dict([field])),
    events_strategy,
    st.sampled_from(sorted(wild_fields)).flatmap(
        lambda name: st.tuples(st.just(name), wild_fields[name])
    ),
)


@SETTINGS
@given(st.lists(st.one_of(wild_events, st.just({"account_id": 1})), max_size=6))
def test_the_bulk_check_never_accepts_what_validate_refuses(events: list[Any]) -> None:
    """``Event.validate`` is the authority; the bulk check may only agree with it or defer."""
    refused = []
    for index, event in enumerate(events):
        try:
            event.validate()
        except (ValueError, AttributeError):
            refused.append(index)
    if refused:
        with pytest.raises((columns._Unsure, TypeError, ValueError, AttributeError, OverflowError)):
            columns._bulk(events)
        with pytest.raises(InvalidRequestError, match=rf"^event {refused[0]}: "):
            build_groups(events, part8)
        with pytest.raises(InvalidRequestError, match=rf"^event {refused[0]}: "):
            batching.validate_events(events)
    else:
        assert sum(len(g.batch) for g in build_groups(events, part8)) == len(events)
        batching.validate_events(events)


# --------------------------------------------------------------------------- merging


def test_merge_sums_and_maps_rejections_to_the_callers_indices() -> None:
    events = [Event(account_id=a, metric_code="m") for a in range(12)]
    groups = build_groups(events, part8)
    assert len(groups) > 2
    parts = []
    for n, group in enumerate(groups):
        # Every group rejects its last event; offsets vary and one group has none.
        last = len(group.origin) - 1
        parts.append(
            (
                group,
                reply(
                    last,
                    n_duplicates=1,
                    rejected=((last, f"reason{n}"),),
                    last_offset=None if n == 1 else 100 - n,
                ),
            )
        )
    result = merge_results(parts)
    expected_rejected = sorted((g.origin[-1], f"reason{n}") for n, g in enumerate(groups))
    assert result == IngestResult(
        n_stored=sum(len(g.origin) - 1 for g in groups),
        n_duplicates=len(groups),
        n_rejected=len(groups),
        rejected=expected_rejected,
        last_offset=100,
    )


def test_merge_of_nothing_and_of_offsetless_replies() -> None:
    assert merge_results([]) == batching.empty_result()
    [group] = build_groups([Event(account_id=1, metric_code="m")], part8)
    assert merge_results([(group, reply(1))]).last_offset is None


def test_merge_refuses_a_rejection_outside_the_batch() -> None:
    [group] = build_groups([Event(account_id=1, metric_code="m")], part8)
    with pytest.raises(ProtocolError):
        merge_results([(group, reply(0, rejected=((1, "bad"),)))])


# --------------------------------------------------------------------------- sequence numbers


def test_sequence_numbers_count_per_partition_from_one() -> None:
    session = Session(producer_id=7)
    assert [session.window(0).try_acquire() for _ in range(3)] == [1, 2, 3]
    assert session.window(5).try_acquire() == 1
    assert session.window(0).try_acquire() == 4


def test_producer_ids_are_random_nonzero_u64() -> None:
    ids = {Session().producer_id for _ in range(50)}
    assert len(ids) == 50
    assert all(0 < i < 2**64 for i in ids)


def test_window_stops_more_than_its_size_above_the_lowest_outstanding() -> None:
    window = SeqWindow(size=3)
    assert [window.try_acquire() for _ in range(3)] == [1, 2, 3]
    assert window.try_acquire() is None
    window.release(2)  # not the lowest: the window does not move
    assert window.try_acquire() is None
    window.release(1)
    assert window.try_acquire() == 4
    assert window.try_acquire() == 5
    assert window.try_acquire() is None


async def test_window_waiters_wake_when_the_lowest_settles() -> None:
    window = SeqWindow(size=1)
    assert window.try_acquire() == 1
    waiter = asyncio.ensure_future(window.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    window.release(1)
    assert await waiter == 2


async def test_window_waiter_cancelled_leaves_no_trace() -> None:
    window = SeqWindow(size=1)
    assert window.try_acquire() == 1
    waiter = asyncio.ensure_future(window.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    window.release(1)
    assert window.try_acquire() == 2


class WindowMachine(RuleBasedStateMachine):
    """A SeqWindow against a plain model: numbers are unique and increasing, and every
    outstanding number stays within ``size`` of the highest handed out (what the server's
    memory of recent results covers)."""

    SIZE = 4

    def __init__(self) -> None:
        super().__init__()
        self.window = SeqWindow(self.SIZE)
        self.outstanding: set[int] = set()
        self.highest = 0

    @rule()
    def acquire(self) -> None:
        seq = self.window.try_acquire()
        low = min(self.outstanding, default=self.highest + 1)
        if self.highest + 1 < low + self.SIZE:
            assert seq == self.highest + 1
            self.highest = seq
            self.outstanding.add(seq)
        else:
            assert seq is None

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.outstanding)))
        self.window.release(seq)
        self.outstanding.remove(seq)

    @invariant()
    def within_the_servers_memory(self) -> None:
        assert self.window.outstanding == self.outstanding
        for seq in self.outstanding:
            assert seq > self.highest - self.SIZE


TestWindowMachine = WindowMachine.TestCase
TestWindowMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


# --------------------------------------------------------------------------- retries


class Script:
    """Stands in for "send this request to the right node": records every request and plays
    the outcomes it was given, in order (an exception is raised, a reply returned)."""

    def __init__(self, *outcomes: Reply | Exception) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[Request] = []

    async def attempt(self, request: Request) -> Reply:
        self.requests.append(request)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def fast_backoff() -> Backoff:
    return Backoff(random.Random(1), initial=1e-4, maximum=1e-3)


def retrying(script: Script, seen: list[errors.UnimeterError]) -> Callable[..., Awaitable[Reply]]:
    async def call(partition: int, request: Request, deadline: float) -> Reply:
        return await retry_until(
            lambda: script.attempt(request),
            deadline=deadline,
            backoff=fast_backoff(),
            before_retry=seen.append,
        )

    return call


def far_deadline() -> float:
    return asyncio.get_running_loop().time() + 30


async def test_a_retried_group_keeps_its_producer_id_and_sequence_number() -> None:
    session = Session(producer_id=99)
    [group] = build_groups([Event(account_id=4, metric_code="m")], part8)
    script = Script(
        UnavailableError("connection lost"),
        NotLeaderError("not me", leader="10.0.0.2:7001"),
        errors.BackpressureError("full"),
        reply(1, log_index=41),
    )
    seen: list[errors.UnimeterError] = []
    got = await send_group(
        group, session, retrying(script, seen), sync=True, deadline=far_deadline()
    )
    assert got.log_index == 41
    assert len(script.requests) == 4
    assert all(r == script.requests[0] for r in script.requests)
    first = script.requests[0]
    assert isinstance(first, Ingest)
    assert (first.producer_id, first.seq, first.sync) == (99, 1, True)
    assert [type(e) for e in seen] == [
        UnavailableError,
        NotLeaderError,
        errors.BackpressureError,
    ]
    # Settled: the next group of that partition gets the next number; reads wait for index 41.
    assert session.window(group.partition).outstanding == frozenset()
    assert session.window(group.partition).try_acquire() == 2
    assert session.min_index(group.partition) == 41


async def test_a_failed_group_never_reuses_its_number_for_new_events() -> None:
    session = Session(producer_id=5)
    [group] = build_groups([Event(account_id=4, metric_code="m")], part8)
    script = Script(UnknownMetricError("gone"), reply(1))
    with pytest.raises(UnknownMetricError):
        await send_group(group, session, retrying(script, []), sync=False, deadline=far_deadline())
    await send_group(group, session, retrying(script, []), sync=False, deadline=far_deadline())
    assert [r.seq for r in script.requests if isinstance(r, Ingest)] == [1, 2]


async def test_ingest_carries_the_newest_catalog_version() -> None:
    session = Session(producer_id=5)
    session.note_catalog(12)
    session.note_catalog(3)
    [group] = build_groups([Event(account_id=4, metric_code="m")], part8)
    script = Script(reply(1))
    await send_group(group, session, retrying(script, []), sync=False, deadline=far_deadline())
    [request] = script.requests
    assert isinstance(request, Ingest) and request.catalog_version == 12


async def test_retries_stop_at_the_deadline_with_the_last_error() -> None:
    script = Script(*[UnavailableError(f"down {i}") for i in range(1000)])
    deadline = asyncio.get_running_loop().time() + 0.05
    attempts = Attempts()
    with pytest.raises(UnavailableError) as info:
        await retry_until(
            lambda: script.attempt(GetPartitionMap()),
            deadline=deadline,
            backoff=fast_backoff(),
            before_retry=lambda exc: None,
            attempts=attempts,
        )
    assert 1 < attempts.count < 1000
    assert str(info.value) == f"down {attempts.count - 1}"
    assert any("gave up after" in note for note in info.value.__notes__)


async def test_non_retriable_errors_are_raised_at_once() -> None:
    script = Script(InvalidRequestError("no"), reply(1))
    with pytest.raises(InvalidRequestError):
        await retry_until(
            lambda: script.attempt(GetPartitionMap()),
            deadline=far_deadline(),
            backoff=fast_backoff(),
            before_retry=lambda exc: None,
        )
    assert len(script.requests) == 1


def test_backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() -> None:
    backoff = Backoff(random.Random(3), initial=0.01, maximum=0.08)
    bases = [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]
    for base in bases:
        assert base / 2 <= backoff.next_delay() <= base


def test_routing_failures_back_off_to_a_lower_cap() -> None:
    # A failover ends within an election timeout: routing retries stay frequent enough to
    # find the new leader at once, while BACKPRESSURE keeps backing off to the full cap.
    backoff = Backoff(random.Random(3), initial=0.01, maximum=1.0, routing_maximum=0.1)
    delays = [backoff.next_delay(routing=True) for _ in range(12)]
    assert max(delays) <= 0.1 and min(delays[4:]) >= 0.05
    assert backoff.next_delay() >= 0.5  # the growth went on underneath


async def test_partial_failure_names_what_was_and_was_not_acknowledged() -> None:
    session = Session(producer_id=5)
    events = [Event(account_id=a, metric_code="m") for a in range(20)]
    groups = build_groups(events, part8)
    doomed = groups[1].partition

    async def call(partition: int, request: Request, deadline: float) -> Reply:
        await asyncio.sleep(0)
        if partition == doomed:
            raise UnknownMetricError("no such metric")
        assert isinstance(request, Ingest)
        return reply(len(request.batch))

    with pytest.raises(UnknownMetricError) as info:
        await send_groups(groups, session, CallSender(call), sync=False, deadline=far_deadline())
    [note] = info.value.__notes__
    failed = list(groups[1].origin)
    assert f"{len(failed)} event(s) in 1 batch(es) were not acknowledged" in note
    assert f"{len(events) - len(failed)} event(s) were acknowledged" in note
    assert "failed event indices: " + ", ".join(map(str, failed)) in note
    for group in groups:  # every number settled, none left outstanding
        assert session.window(group.partition).outstanding == frozenset()


async def test_parallel_groups_merge_into_one_result() -> None:
    session = Session(producer_id=5)
    events = [Event(account_id=a, metric_code="m") for a in range(30)]
    groups = build_groups(events, part8)

    async def call(partition: int, request: Request, deadline: float) -> Reply:
        assert isinstance(request, Ingest) and request.seq == 1
        return reply(len(request.batch), last_offset=partition, log_index=partition + 10)

    result = await send_groups(
        groups, session, CallSender(call), sync=False, deadline=far_deadline()
    )
    assert result.n_stored == 30
    assert result.last_offset == max(g.partition for g in groups)
    for group in groups:
        assert session.min_index(group.partition) == group.partition + 10


def test_read_your_writes_index_only_grows() -> None:
    session = Session(producer_id=1)
    assert session.min_index(3) == 0
    session.note_ack(3, 50)
    session.note_ack(3, 20)  # an older batch acknowledged late
    assert session.min_index(3) == 50
    assert session.min_index(4) == 0


async def test_a_not_leader_hint_is_followed_at_once_then_backoff_resumes() -> None:
    failures = [NotLeaderError("moved", leader="n2:1"), NotLeaderError("moved", leader="n3:1")]
    seen: list[str] = []

    async def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    loop = asyncio.get_running_loop()
    started = loop.time()
    backoff = Backoff(random.Random(1), initial=0.2, maximum=0.4, routing_maximum=0.2)
    result = await retry_until(
        attempt,
        deadline=started + 5,
        backoff=backoff,
        before_retry=lambda exc: seen.append(str(exc.leader)),
    )
    elapsed = loop.time() - started
    assert result == "ok" and seen == ["n2:1", "n3:1"]
    # The first hint was followed without waiting; the second, right after, waited once.
    assert 0.1 <= elapsed < 0.35, elapsed
