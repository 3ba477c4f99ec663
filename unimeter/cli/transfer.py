"""``unimeter import`` and ``unimeter export``: events in and out as NDJSON or CSV.

Import is exactly-once by event id, so running it again after an interruption (or twice by
mistake) counts nothing twice: every event is sent with an ``event_id``, its own if the file
gives one, else one derived from the file's name, the line number and the line's bytes
(``derived_event_id``). The node stores an event id at most once per account and metric within
its dedup window (35 days by default): a re-run within that window finds the events already
stored and counts them as duplicates. The whole file is read and checked before anything is
sent, so a malformed line stops the import before it stored anything; then it is sent in
chunks of ``--batch`` events (SYNC by default: each chunk is on a quorum's disks before the
next one goes), with a progress line on stderr (a redrawn bar with rate and ETA on a terminal).

Files: NDJSON holds one event object per line, the JSON form of the HTTP API. CSV has a header
row naming its columns: ``account_id``, ``metric_code``, ``value``, ``timestamp``,
``operation_type``, ``event_id``, ``properties`` (a JSON object), ``offset`` (ignored); any other
column is a property of that name (an empty cell: no such property). Export writes the same
forms, so an export imports again as it is.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from unimeter.client import AsyncClient
from unimeter.errors import InvalidRequestError
from unimeter.json_model import event_from_json, event_record_json
from unimeter.model import DeliveryMode, Event

from .commands import time_range
from .output import Output

_CSV_FIELDS = ("account_id", "metric_code", "value", "timestamp", "operation_type", "event_id")
_CSV_IGNORED = ("offset",)


def derived_event_id(name: str, line: int, raw: bytes) -> str:
    """The event id of an event that has none: the same for the same file name, line number
    and line bytes (so a re-run of the same file finds it), different for any other line."""
    digest = hashlib.blake2b(digest_size=15)
    digest.update(name.encode())
    digest.update(b"\0%d\0" % line)
    digest.update(raw)
    return "import-" + digest.hexdigest()


class ImportFile:
    """The events of one file, with their line numbers, read once to check and once to send."""

    def __init__(self, path: Path, file_format: str | None, id_prefix: str | None) -> None:
        self.path = path
        self.format = file_format or ("csv" if path.suffix.lower() == ".csv" else "ndjson")
        if self.format not in ("csv", "ndjson"):
            raise InvalidRequestError(f"--format must be ndjson or csv, got {self.format!r}")
        self.name = id_prefix if id_prefix is not None else path.name

    def events(self) -> Iterator[tuple[int, Event]]:
        reader = self._csv() if self.format == "csv" else self._ndjson()
        for number, raw, obj in reader:
            try:
                event = event_from_json(obj, number)
                event.validate()
            except (InvalidRequestError, ValueError) as exc:
                message = exc.message if isinstance(exc, InvalidRequestError) else str(exc)
                text = message.removeprefix(f"event {number}: ")
                raise InvalidRequestError(f"{self.path}:{number}: {text}") from None
            if event.event_id is None:
                event = _with_id(event, derived_event_id(self.name, number, raw))
            yield number, event

    def _ndjson(self) -> Iterator[tuple[int, bytes, Any]]:
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    yield number, line, json.loads(line)
                except ValueError as exc:
                    raise InvalidRequestError(f"{self.path}:{number}: not JSON: {exc}") from None

    def _csv(self) -> Iterator[tuple[int, bytes, Any]]:
        with self.path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return
            missing = {"account_id", "metric_code"} - set(header)
            if missing:
                raise InvalidRequestError(f"{self.path}:1: the header lacks {sorted(missing)[0]}")
            for row in reader:
                number = reader.line_num
                if not any(row):
                    continue
                if len(row) != len(header):
                    raise InvalidRequestError(
                        f"{self.path}:{number}: {len(row)} cells under a header of {len(header)}"
                    )
                yield (
                    number,
                    ",".join(row).encode(),
                    _csv_event(dict(zip(header, row, strict=True))),
                )


def _csv_event(cells: dict[str, str]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    properties: dict[str, str] = {}
    for name, text in cells.items():
        if name in _CSV_IGNORED or text == "":
            continue
        if name in ("account_id", "value"):
            obj[name] = int(text) if text.lstrip("-").isdigit() else text
        elif name == "properties":
            properties.update(json.loads(text))
        elif name in _CSV_FIELDS:
            obj[name] = text
        else:
            properties[name] = text
    if properties:
        obj["properties"] = properties
    return obj


def _with_id(event: Event, event_id: str) -> Event:
    return Event(
        account_id=event.account_id, metric_code=event.metric_code, value=event.value,
        timestamp=event.timestamp, operation_type=event.operation_type,
        properties=event.properties, event_id=event_id,
    )  # fmt: skip


class Progress:
    """Events sent so far, the rate and the time left: a redrawn bar on a terminal, else a
    line at most every ``interval_s`` (and one at the end)."""

    def __init__(self, total: int, stream: IO[str], enabled: bool, interval_s: float = 1.0):
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.interval_s = interval_s
        self.started = time.monotonic()
        self._shown_at = 0.0
        self._shown_done = -1  # the count last shown: the final line never repeats it

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._shown_at < self.interval_s):
            return
        if final and not self.tty and done == self._shown_done:
            return
        self._shown_at = now
        self._shown_done = done
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else 0.0
        share = done / self.total if self.total else 1.0
        text = (
            f"{done:,}/{self.total:,} events ({share:.0%}), {rate:,.0f} ev/s, "
            f"ETA {int(left) // 60}:{int(left) % 60:02d}"
        )
        if self.tty:
            bar = "#" * int(share * 30)
            self.stream.write(f"\r[{bar:<30}] {text}" + ("\n" if final else ""))
        else:
            self.stream.write(f"imported {text}\n")
        self.stream.flush()


async def import_file(args: Any, client: AsyncClient, out: Output) -> None:
    source = ImportFile(Path(args.file), args.format, args.id_prefix)
    total = sum(1 for _ in source.events())  # reads and checks every line before sending
    progress = Progress(total, sys.stderr, not args.no_progress)
    delivery = DeliveryMode.ASYNC if args.delivery == "async" else DeliveryMode.SYNC
    stored = duplicates = rejected = done = 0
    rejections: list[dict[str, Any]] = []
    chunk: list[tuple[int, Event]] = []

    async def send() -> None:
        nonlocal stored, duplicates, rejected, done
        result = await client.ingest([e for _, e in chunk], delivery=delivery)
        stored += result.n_stored
        duplicates += result.n_duplicates
        rejected += result.n_rejected
        for index, reason in result.rejected:
            if len(rejections) < 100:
                rejections.append({"line": chunk[index][0], "reason": reason})
        done += len(chunk)
        chunk.clear()
        progress.update(done)

    for item in source.events():
        chunk.append(item)
        if len(chunk) >= args.batch:
            await send()
    if chunk:
        await send()
    progress.update(done, final=True)
    summary = {
        "file": str(source.path),
        "events": total,
        "stored": stored,
        "duplicates": duplicates,
        "rejected": rejected,
        "rejections": rejections,
    }
    out.show(summary)


async def export(args: Any, client: AsyncClient, out: Output) -> None:
    since, until = time_range(args)
    target: IO[str] = out.stream
    if args.output:
        target = open(args.output, "w", newline="", encoding="utf-8")  # noqa: SIM115
    written = 0
    try:
        writer = csv.writer(target) if args.format == "csv" else None
        if writer is not None:
            writer.writerow([*_CSV_FIELDS, "offset", "properties"])
        for account in args.accounts:
            async for record in client.list_events(account, since, until):
                row = event_record_json(record)
                if writer is not None:
                    writer.writerow([*("" if row[f] is None else row[f] for f in _CSV_FIELDS),
                                     row["offset"], json.dumps(row["properties"])])  # fmt: skip
                else:
                    target.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
    finally:
        if target is not out.stream:
            target.close()
    if args.output:
        out.show({"file": args.output, "events": written})
