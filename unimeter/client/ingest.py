"""Sending one ingest's per-partition groups: sequence numbers, parallel sends, merged result.

Each group takes the next sequence number of its partition's window before it is first sent and
keeps it through every retry (``Call`` retries the same ``Ingest`` message), then releases it
whatever the outcome: once released, the number is never sent again. The groups run in parallel
and are all awaited before ``send_groups`` returns or raises, so no send outlives the call.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable, Sequence

from unimeter.errors import TimeoutError
from unimeter.model import IngestResult
from unimeter.wire.messages import Ingest, IngestReply, Reply, Request

from . import convert
from .batching import Group, merge_results
from .session import Session

# Sends a request to the leader of a partition, retrying until the deadline.
Call = Callable[[int, Request, float], Awaitable[Reply]]


async def send_groups(
    groups: Sequence[Group], session: Session, call: Call, *, sync: bool, deadline: float
) -> IngestResult:
    assert groups
    if len(groups) == 1:  # the common small batch: no task, no gather
        reply = await send_group(groups[0], session, call, sync=sync, deadline=deadline)
        return merge_results([(groups[0], reply)])
    outcomes = await asyncio.gather(
        *(send_group(g, session, call, sync=sync, deadline=deadline) for g in groups),
        return_exceptions=True,
    )
    parts: list[tuple[Group, IngestReply]] = []
    failures: list[tuple[Group, BaseException]] = []
    for group, outcome in zip(groups, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            failures.append((group, outcome))
        else:
            parts.append((group, outcome))
    if not failures:
        return merge_results(parts)
    for _, failure in failures:
        if not isinstance(failure, Exception):
            raise failure  # KeyboardInterrupt and the like are not ours to annotate
    error = failures[0][1]
    error.add_note(partial_failure_note(parts, failures))
    raise error


async def send_group(
    group: Group, session: Session, call: Call, *, sync: bool, deadline: float
) -> IngestReply:
    window = session.window(group.partition)
    seq = window.try_acquire()
    if seq is None:
        try:
            async with asyncio.timeout_at(deadline):
                seq = await window.acquire()
        except builtins.TimeoutError:
            raise TimeoutError(
                f"partition {group.partition}: earlier batches still unsettled at the deadline"
            ) from None
    try:
        request = Ingest(
            partition=group.partition,
            producer_id=session.producer_id,
            seq=seq,
            sync=sync,
            catalog_version=session.catalog_version,
            batch=group.batch,
        )
        reply = convert.expect(await call(group.partition, request, deadline), IngestReply)
    finally:
        window.release(seq)
    session.note_ack(group.partition, reply.log_index)
    return reply


def partial_failure_note(
    parts: Sequence[tuple[Group, IngestReply]], failures: Sequence[tuple[Group, BaseException]]
) -> str:
    """What the caller needs to retry without double-counting: which events were settled."""
    failed = sorted(i for group, _ in failures for i in group.origin)
    lines = [
        f"{len(failed)} event(s) in {len(failures)} batch(es) were not acknowledged and may or "
        "may not have been stored: resend them only if they carry an event_id, or they may be "
        "counted twice."
    ]
    if parts:
        merged = merge_results(parts)
        settled = sum(len(group.origin) for group, _ in parts)
        lines.append(
            f"{settled} event(s) were acknowledged: {merged.n_stored} stored, "
            f"{merged.n_duplicates} duplicates, {merged.n_rejected} rejected."
        )
    shown = ", ".join(map(str, failed[:20])) + (", ..." if len(failed) > 20 else "")
    lines.append(f"failed event indices: {shown}")
    for group, failure in failures[1:]:
        lines.append(f"partition {group.partition} also failed: {failure!r}")
    return "\n".join(lines)
