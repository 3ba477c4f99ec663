"""unimeter: look at and manage a Unimeter cluster from a terminal.

    unimeter status
    unimeter metrics list | get CODE | create CODE --agg sum ... | delete CODE
    unimeter usage ACCOUNT METRIC [--period current_month | --from T --to T]
                                  [--filter KEY=VALUE]... [--group-by KEY]...
    unimeter events list ACCOUNT | events tail ACCOUNT
    unimeter import FILE [--format ndjson|csv]
    unimeter export ACCOUNT... [--format ndjson|csv] [-o FILE]
    unimeter token new --role ingest|read|admin --name NAME [--file TOKENS]

It talks to the nodes with the Python client over the binary protocol (--node, repeatable;
UNIMETER_NODES takes a comma-separated list; default 127.0.0.1:7001). A node that requires
API tokens needs --token (or UNIMETER_TOKEN); one that serves TLS needs --tls (the system's
CAs) or --tls-ca PEM (UNIMETER_TLS_CA). Output is a table for people, or JSON with --json.
Exit status: 0 done, 1 the cluster refused or could not be reached (the message says why),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from unimeter.errors import UnimeterError
from unimeter.security.roles import TOKEN_ROLES
from unimeter.security.tls import TlsConfigError, client_context

from . import commands, tokens, transfer
from .output import Output

Command = Callable[[argparse.Namespace, Any, Output], Awaitable[None]]

_PERIOD_NAMES = [*commands.PERIODS, "current_billing_period", "last_billing_period"]


def _add_time_range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="RFC 3339 time or date (default: the beginning)")
    p.add_argument("--until", help="RFC 3339 time or date, exclusive (default: now + 1 day)")


def _common(top: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name. Only the top level sets
    their defaults, so a subcommand's parser never resets what was given before its name."""
    p = argparse.ArgumentParser(add_help=False)
    default: Any = argparse.SUPPRESS
    p.add_argument(
        "--node", action="append", metavar="HOST:PORT", help="a node to ask (repeatable)",
        default=None if top else default,
    )  # fmt: skip
    p.add_argument(
        "--json", action="store_true", help="print JSON instead of tables",
        default=False if top else default,
    )  # fmt: skip
    p.add_argument(
        "--timeout", type=float, help="seconds per request (default 30)",
        default=30.0 if top else default,
    )  # fmt: skip
    p.add_argument(
        "--token", help="API token (default: $UNIMETER_TOKEN)",
        default=None if top else default,
    )  # fmt: skip
    p.add_argument(
        "--tls", action="store_true", help="dial with TLS, verified against the system's CAs",
        default=False if top else default,
    )  # fmt: skip
    p.add_argument(
        "--tls-ca", metavar="PEM", help="dial with TLS, verified against these CA certificates "
        "(default: $UNIMETER_TLS_CA)", default=None if top else default,
    )  # fmt: skip
    return p


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="unimeter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common(True)],
    )
    common = _common(False)
    sub = _Subparsers(top.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)

    p = sub.add_parser("status", help="nodes, partition leaders, replication lag, disk")
    p.set_defaults(run=commands.status)

    metrics = sub.add_parser("metrics", help="list, show, create or delete metric schemas")
    msub = _Subparsers(
        metrics.add_subparsers(dest="action", required=True, metavar="ACTION"), common
    )
    msub.add_parser("list", help="every metric").set_defaults(run=commands.metrics_list)
    p = msub.add_parser("get", help="one metric's schema")
    p.add_argument("code")
    p.set_defaults(run=commands.metrics_get)
    p = msub.add_parser("create", help="a new metric (a retried identical create is fine)")
    p.add_argument("code")
    p.add_argument("--agg", required=True, help="count, sum, max, latest or count_unique")
    p.add_argument("--period-type", default="fixed", help="fixed, calendar, day or week")
    p.add_argument("--billing-cycle-day", type=int, default=1, help="calendar: 1-28")
    p.add_argument("--period-seconds", type=int, default=30 * 24 * 3600, help="fixed periods")
    p.add_argument("--recurring", action="store_true", help="carry sets and latest over")
    p.add_argument("--dimension", action="append", default=[], metavar="KEY=V1,V2")
    p.add_argument("--threshold", action="append", default=[], metavar="CODE=VALUE[+][@URL]",
                   help="'+': fire again at every multiple; '@URL': also POST each alert "
                   "there (a webhook)")  # fmt: skip
    p.set_defaults(run=commands.metrics_create)
    p = msub.add_parser("delete", help="a metric and its aggregates")
    p.add_argument("code")
    p.set_defaults(run=commands.metrics_delete)

    p = sub.add_parser("usage", help="an account's usage of a metric over a period")
    p.add_argument("account", type=int)
    p.add_argument("metric")
    p.add_argument("--period", default="current_month", choices=_PERIOD_NAMES)
    p.add_argument("--billing-cycle-day", type=int, default=1)
    p.add_argument("--from", dest="start", metavar="TIME", help="RFC 3339 (with --to)")
    p.add_argument("--to", dest="end", metavar="TIME", help="RFC 3339, exclusive")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--group-by", action="append", default=[], metavar="KEY")
    p.set_defaults(run=commands.usage)

    events = sub.add_parser("events", help="an account's stored events")
    esub = _Subparsers(
        events.add_subparsers(dest="action", required=True, metavar="ACTION"), common
    )
    p = esub.add_parser("list", help="stored events, oldest first")
    p.add_argument("account", type=int)
    _add_time_range(p)
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.set_defaults(run=commands.events_list)
    p = esub.add_parser("tail", help="recent events, then new ones as they are stored")
    p.add_argument("account", type=int)
    p.add_argument("--back", type=float, default=60.0, help="first show this many seconds back")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p.add_argument("--count", type=int, default=None, help="stop after this many events")
    p.set_defaults(run=commands.events_tail)

    p = sub.add_parser("import", help="events from an NDJSON or CSV file, exactly once")
    p.add_argument("file")
    p.add_argument("--format", choices=["ndjson", "csv"], help="default: from the extension")
    p.add_argument("--batch", type=int, default=5000, help="events per request")
    p.add_argument("--delivery", choices=["sync", "async"], default="sync")
    p.add_argument("--id-prefix", help="derive missing event ids from this, not the file name")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.set_defaults(run=transfer.import_file)

    p = sub.add_parser("export", help="accounts' events as NDJSON or CSV")
    p.add_argument("accounts", type=int, nargs="+", metavar="ACCOUNT")
    p.add_argument("--format", choices=["ndjson", "csv"], default="ndjson")
    p.add_argument("-o", "--output", help="a file (default: standard output)")
    _add_time_range(p)
    p.set_defaults(run=transfer.export)

    token = sub.add_parser("token", help="make API tokens (no node needed)")
    tsub = _Subparsers(token.add_subparsers(dest="action", required=True, metavar="ACTION"), common)
    p = tsub.add_parser(
        "new", help="a new random token: shown once, its hash added to the token file"
    )
    p.add_argument("--role", required=True, choices=[r.value for r in TOKEN_ROLES])
    p.add_argument("--name", required=True, help="whose token it is (shown in logs)")
    p.add_argument(
        "--file", help="append the hashed line to this token file (created mode 600); "
        "then send the node SIGHUP. Default: print the line to add",
    )  # fmt: skip
    p.set_defaults(run=tokens.new, offline=True)
    return top


