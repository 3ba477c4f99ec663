"""The ``unimeter`` subcommands that read and manage: status, metrics, usage, events.

Each takes the parsed arguments, an ``AsyncClient`` connected to the ``--node`` seeds and the
``Output``; each prints one result. Errors are the client's typed errors; ``main.py`` turns them
into a message and an exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from unimeter import model
from unimeter.client import AsyncClient
from unimeter.client.connection import Connection
from unimeter.errors import InvalidRequestError, UnimeterError
from unimeter.json_model import (
    agg_value_json,
    enum_member,
    event_record_json,
    parse_time,
    schema_json,
    time_text,
)
from unimeter.model import (
    AggType,
    AlertThreshold,
    DimensionFilter,
    MetricSchema,
    Period,
    PeriodType,
)
from unimeter.wire.messages import PROTOCOL_VERSION, ClusterStatus, ClusterStatusReply, Hello

from .output import Output, cell, human_bytes

PERIODS = {
    "current_month": model.current_month,
    "last_month": model.last_month,
    "today": model.today_utc,
    "yesterday": model.yesterday_utc,
    "this_week": model.this_week_utc,
    "last_week": model.last_week_utc,
}
_FAR_PAST = datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- status


async def _view_of(address: str, args: argparse.Namespace) -> ClusterStatusReply | str:
    """One node's own status (asked of that node, not of any node), or why it did not answer."""
    connection = Connection(address, args.dial_tls)
    deadline = asyncio.get_running_loop().time() + args.timeout
    hello = Hello(version=PROTOCOL_VERSION, client_name="unimeter-cli", token=args.dial_token)
    try:
        await connection.open(hello, deadline)
        reply = await connection.request(ClusterStatus(), deadline)
        assert isinstance(reply, ClusterStatusReply)
        return reply
    except UnimeterError as exc:
        return exc.message or type(exc).__name__
    finally:
        await connection.close()


async def status(args: argparse.Namespace, client: AsyncClient, out: Output) -> None:
    first = await client.cluster_status()
    addresses = dict(sorted(first.nodes.items()))
    views = await asyncio.gather(*(_view_of(a, args) for a in addresses.values()))
    nodes: list[dict[str, Any]] = []
    by_node: dict[int, ClusterStatusReply] = {}
    for (node_id, address), view in zip(addresses.items(), views, strict=True):
        if isinstance(view, str):
            nodes.append({"node": node_id, "address": address, "state": "down", "error": view})
            continue
        by_node[node_id] = view
        nodes.append({
            "node": node_id, "address": address, "state": "up",
            "disk_free": view.disk_free_bytes, "disk_ok": view.disk_ok,
        })  # fmt: skip
    partitions = []
    for info in first.partitions:
        p = info.partition
        hosted = {
            n: v.partitions[p]
            for n, v in by_node.items()
            if v.partitions[p].commit_index or v.partitions[p].applied_index
        }
        leader = info.leader if info.leader >= 0 else None
        commit = max((i.commit_index for i in hosted.values()), default=0)
        row: dict[str, Any] = {
            "partition": p,
            "leader": leader,
            "term": max([info.term, *(i.term for i in hosted.values())]),
            "commit": commit,
            "lag": commit - min((i.applied_index for i in hosted.values()), default=commit),
        }
        for n in by_node:
            row[f"applied_n{n}"] = hosted[n].applied_index if n in hosted else None
        partitions.append(row)
    if out.as_json:
        out.show({"cluster_id": first.cluster_id, "catalog_version": first.catalog_version,
                  "nodes": nodes, "partitions": partitions})  # fmt: skip
        return
    out.write(f"cluster {first.cluster_id}, catalog version {first.catalog_version}")
    for node in nodes:
        node["disk_free"] = human_bytes(node.get("disk_free"))
    out.show(nodes, ["node", "address", "state", "disk_free", "disk_ok", "error"])
    out.write("")
    columns = ["partition", "leader", "term", "commit", *(f"applied_n{n}" for n in by_node), "lag"]
    out.show(partitions, columns)


# --------------------------------------------------------------------------- metrics


def _schema_row(schema: MetricSchema) -> dict[str, Any]:
    return {
        "code": schema.code,
        "agg": AggType(schema.agg_type).name.lower(),
        "period": PeriodType(schema.period_type).name.lower(),
        "dimensions": [f"{d.key}:{'|'.join(d.values)}" for d in schema.filters],
        "thresholds": [
            f"{t.code}={t.value}{'+' if t.recurring else ''}{'@' + t.webhook if t.webhook else ''}"
            for t in schema.thresholds
        ],
    }


async def metrics_list(args: argparse.Namespace, client: AsyncClient, out: Output) -> None:
    schemas = await client.metrics.list()
    if out.as_json:
        out.show([schema_json(s) for s in schemas])
    else:
        out.show([_schema_row(s) for s in schemas], ["code", "agg", "period", "dimensions",
                                                     "thresholds"])  # fmt: skip


def show_schema(schema: MetricSchema, out: Output) -> None:
    if out.as_json:
        out.show(schema_json(schema))
        return
    row = _schema_row(schema)
    out.show({
        "code": row["code"], "agg_type": row["agg"], "period_type": row["period"],
        "billing_cycle_day": schema.billing_cycle_day, "period_seconds": schema.period_seconds,
        "recurring": schema.recurring, "dimensions": row["dimensions"],
        "thresholds": row["thresholds"],
    })  # fmt: skip


async def metrics_get(args: argparse.Namespace, client: AsyncClient, out: Output) -> None:
    show_schema(await client.metrics.get(args.code), out)


