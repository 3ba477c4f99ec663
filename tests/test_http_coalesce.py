"""Concurrent HTTP ingests merged into one batch per partition (``server/http/coalesce.py``).

The unit tests merge random requests, split them as the node does, answer each batch the way a
partition would (rejecting some events, storing the rest at consecutive offsets, or answering
a whole batch as a duplicate), and check each request's share against what sending it alone
would have said. The node test sends many requests at once, invalid events mixed in, and checks
every answer and the totals.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.http import Http, ndjson
from tests.support.nodeproc import NodeProcess
from unimeter.client.batching import Group, split_packed
from unimeter.client.cluster_map import Partitioner
from unimeter.client.columns import Columns, pack_lists, to_lists
from unimeter.client.packed import Packed
from unimeter.client.session import Session
from unimeter.errors import ProtocolError, UnavailableError
from unimeter.model import IngestResult
from unimeter.server.http.coalesce import Coalescer, merged, shares
from unimeter.wire.messages import NO_TIMESTAMP, Ingest, IngestReply, Request

_CODES = ("a", "b", "c")
_ROUTE = Partitioner(4).many


@st.composite
def requests(draw: st.DrawFn) -> list[Columns]:
    out = []
    for _ in range(draw(st.integers(1, 5))):
        n = draw(st.integers(1, 30))
        codes = draw(st.lists(st.sampled_from(_CODES), min_size=n, max_size=n))
        table = sorted(set(codes))
        stamped = draw(st.booleans())
        out.append(
            Columns(
                account_ids=draw(st.lists(st.integers(0, 50), min_size=n, max_size=n)),
                code_ids=None if len(table) == 1 else [table.index(c) for c in codes],
                code_table=table,
                values=draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n)),
                timestamps_us=[1_000 + i if i % 2 else NO_TIMESTAMP for i in range(n)]
                if stamped
                else None,
                operation_types=[i % 3 for i in range(n)] if draw(st.booleans()) else None,
                properties=None,
                event_ids=None,
            )
        )
    return out


def _answer(group: Group, refuse: set[int], next_offset: int) -> IngestReply:
    """What a partition answers a batch of events without ids: ``refuse`` holds the batch
    positions it rejects; the others are stored at consecutive offsets."""
    n = len(group.origin)
    rejected = tuple((i, "unknown_metric") for i in sorted(refuse))
    stored = n - len(refuse)
    return IngestReply(
        n_stored=stored, n_duplicates=0, n_rejected=len(rejected), rejected=rejected,
        last_offset=next_offset + stored - 1 if stored else None, log_index=1,
    )  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(requests(), st.randoms(use_true_random=False))
def test_merged_requests_get_their_own_share(reqs: list[Columns], rng: random.Random) -> None:
    packs = [pack_lists(c) for c in reqs]
    merge = merged(packs)
    # The merge holds every request's events, in order, with the same fields.
    assert to_lists(merge).account_ids == [a for c in reqs for a in c.account_ids]
    codes = [merge.code_table[i] for i in (merge.code_ids if merge.code_ids is not None
             else np.zeros(len(merge), int))]  # fmt: skip
    assert codes == [
        c.code_table[i] for c in reqs for i in (c.code_ids or [0] * len(c.account_ids))
    ]
    groups = split_packed(merge, _ROUTE)
    starts = np.cumsum([0, *[len(p) for p in packs]])
    offsets: dict[int, int] = {}  # merged index -> offset it was stored at
    rejected: set[int] = set()  # merged indices rejected
    parts = []
    next_offset = 0
    for group in groups:
        refuse = {i for i in range(len(group.origin)) if rng.random() < 0.3}
        reply = _answer(group, refuse, next_offset)
        for i, origin in enumerate(group.origin.tolist()):
            if i in refuse:
                rejected.add(origin)
            else:
                offsets[origin] = next_offset
                next_offset += 1
        parts.append((group, reply))
    results = shares(parts, [len(p) for p in packs])
    for k, result in enumerate(results):
        mine = range(int(starts[k]), int(starts[k + 1]))
        assert [i for i, _ in result.rejected] == [i - mine.start for i in mine if i in rejected]
        assert result.n_rejected == len(result.rejected)
        assert result.n_stored == sum(1 for i in mine if i in offsets)
        assert result.n_duplicates == 0
        stored_offsets = [offsets[i] for i in mine if i in offsets]
        assert result.last_offset == (max(stored_offsets) if stored_offsets else None)
    assert sum(r.n_stored + r.n_rejected for r in results) == len(merge)


def test_a_batch_applied_before_is_every_request_s_duplicates() -> None:
    reqs = [pack_lists(Columns([1, 2, 3], None, ["a"], [1, 1, 1], None, None, None, None))] * 2
    groups = split_packed(merged(reqs), _ROUTE)
    parts = [
        (g, IngestReply(n_stored=0, n_duplicates=len(g.origin), n_rejected=0, rejected=(),
                        last_offset=None, log_index=1))
        for g in groups
    ]  # fmt: skip
    results = shares(parts, [3, 3])
    assert [(r.n_stored, r.n_duplicates, r.last_offset) for r in results] == [(0, 3, None)] * 2


def test_a_reply_that_cannot_be_apportioned_is_an_error() -> None:
    pack = pack_lists(Columns([1, 2], None, ["a"], [1, 1], None, None, None, None))
    (group,) = split_packed(merged([pack]), Partitioner(1).many)
    odd = IngestReply(n_stored=1, n_duplicates=1, n_rejected=0, rejected=(), last_offset=0,
                      log_index=1)  # fmt: skip
    with pytest.raises(ProtocolError):
        shares([(group, odd)], [2])
    short = IngestReply(n_stored=1, n_duplicates=0, n_rejected=0, rejected=(), last_offset=0,
                        log_index=1)  # fmt: skip
    with pytest.raises(ProtocolError):
        shares([(group, short)], [2])


async def test_concurrent_requests_with_rejections_get_exact_answers(
    http_node: NodeProcess,
) -> None:
    rng = random.Random(5)
    bodies: list[tuple[bytes, list[int], int]] = []  # body, rejected indices, stored sum
    for _ in range(24):
        lines, refused, total = [], [], 0
        for i in range(rng.randint(1, 120)):
            account = rng.randint(1, 40)
            kind = rng.random()
            if kind < 0.1:
                lines.append({"account_id": account, "metric_code": "nope", "value": 3})
                refused.append(i)
            elif kind < 0.2:
                lines.append({"account_id": account, "metric_code": "calls", "value": 5,
                              "timestamp": "2001-01-01T00:00:00Z"})  # fmt: skip
                refused.append(i)
            else:
                value = rng.randint(1, 100)
                lines.append({"account_id": account, "metric_code": "calls", "value": value})
                total += value
        bodies.append((ndjson(lines), refused, total))
    async with Http(http_node.http_url) as http:
        await http.ok("POST", "/v1/metrics", json={"code": "calls", "agg_type": "sum"})
        malformed = b'{"account_id": 1, "metric_code": "calls", "value": 1.5}\n'
        answers = await asyncio.gather(
            *(http.post("/v1/events", body=body) for body, _, _ in bodies),
            http.post("/v1/events", body=malformed),
            *(http.post("/v1/events", body=body) for body, _, _ in bodies),
        )
        bad = answers[len(bodies)]
        assert (bad.status, bad.problem_code) == (400, "INVALID_REQUEST")
        good = answers[: len(bodies)] + answers[len(bodies) + 1 :]
        for answer, (body, refused, _) in zip(good, bodies * 2, strict=True):
            assert answer.status == 200, answer
            n = body.count(b"\n")
            assert [r["index"] for r in answer.body["rejected"]] == refused
            assert answer.body["n_stored"] == n - len(refused)
            assert answer.body["n_duplicates"] == 0
        expected = 2 * sum(total for _, _, total in bodies)
        got = 0
        for account in range(1, 41):
            usage = await http.ok(
                "GET", "/v1/usage", params={"account_id": account, "metric": "calls"}
            )
            got += usage["value"]["sum"]
        assert got == expected


class _Partitions:
    """A dispatcher stand-in: stores every batch whole, at consecutive offsets per partition;
    ``failing`` makes every send fail for good."""

    def __init__(self, failing: bool = False) -> None:
        self.session = Session()
        self.failing = failing
        self.batches: list[int] = []  # the partition of each batch sent
        self._offsets: dict[int, int] = {}

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + 5

    def start(self, target: int, request: Request, deadline: float) -> None:
        return None  # every batch takes ``call``

    async def call(
        self, target: int, request: Request, deadline: float, failed: object = None
    ) -> IngestReply:
        assert isinstance(request, Ingest)
        if self.failing:
            raise UnavailableError("no leader")
        self.batches.append(target)
        n = len(request.batch)
        first = self._offsets.get(target, target << 48)
        self._offsets[target] = first + n
        return IngestReply(n_stored=n, n_duplicates=0, n_rejected=0, rejected=(),
                           last_offset=first + n - 1, log_index=1)  # fmt: skip


def _plain(accounts: list[int]) -> Packed:
    return pack_lists(Columns(accounts, None, ["a"], [1] * len(accounts), None, None, None, None))


async def test_requests_of_successive_turns_share_one_batch_per_partition() -> None:
    partitions = _Partitions()
    coalescer = Coalescer(partitions, _ROUTE)  # type: ignore[arg-type]

    async def later(turns: int, accounts: list[int]) -> IngestResult:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await coalescer.ingest(_plain(accounts), sync=False)

    accounts = [list(range(k * 10, k * 10 + 10)) for k in range(4)]
    # Two requests in the first turn, then one in each of the next two: each check of the
    # merge finds a newcomer, so it waits another turn, and takes all four.
    results = await asyncio.gather(
        *(later(t, a) for t, a in zip((0, 0, 1, 2), accounts, strict=True))
    )
    assert sorted(partitions.batches) == sorted(set(_ROUTE(np.arange(40, dtype=np.uint64))))
    assert [r.n_stored for r in results] == [10] * 4
    # A lone request is sent at once, on its own.
    before = len(partitions.batches)
    alone = await coalescer.ingest(_plain([1, 2]), sync=True)
    assert alone.n_stored == 2
    assert len(partitions.batches) - before == len(set(_ROUTE(np.array([1, 2], np.uint64))))


async def test_a_failed_merged_send_fails_every_request_in_it() -> None:
    coalescer = Coalescer(_Partitions(failing=True), _ROUTE)  # type: ignore[arg-type]
    outcomes = await asyncio.gather(
        coalescer.ingest(_plain([1]), sync=False),
        coalescer.ingest(_plain([2, 3]), sync=False),
        return_exceptions=True,
    )
    assert all(isinstance(o, UnavailableError) for o in outcomes)


async def test_closing_stops_the_sends_under_way() -> None:
    partitions = _Partitions()
    never = asyncio.Event()

    async def stuck(*args: object) -> IngestReply:
        await never.wait()
        raise AssertionError("unreachable")

    partitions.call = stuck  # type: ignore[method-assign]
    coalescer = Coalescer(partitions, _ROUTE)  # type: ignore[arg-type]
    request = asyncio.ensure_future(coalescer.ingest(_plain([1, 2, 3]), sync=False))
    for _ in range(5):
        await asyncio.sleep(0)
    await coalescer.close()
    with pytest.raises(asyncio.CancelledError):
        await request
