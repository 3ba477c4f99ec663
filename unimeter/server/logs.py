"""The node's log lines: ``key=value`` text (the default) or one JSON object per line.

Every log call in the server writes its message as ``key=value`` pairs (``event=serving
node=1 ...``), so the two formats carry the same fields. In JSON each pair becomes a member
(``"node": "1"``: values stay the text the message wrote, so a reader never guesses types),
next to ``ts`` (RFC 3339, UTC), ``level``, ``logger`` and the whole ``message``; a traceback,
when there is one, goes in ``exc``.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import IO

# key=value where the value is a quoted Python repr ('...' or "...") or runs to the next space.
_PAIR = re.compile(r"""(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")
_RESERVED = frozenset({"ts", "level", "logger", "message", "exc"})

TEXT_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def fields(message: str) -> dict[str, str]:
    """The ``key=value`` pairs of a message, quotes removed from quoted values."""
    out: dict[str, str] = {}
    for key, value in _PAIR.findall(message):
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key if key not in _RESERVED else f"field_{key}"] = value
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, str] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            **fields(message),
            "message": message,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str, stream: IO[str]) -> None:
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif log_format == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        raise ValueError(f"unknown log format {log_format!r}")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
