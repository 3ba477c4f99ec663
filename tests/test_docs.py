"""The documentation stands alone and stays true: the client page shows the examples that
``test_sdk_page.py`` runs and names every public name; nothing refers outside the repository."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import unimeter
from tests import test_sdk_page

ROOT = Path(__file__).resolve().parents[1]
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXAMPLES = [
    "CONNECT_CM", "CONNECT_EXPLICIT", "DEFINE_METRICS", "CALENDAR", "PERIOD_HELPERS",
    "LIST_METRICS", "DELETE_METRIC", "SEND_EVENTS", "SEND_PROPERTIES", "SEND_SYNC",
    "SEND_UNIQUE", "QUERY_TOTAL", "QUERY_FILTER", "QUERY_MULTI", "QUERY_REALTIME",
    "ERROR_HANDLING",
]  # fmt: skip
# What a file must not say: the paths of one machine, and documents that are not in the tree.
OUTSIDE = re.compile(r"\bDESIGN\b|\.\./shared|/work/|seed-[a-z-]+\.txt|HELPERS\.md")
CHECKED_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".txt", ".cfg", ""}
SKIPPED_DIRS = {".git", ".venv", "build", "dist", "results", "__pycache__", ".hypothesis"}


def test_client_page_shows_the_examples_that_run() -> None:
    text = (ROOT / "docs" / "client.md").read_text()
    blocks = {block.strip() for block in _PYTHON_BLOCK.findall(text)}
    for name in EXAMPLES:
        example = textwrap.dedent(getattr(test_sdk_page, name)).strip()
        assert example in blocks, f"docs/client.md does not show {name} as it runs"


def test_every_public_name_is_documented() -> None:
    text = (ROOT / "docs" / "client.md").read_text()
    missing = [name for name in unimeter.__all__ if f"`{name}" not in text]
    assert not missing, f"docs/client.md does not describe {missing}"


def test_nothing_refers_outside_the_repository() -> None:
    found = []
    for path in sorted(ROOT.rglob("*")):
        parts = set(path.relative_to(ROOT).parts)
        if (
            not path.is_file()
            or SKIPPED_DIRS & parts
            or any(p.endswith(".egg-info") for p in parts)
        ):
            continue  # not the repository's own files (build output, caches)
        if path.suffix not in CHECKED_SUFFIXES:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if path == Path(__file__):
            continue  # the pattern itself
        for number, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "references outside the repository:\n" + "\n".join(found[:40])