def schema_from_args(args: argparse.Namespace) -> MetricSchema:
    dimensions = []
    for text in args.dimension:
        key, sep, values = text.partition("=")
        if not sep or not key or not values:
            raise InvalidRequestError(f"--dimension takes KEY=VALUE,VALUE...; got {text!r}")
        dimensions.append(DimensionFilter(key=key, values=tuple(values.split(","))))
    thresholds = []
    for text in args.threshold:
        code, sep, rest = text.partition("=")
        value, at, webhook = rest.partition("@")
        recurring = value.endswith("+")
        value = value.removesuffix("+")
        if not sep or not value.lstrip("-").isdigit() or (at and not webhook):
            raise InvalidRequestError(f"--threshold takes CODE=VALUE[+][@URL]; got {text!r}")
        thresholds.append(AlertThreshold(
            code=code, value=int(value), recurring=recurring, webhook=webhook or None,
        ))  # fmt: skip
    schema = MetricSchema(
        code=args.code,
        agg_type=enum_member(AggType, args.agg, "--agg"),
        period_type=enum_member(PeriodType, args.period_type, "--period-type"),
        billing_cycle_day=args.billing_cycle_day,
        period_seconds=args.period_seconds,
        recurring=args.recurring,
        filters=tuple(dimensions),
        thresholds=tuple(thresholds),
    )
    try:
        schema.validate()
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    return schema


async def metrics_create(args: argparse.Namespace, client: AsyncClient, out: Output) -> None:
    show_schema(await client.metrics.create(schema_from_args(args)), out)


async def metrics_delete(args: argparse.Namespace, client: AsyncClient, out: Output) -> None:
    await client.metrics.delete(args.code)
    out.show({"deleted": args.code})


# --------------------------------------------------------------------------- usage


def period_from_args(args: argparse.Namespace) -> Period:
    if args.start is not None or args.end is not None:
        if args.start is None or args.end is None:
            raise InvalidRequestError("--from and --to go together")
        start, end = parse_time(args.start, "--from"), parse_time(args.end, "--to")
        if end <= start:
            raise InvalidRequestError("--to must be after --from")
        return Period(start, end)
    name = args.period
    if name in ("current_billing_period", "last_billing_period"):
        helper = (
            model.current_billing_period
            if name.startswith("current")
            else model.last_billing_period
        )
        return helper(args.billing_cycle_day)
    return PERIODS[name]()


def pairs(texts: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"{flag} takes KEY=VALUE; got {text!r}")
        out[key] = value
    return out


async def usage(args: argparse.Namespace, client: AsyncClient, out: Output) -> None:
    period = period_from_args(args)
    filters = pairs(args.filter, "--filter") or None
    head = {
        "account_id": args.account,
        "metric_code": args.metric,
        "period_start": time_text(period.start),
        "period_end": time_text(period.end),
    }
    if args.group_by:
        cells = await client.query_breakdown(
            args.account, args.metric, period, group_by=args.group_by, filters=filters
        )
        rows = [
            {**dict(sorted(cell)), **agg_value_json(value)}
            for cell, value in sorted(cells.items(), key=lambda kv: sorted(kv[0]))
        ]
        if out.as_json:
            out.show({**head, "groups": rows})
            return
        title = (
            f"{args.metric} for account {args.account}, "
            f"{head['period_start']} to {head['period_end']}"
        )
        out.show(rows, [*args.group_by, "count", "sum", "max", "last_value"], title=title)
        return
    result = await client.query(args.account, args.metric, period, filters=filters)
    value = agg_value_json(result.value)
    if out.as_json:
        out.show({**head, "value": value})
        return
    row = {"period_start": head["period_start"], "period_end": head["period_end"], **value}
    out.show([row], ["period_start", "period_end", "count", "sum", "max", "last_value",
                     "alert_flags"])  # fmt: skip


# --------------------------------------------------------------------------- events


def time_range(args: argparse.Namespace) -> tuple[datetime, datetime]:
    since = parse_time(args.since, "--since") if args.since else _FAR_PAST
    until = (
        parse_time(args.until, "--until")
        if args.until
        else datetime.now(UTC) + timedelta(days=1)  # nothing is stored further ahead
    )
    return since, until


_EVENT_COLUMNS = ["offset", "timestamp", "metric_code", "value", "operation_type", "event_id",
                  "properties"]  # fmt: skip


async def events_list(args: argparse.Namespace, client: AsyncClient, out: Output) -> None:
    since, until = time_range(args)
    rows = []
    async for record in client.list_events(args.account, since, until):
        rows.append(event_record_json(record))
        if len(rows) >= args.limit:
            break
    out.show(rows, _EVENT_COLUMNS)


async def events_tail(args: argparse.Namespace, client: AsyncClient, out: Output) -> None:
    """The account's newest events, then each new one as it is stored (offset order), until
    interrupted or ``--count`` events were shown."""
    since = datetime.now(UTC) - timedelta(seconds=args.back)
    after: int | None = None
    shown = 0
    first = True
    while args.count is None or shown < args.count:
        until = datetime.now(UTC) + timedelta(days=1)
        start = _FAR_PAST if after is not None else since
        async for record in client.list_events(args.account, start, until, after_offset=after):
            after = record.offset
            row = event_record_json(record)
            if out.as_json:
                out.write(_json_line(row))
            else:
                if first:
                    out.write("  ".join(c.upper() for c in _EVENT_COLUMNS))
                    first = False
                out.write("  ".join(cell(row[c]) for c in _EVENT_COLUMNS))
            shown += 1
            if args.count is not None and shown >= args.count:
                return
        await asyncio.sleep(args.interval)


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False)
