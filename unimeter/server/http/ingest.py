"""``POST /v1/events``: a JSON array or NDJSON of events, stored exactly like a client's batch.

The body is read as a JSON array when its first non-blank byte is ``[``, else as NDJSON (one
event object per line, blank lines skipped), whatever its content type says (so ``curl -d``
works as written). The objects become the client library's columns (``json_columns.py``,
checked in bulk; an unusual body goes through one ``Event`` per object instead), its batching
(``split_packed``) splits them into per-partition batches, and its sender (``send_groups``)
gives each batch the dispatcher's next sequence number for that partition and sends it to the
partition's leader, here or forwarded, retrying with the same number until it is acknowledged.
So an HTTP ingest is exactly-once per batch like a client's, and ``event_id`` makes it
exactly-once across requests. Columns without properties or ids are split together with the
other such requests of the same loop turn (``coalesce.py``): fewer, larger batches.

A malformed event refuses the whole request (400, naming the event by its position in the
request, counted from 0): nothing is stored. Events the partition refuses one by one (an
unknown metric, a timestamp out of the window) are listed in the answer's ``rejected``; the
rest are stored.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from unimeter import limits
from unimeter.client.batching import build_groups, split_packed
from unimeter.client.cluster_map import Partitioner
from unimeter.client.columns import pack_lists
from unimeter.client.ingest import send_groups
from unimeter.errors import InvalidRequestError
from unimeter.json_model import event_from_json
from unimeter.model import IngestResult

from .coalesce import Coalescer, mergeable
from .dispatch import Dispatcher
from .json_columns import json_columns

_UNKNOWN_METRIC = "unknown_metric"  # a reject reason of the protocol (docs/protocol.md §6)


def parse_events(body: bytes) -> list[Any]:
    """The JSON objects of a request body (not checked as events yet)."""
    start = body.lstrip()[:1]
    if start == b"[":
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"the body is not valid JSON: {exc}") from None
        if not isinstance(items, list):
            raise InvalidRequestError("the body must be a JSON array of events, or NDJSON")
    else:
        items = _ndjson(body)
    if len(items) > limits.http_events_per_request_max:
        raise InvalidRequestError(
            f"{len(items)} events in one request; at most {limits.http_events_per_request_max}"
        )
    return items


def _ndjson(body: bytes) -> list[Any]:
    stripped = body.strip()
    if not stripped:
        return []
    items: list[Any] | None = None
    # The whole body parsed once as an array: one value per line (a line holding two values
    # would make more items than lines), then blank lines taken out if that failed, then a
    # line-by-line pass only to name the bad line.
    with contextlib.suppress(orjson.JSONDecodeError):
        items = orjson.loads(b"[" + stripped.replace(b"\n", b",") + b"]")
    if items is not None and len(items) == stripped.count(b"\n") + 1:
        return items
    kept = [line for line in body.split(b"\n") if line.strip()]
    items = None
    with contextlib.suppress(orjson.JSONDecodeError):
        items = orjson.loads(b"[" + b",".join(kept) + b"]")
    if items is None or len(items) != len(kept):
        raise InvalidRequestError(_bad_line(body))
    return items


def _bad_line(body: bytes) -> str:
    """What is wrong with the first bad line of an NDJSON body."""
    number = 0
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return f"line {number}: not valid JSON: {exc}"
        if not isinstance(value, dict):
            break
    return f"line {number}: each NDJSON line must hold one event object"


def delivery_is_sync(text: str | None) -> bool:
    if text is None or text == "async":
        return False
    if text == "sync":
        return True
    raise InvalidRequestError(f"delivery must be async or sync, got {text!r}")


class Ingester:
    """Turns request bodies into acknowledged batches through the dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        node = dispatcher.node
        self._route = Partitioner(node.partition_count).many
        self._coalescer = Coalescer(dispatcher, self._route)

    async def close(self) -> None:
        await self._coalescer.close()

    async def ingest(self, items: list[Any], *, sync: bool) -> IngestResult:
        """Store the parsed JSON events ``items``; ``InvalidRequestError`` names a bad one."""
        dispatcher = self.dispatcher
        catalog = dispatcher.node.catalog
        if catalog is not None:
            # Partitions (here or elsewhere) first learn every metric this node knows of.
            dispatcher.session.note_catalog(catalog.core.version)
        result = await self._send(items, sync=sync)
        unknown = [i for i, reason in result.rejected if reason == _UNKNOWN_METRIC]
        if not unknown:
            return result
        codes = sorted({items[i]["metric_code"] for i in unknown})
        if not await dispatcher.catch_up_catalog(codes):
            return result  # unknown indeed
        # Refused events were not stored: sending them again cannot count them twice.
        again = await self._send([items[i] for i in unknown], sync=sync)
        return _merged(result, again, unknown)

    async def _send(self, items: list[Any], *, sync: bool) -> IngestResult:
        dispatcher = self.dispatcher
        columns = json_columns(items)
        if columns is not None:
            packed = pack_lists(columns)
            if mergeable(packed):
                return await self._coalescer.ingest(packed, sync=sync)
            groups = split_packed(packed, self._route)
        else:  # something unusual: each event is read and checked on its own
            events = [event_from_json(item, index) for index, item in enumerate(items)]
            groups = build_groups(events, self._route)
        return await send_groups(
            groups, dispatcher.session, dispatcher, sync=sync, deadline=dispatcher.deadline()
        )


def _merged(first: IngestResult, again: IngestResult, resent: list[int]) -> IngestResult:
    """``first`` with the events at ``resent`` replaced by what ``again`` made of them."""
    taken = set(resent)
    rejected = [(i, r) for i, r in first.rejected if i not in taken]
    rejected += [(resent[i], r) for i, r in again.rejected]
    offsets = [o for o in (first.last_offset, again.last_offset) if o is not None]
    return IngestResult(
        n_stored=first.n_stored + again.n_stored,
        n_duplicates=first.n_duplicates + again.n_duplicates,
        n_rejected=len(rejected),
        rejected=sorted(rejected),
        last_offset=max(offsets) if offsets else None,
    )


def result_json(result: IngestResult, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n_stored": result.n_stored,
        "n_duplicates": result.n_duplicates,
        "n_rejected": result.n_rejected,
        "rejected": [
            {
                "index": index,
                "reason": reason,
                "metric_code": items[index]["metric_code"],
                "event_id": items[index].get("event_id"),
            }
            for index, reason in result.rejected
        ],
        "last_offset": result.last_offset,
    }
