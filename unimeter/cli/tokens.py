"""``unimeter token new``: make an API token, show it once, keep only its hash.

The token goes to standard output alone (so ``TOKEN=$(unimeter token new ...)`` works); what
was done with its hash goes to standard error. With ``--file`` the hashed line is appended to
the token file (created readable by its owner only); a running node reads it on SIGHUP.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from unimeter.security.roles import parse_role
from unimeter.security.tokens import TokenFileError, TokenTable, entry_for, new_token

from .output import Output


class TokenCommandError(ValueError):
    """The token could not be made or recorded; the message says why."""


def _append(path: Path, line: str) -> None:
    if path.exists():
        try:
            table = TokenTable.load(path)  # never append to a file the node would refuse
        except TokenFileError as exc:
            raise TokenCommandError(f"{exc}; not changing it") from None
        if any(line.split()[2] == entry.name for entry in table.entries):
            raise TokenCommandError(f"{path} already has a token named {line.split()[2]!r}")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "a") as f:
        if f.tell() > 0 and not path.read_bytes().endswith(b"\n"):
            f.write("\n")
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


async def new(args: argparse.Namespace, _client: Any, out: Output) -> None:
    try:
        role = parse_role(args.role)
        token = new_token()
        entry = entry_for(token, role, args.name)
    except ValueError as exc:
        raise TokenCommandError(str(exc)) from None
    line = entry.line()
    if args.file:
        _append(Path(args.file), line)
        print(f"added {args.name} ({role.value}) to {args.file}; send the node SIGHUP "
              "to put it in force", file=sys.stderr)  # fmt: skip
    else:
        print(f"add this line to the node's --auth-tokens file:\n{line}", file=sys.stderr)
    if out.as_json:
        out.show({"token": token, "role": role.value, "name": args.name, "line": line})
    else:
        out.write(token)
