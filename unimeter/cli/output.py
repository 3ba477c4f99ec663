"""What the ``unimeter`` command prints: aligned tables for people, JSON for scripts.

Every command builds plain data (lists of dicts) and hands it to ``Output``; with ``--json``
that data is printed as one JSON document, otherwise as a table whose columns are as wide as
their widest cell. Numbers are right-aligned, everything else left-aligned; None prints as ``-``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any


def human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "-"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as text under a header of ``columns`` (upper-cased)."""
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(c), int | float) and not isinstance(row.get(c), bool)
            for row in rows if row.get(c) is not None)
        for c in columns
    ]  # fmt: skip
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str], header: bool = False) -> str:
        parts = [
            v.rjust(w) if numeric[i] and not header else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [line([c.upper() for c in columns], header=True)]
    out += [line(r) for r in cells]
    return "\n".join(out)


class Output:
    def __init__(self, as_json: bool, stream: IO[str] | None = None) -> None:
        self.as_json = as_json
        self.stream = stream if stream is not None else sys.stdout

    def show(self, data: Any, columns: Sequence[str] | None = None, title: str = "") -> None:
        """One result: JSON, or a table of ``columns`` (a list of rows), or ``key: value``."""
        if self.as_json:
            self.write(json.dumps(data, indent=2, ensure_ascii=False, default=str))
            return
        if title:
            self.write(title)
        if columns is not None:
            self.write(table(data, columns) if data else "(none)")
        elif isinstance(data, Mapping):
            width = max(map(len, data), default=0)
            for key, value in data.items():
                self.write(f"{key.ljust(width)}  {cell(value)}")
        else:
            self.write(str(data))

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