class _Subparsers:
    """``add_subparsers``' result, giving every command the common options."""

    def __init__(self, action: Any, common: argparse.ArgumentParser) -> None:
        self._action = action
        self._common = common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._action.add_parser(
            name, parents=[self._common], **kwargs
        )
        return parser


def seeds(args: argparse.Namespace) -> list[str]:
    if args.node:
        return list(args.node)
    env = os.environ.get("UNIMETER_NODES", "")
    return [a.strip() for a in env.split(",") if a.strip()] or ["127.0.0.1:7001"]


def dial_options(args: argparse.Namespace) -> tuple[str | None, ssl.SSLContext | None]:
    """The token and TLS context the options (or their environment twins) ask for."""
    token = args.token or os.environ.get("UNIMETER_TOKEN") or None
    ca = args.tls_ca or os.environ.get("UNIMETER_TLS_CA") or None
    tls = client_context(ca) if (ca or args.tls) else None
    return token, tls


async def run(args: argparse.Namespace) -> None:
    from unimeter.client import AsyncClient

    out = Output(args.json)
    if getattr(args, "offline", False):
        await args.run(args, None, out)
        return
    token, tls = dial_options(args)
    args.dial_token, args.dial_tls = token, tls  # for commands that dial nodes one by one
    async with AsyncClient(
        seeds(args), client_name="unimeter-cli", request_timeout=args.timeout, token=token,
        tls=tls,
    ) as client:  # fmt: skip
        await args.run(args, client, out)


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if getattr(args, "batch", 1) < 1:
        parser().error("--batch must be at least 1")
    try:
        asyncio.run(run(args))
    except (TlsConfigError, tokens.TokenCommandError) as exc:
        print(f"unimeter: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except UnimeterError as exc:
        print(f"unimeter: {exc.message or type(exc).__name__}", file=sys.stderr)
        for note in getattr(exc, "__notes__", ()):
            print(note, file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:  # `unimeter export ... | head`
        sys.stderr.close()
        raise SystemExit(0) from None
