"""One storage thread per node: every fsync, and everything that fsyncs, off the event loop.

Theory of operation. Replica runtimes ``submit`` jobs -- a WAL sync, a hard state write, a
segment rotation, a log truncation or reset, a snapshot install, a compaction -- each with a
completion callback. The thread takes every job queued, runs them one after another in
submission order, and then wakes the loop *once* for the whole batch, which runs the
callbacks in the same order. So:

- Order is the submission order, across all replicas of the node: a replica that submits its
  hard state and then its WAL sync learns that the sync finished only after the hard state is
  durable too, which is the order Raft needs (a vote is acted on only once it is on disk).
- Group commit stays: each replica has at most one WAL sync queued or running, and every
  append made before it runs is covered by it, however many clients wait.
- The loop pays one wake-up per batch of completed jobs instead of one executor round trip
  (future, two thread hops and a task switch) per fsync.

A job's exception is handed to its callback on the loop; the thread itself never stops on one.
``stop`` lets queued jobs finish first.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

Done = Callable[[Any, BaseException | None], None]


class StorageThread:
    def __init__(self, name: str = "unimeter-storage") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Done] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # loop wake-ups
        self.jobs = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._thread is None, "started twice"
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Callable[[], Any], done: Done) -> None:
        """Run ``job()`` on the storage thread; then ``done(result, error)`` on the loop."""
        assert self._thread is not None, "submit before start"
        self._jobs.put((job, done))

    def run(self, job: Callable[[], Any]) -> asyncio.Future[Any]:
        """``job`` on the storage thread, as a future of the loop (for one-off waits)."""
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self.submit(job, done)
        return future

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish every queued job, then end the thread (callbacks of the last batch are
        delivered only if the loop still runs)."""
        if self._thread is None:
            return
        self._jobs.put(None)
        self._thread.join(timeout_s)
        self._thread = None

    def _run(self) -> None:
        jobs = self._jobs
        while True:
            batch = [jobs.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(jobs.get_nowait())
            completed: list[tuple[Done, Any, BaseException | None]] = []
            stopping = False
            for item in batch:
                if item is None:
                    stopping = True
                    continue
                job, done = item
                try:
                    completed.append((done, job(), None))
                except BaseException as exc:  # the owner decides, on the loop
                    completed.append((done, None, exc))
            if completed:
                self.jobs += len(completed)
                self.batches += 1
                loop = self._loop
                assert loop is not None
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_deliver, completed)
            if stopping:
                return


def _deliver(completed: list[tuple[Done, Any, BaseException | None]]) -> None:
    for done, result, error in completed:
        done(result, error)
