"""Concurrent HTTP ingests sent together: one batch per partition for all of them.

Why: a request's events spread over every partition, so a 500-event request on the default
eight partitions makes eight batches of about sixty events, and each batch costs the node a
fixed amount of work whatever its size (its bytes assembled, a sequence number, an ``Ingest``
message and its token, admission and a log part at the partition, a reply, a future woken).
Requests whose bodies are read close together are therefore merged: their columns are
concatenated (``merged``), split into per-partition batches once, and sent with the
dispatcher's sequence numbers like any other batches (``send_group_replies``), so the
exactly-once rules are unchanged. Each request is then answered with its own share of the
replies (``shares``).

When: a merge is sent once ``QUIET_TURNS`` loop turns in a row brought it no request (at most
``GATHER_TURNS_MAX`` turns after its first). A lone request thus waits two turns; on a busy
node, where requests keep being read, a merge takes those in flight: measured, all of the
bench's eight connections' requests per merge, against 3.8 when a merge left after the first
quiet turn (requests read by the HTTP fast lane reach the merge a turn sooner than through
aiohttp, so one quiet turn no longer meant that none was coming) and two when it left after
one turn whatever came.

What is merged: columns without properties or event ids (``mergeable``). Only those can be
apportioned from a batch's reply alone: an event without an id is never a duplicate one by one
(a batch is a duplicate as a whole, when its sequence number was applied long ago), so a
request's stored events are its events in the batch less its rejections. A request with
properties or ids is sent on its own, as before.

A batch that fails fails every request it carries, with the same error: as for a lone request,
the events of its other batches may have been stored, and the client retries the request (with
event ids to make the retry exactly-once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from unimeter.client.batching import Group, Route, split_packed
from unimeter.client.ingest import send_group_replies
from unimeter.client.packed import I64, U8, Array, Packed, index_dtype
from unimeter.errors import ProtocolError
from unimeter.model import IngestResult
from unimeter.wire.batch import NO_TIMESTAMP
from unimeter.wire.messages import IngestReply

from .dispatch import Dispatcher

GATHER_TURNS_MAX = 8  # loop turns a merge may wait while more requests join it
QUIET_TURNS = 2  # ... and it is sent after this many turns in a row that brought none


def mergeable(packed: Packed) -> bool:
    return not packed.properties and packed.id_data is None


class Coalescer:
    """Collects the mergeable ingests read close together and sends them as one."""

    def __init__(self, dispatcher: Dispatcher, route: Route) -> None:
        self._dispatcher = dispatcher
        self._route = route
        self._waiting: dict[bool, list[tuple[Packed, asyncio.Future[IngestResult]]]] = {
            False: [],
            True: [],
        }  # by delivery: sync or not
        self._sends: set[asyncio.Task[None]] = set()  # referenced until done

    async def ingest(self, packed: Packed, *, sync: bool) -> IngestResult:
        loop = asyncio.get_running_loop()
        waiting = self._waiting[sync]
        if not waiting:
            loop.call_soon(self._flush, sync, 1, 1)  # after every request ready in this turn
        future: asyncio.Future[IngestResult] = loop.create_future()
        waiting.append((packed, future))
        return await future

    async def close(self) -> None:
        """Stop the sends still under way (the node stops); their requests are cancelled."""
        sends = list(self._sends)
        for task in sends:
            task.cancel()
        await asyncio.gather(*sends, return_exceptions=True)

    def _flush(self, sync: bool, seen: int, turns: int, quiet: int = 0) -> None:
        waiting = self._waiting[sync]
        quiet = 0 if len(waiting) > seen else quiet + 1
        if quiet < QUIET_TURNS and turns < GATHER_TURNS_MAX:
            # Requests keep coming (a busy node): more turns for those about to be read.
            asyncio.get_running_loop().call_soon(self._flush, sync, len(waiting), turns + 1, quiet)
            return
        taken, self._waiting[sync] = waiting, []
        task = asyncio.get_running_loop().create_task(self._send(taken, sync))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(
        self, taken: list[tuple[Packed, asyncio.Future[IngestResult]]], sync: bool
    ) -> None:
        packs = [packed for packed, _ in taken]
        try:
            results = await self._results(packs, sync)
        except BaseException as exc:
            for _, future in taken:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:  # cancelled (the node stops): so are the requests waiting for it
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(taken, results, strict=True):
            if not future.done():  # its request was cancelled meanwhile
                future.set_result(result)

    async def _results(self, packs: list[Packed], sync: bool) -> list[IngestResult]:
        dispatcher = self._dispatcher
        groups = split_packed(merged(packs), self._route)
        parts = await send_group_replies(
            groups, dispatcher.session, dispatcher, sync=sync, deadline=dispatcher.deadline()
        )
        return shares(parts, [len(p) for p in packs])


def merged(packs: Sequence[Packed]) -> Packed:
    """The events of ``packs`` (all ``mergeable``) one after the other, in one ``Packed``."""
    if len(packs) == 1:
        return packs[0]
    table = tuple(sorted(set().union(*(p.code_table for p in packs))))
    position = {code: i for i, code in enumerate(table)}
    dtype = index_dtype(len(table) - 1)
    code_ids: list[Array] = []
    for p in packs:
        renumber = np.array([position[code] for code in p.code_table], dtype)
        code_ids.append(
            renumber[p.code_ids] if p.code_ids is not None else np.full(len(p), renumber[0], dtype)
        )
    stamps = operations = None
    if any(p.timestamps is not None for p in packs):
        stamps = np.concatenate(
            [p.timestamps if p.timestamps is not None else np.full(len(p), NO_TIMESTAMP, I64)
             for p in packs]
        )  # fmt: skip
    if any(p.operation_types is not None for p in packs):
        operations = np.concatenate(
            [p.operation_types if p.operation_types is not None else np.zeros(len(p), U8)
             for p in packs]
        )  # fmt: skip
    return Packed(
        account_ids=np.concatenate([p.account_ids for p in packs]),
        values=np.concatenate([p.values for p in packs]),
        code_table=table,
        code_ids=np.concatenate(code_ids) if len(table) > 1 else None,
        timestamps=stamps,
        operation_types=operations,
        properties=(),
        id_data=None,
        id_offsets=None,
    )


def shares(parts: Sequence[tuple[Group, IngestReply]], sizes: Sequence[int]) -> list[IngestResult]:
    """Each merged request's result (``sizes``: how many events each had, in merge order).

    A group's events are in merge order (a stable sort by partition), so the events of each
    request form one run of it, and the events a partition stores get consecutive offsets in
    batch order: a request's last offset in a group is the group's less the events stored
    after its run."""
    starts = np.cumsum([0, *sizes[:-1]])
    count = len(sizes)
    stored = [0] * count
    duplicates = [0] * count
    rejected: list[list[tuple[int, str]]] = [[] for _ in sizes]
    last: list[int | None] = [None] * count
    for group, reply in parts:
        owner = np.searchsorted(starts, group.origin, side="right") - 1
        events = np.bincount(owner, minlength=count).tolist()
        refused = [0] * count
        for batch_index, reason in reply.rejected:
            if not 0 <= batch_index < len(owner):
                raise ProtocolError(
                    f"partition {group.partition} rejected event {batch_index} of a batch of "
                    f"{len(owner)}"
                )
            k = int(owner[batch_index])
            refused[k] += 1
            rejected[k].append((int(group.origin[batch_index] - starts[k]), reason))
        if reply.n_duplicates == 0:
            kept = [n - r for n, r in zip(events, refused, strict=True)]
        elif reply.n_duplicates == len(owner) and reply.n_stored == 0:
            kept = [0] * count  # the whole batch was applied before
            for k, n in enumerate(events):
                duplicates[k] += n
        else:
            raise ProtocolError(
                f"partition {group.partition} answered {reply.n_duplicates} duplicates in a "
                f"batch of {len(owner)} events without ids"
            )
        if sum(kept) != reply.n_stored:
            raise ProtocolError(
                f"partition {group.partition} stored {reply.n_stored} of a batch of "
                f"{len(owner)} events with {reply.n_rejected} rejected"
            )
        after = 0
        for k in reversed(range(count)):
            if kept[k]:
                assert reply.last_offset is not None
                offset = reply.last_offset - after
                stored[k] += kept[k]
                after += kept[k]
                previous = last[k]
                last[k] = offset if previous is None else max(previous, offset)
    return [
        IngestResult(
            n_stored=stored[k],
            n_duplicates=duplicates[k],
            n_rejected=len(rejected[k]),
            rejected=sorted(rejected[k]),
            last_offset=last[k],
        )
        for k in range(count)
    ]
