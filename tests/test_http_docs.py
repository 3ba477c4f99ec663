"""The curl examples of docs/http.md and README.md run as written against a real node.

Each ``sh`` block runs (with ``bash``, in document order, against one fresh node) and its
output is compared with the ``json`` or ``text`` block that follows it. The node listens on
free ports in the same relation as the documented defaults (HTTP on the binary port + 79), and
the examples' 7001 and 7080 are pointed at them: the suite must pass while a node the README
started still holds the defaults. Fields whose value depends on when the example
runs (times, offsets) are compared only for being present and null or not.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.nodeproc import NodeProcess, free_port, port_is_free

ROOT = Path(__file__).resolve().parents[1]
PORT = 7001
HTTP_PORT = 7080
WHEN_DEPENDENT = {
    "timestamp", "last_timestamp", "period_start", "period_end", "triggered_at", "offset",
    "last_offset", "next_after",
}  # fmt: skip
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples(path: Path) -> list[tuple[str, tuple[str, str] | None]]:
    """Each ``sh`` block with the output block (kind, text) right after it, if any."""
    blocks = [(m.group(1), m.group(2)) for m in _BLOCK.finditer(path.read_text())]
    out = []
    for i, (kind, text) in enumerate(blocks):
        if kind != "sh":
            continue
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        out.append((text, following if following and following[0] in ("json", "text") else None))
    return out


def same(expected: Any, actual: Any, key: str = "") -> bool:
    if key in WHEN_DEPENDENT:
        return (expected is None) == (actual is None)
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(same(expected[k], actual[k], k) for k in expected)
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(same(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual)


def same_text(expected: str, actual: str) -> bool:
    want, got = expected.splitlines(), actual.splitlines()
    if len(want) != len(got):
        return False
    for w, g in zip(want, got, strict=True):
        if w.startswith("data: ") and g.startswith("data: "):
            if not same(json.loads(w[6:]), json.loads(g[6:])):
                return False
        elif w != g:
            return False
    return True


@pytest.fixture
def default_node(tmp_path: Path) -> Iterator[NodeProcess]:
    for _ in range(100):  # a free port whose default HTTP port (+ 79) is free too
        port = free_port()
        if port + HTTP_PORT - PORT < 65536 and port_is_free(port + HTTP_PORT - PORT):
            break
    proc = NodeProcess(tmp_path / "data", port=port, partitions=8, default_http=True).start()
    try:
        yield proc
    finally:
        proc.kill()


def run(script: str, cwd: Path, node: NodeProcess) -> subprocess.CompletedProcess[str]:
    assert node.http_port is not None
    script = script.replace(f":{HTTP_PORT}", f":{node.http_port}")
    script = script.replace(f":{PORT}", f":{node.port}")
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30, cwd=cwd
    )


def check_examples(path: Path, tmp_path: Path, node: NodeProcess, only_curl: bool = False) -> int:
    ran = 0
    for script, output in examples(path):
        if only_curl and "curl" not in script:
            continue
        done = run(script, tmp_path, node)
        allowed = {0, 28} if "--max-time" in script else {0}  # 28: curl's own time limit
        assert done.returncode in allowed, (script, done.stdout, done.stderr)
        ran += 1
        if output is None:
            continue
        kind, text = output
        if kind == "json":
            assert same(json.loads(text), json.loads(done.stdout)), (script, done.stdout)
        else:
            assert same_text(text, done.stdout), (script, done.stdout)
    return ran


def test_http_md_examples(default_node: NodeProcess, tmp_path: Path) -> None:
    assert check_examples(ROOT / "docs" / "http.md", tmp_path, default_node) >= 12


def test_readme_curl_example(default_node: NodeProcess, tmp_path: Path) -> None:
    assert check_examples(ROOT / "README.md", tmp_path, default_node, only_curl=True) == 1
