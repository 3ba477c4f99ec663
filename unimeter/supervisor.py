"""Fail-stop supervision: a bug anywhere in the node stops the whole process.

A core step that raises may have changed half of its state; a runtime task that dies leaves its
mailbox filling up and its clients answered BACKPRESSURE for ever. Neither may be papered over:
the node is the billing source of truth, and a restart recovers a consistent state from disk
(snapshot plus log) in about a second. So every unexpected exception -- in a core step, in a
runtime task, in a loop callback (an fsync completion, a timer, a peer flush) -- goes to
``Supervisor.crash``, which logs it with its traceback and ends the process at once with a
non-zero status, for a process supervisor (systemd, Kubernetes, ``python -m unimeter.cluster
--restart``) to start it again.

Why not an orderly shutdown: ``Node.stop`` snapshots every partition's applied state, and after
a bug that state cannot be trusted. Ending the process without another write looks to the disk
exactly like ``kill -9``, which recovery is built and tested for (pwritten log records are in
the page cache and survive the process).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

log = logging.getLogger("unimeter.supervisor")

EXIT_CRASHED = 70  # EX_SOFTWARE: a bug; a restart recovers from disk
EXIT_STORAGE_FAILED = 74  # EX_IOERR: the disk failed a write the node already counted on


def _exit_now(status: int) -> NoReturn:
    logging.shutdown()  # the traceback must reach the log before the process is gone
    sys.stderr.flush()
    os._exit(status)


class Supervisor:
    """One per node. ``exit`` is replaceable only so a test can watch it in process."""

    def __init__(self, exit: Callable[[int], NoReturn] = _exit_now) -> None:
        self._exit = exit
        self.crashed: str | None = None

    def crash(self, where: str, exc: BaseException, status: int = EXIT_CRASHED) -> NoReturn:
        self.crashed = where
        log.critical(
            "event=crashed where=%s error=%r action=exiting status=%d",
            where, exc, status, exc_info=exc,
        )  # fmt: skip
        self._exit(status)

    def watch(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        """A task that must run as long as the node does: its end by an exception is a crash
        (cancelling it, on shutdown, is not)."""
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.crash(f"task:{task.get_name()}", exc)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Route exceptions that escape loop callbacks and protocol methods here."""
        loop.set_exception_handler(self._loop_exception)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        # OS errors on a client's socket are that client's problem (the transport is closed
        # already); so are reports without an exception ("task destroyed but pending").
        if exc is None or isinstance(exc, OSError):
            loop.default_exception_handler(context)
            return
        self.crash(f"loop:{context.get('message', 'callback')}", exc)
