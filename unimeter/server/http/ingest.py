"""``POST /v1/events``: a JSON array or NDJSON of events, stored exactly like a client's batch.

The body is read as a JSON array when its first non-blank byte is ``[``, else as NDJSON (one
event object per line, blank lines skipped), whatever its content type says (so ``curl -d``
works as written). The objects become the client library's columns (``json_columns.py``,
checked in bulk; an unusual body goes through one ``Event`` per object instead), its batching
(``split_columns``) splits them into per-partition batches, and its sender (``send_groups``)
gives each batch the dispatcher's next sequence number for that partition and sends it to the
partition's leader, here or forwarded, retrying with the same number until it is acknowledged.
So an HTTP ingest is exactly-once per batch like a client's, and ``event_id`` makes it
exactly-once across requests.

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
from unimeter.client.batching import build_groups, split_columns
from unimeter.client.cluster_map import Partitioner
from unimeter.client.ingest import send_groups
from unimeter.errors import InvalidRequestError
from unimeter.json_model import event_from_json
from unimeter.model import IngestResult

from .dispatch import Dispatcher
from .json_columns import json_columns


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

    async def ingest(self, items: list[Any], *, sync: bool) -> IngestResult:
        """Store the parsed JSON events ``items``; ``InvalidRequestError`` names a bad one."""
        dispatcher = self.dispatcher
        columns = json_columns(items)
        if columns is not None:
            groups = split_columns(columns, self._route)
        else:  # something unusual: each event is read and checked on its own
            events = [event_from_json(item, index) for index, item in enumerate(items)]
            groups = build_groups(events, self._route)
        session = dispatcher.session
        catalog = dispatcher.node.catalog
        if catalog is not None:
            # Partitions (here or elsewhere) first learn every metric this node knows of.
            session.note_catalog(catalog.core.version)
        return await send_groups(
            groups, session, dispatcher, sync=sync, deadline=dispatcher.deadline()
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
