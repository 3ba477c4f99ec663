from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nodeproc import NodeProcess


@pytest.fixture(autouse=True)
def _fail_on_loop_exceptions() -> Iterator[None]:
    """Async hygiene: an exception that reaches the loop's handler fails the test."""
    seen: list[dict[str, object]] = []
    original = asyncio.BaseEventLoop.call_exception_handler

    def record(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        seen.append(context)
        original(loop, context)  # type: ignore[arg-type]

    asyncio.BaseEventLoop.call_exception_handler = record  # type: ignore[method-assign]
    try:
        yield
    finally:
        asyncio.BaseEventLoop.call_exception_handler = original  # type: ignore[method-assign]
    assert not seen, f"exceptions reached the event loop: {seen}"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path / "data").start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def http_node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A node serving its HTTP API too (``http_url``)."""
    proc = NodeProcess(tmp_path / "data", http=True).start()
    try:
        yield proc
    finally:
        proc.kill()
