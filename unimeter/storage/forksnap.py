"""Snapshot files written by a forked child, so the event loop never serialises a whole state.

Why a fork. Encoding a partition's applied state is pure Python over every record it holds:
0.6 s per million stored events with 10,000 accounts, 5-17 s with 100,000 accounts or with
event ids (measured; docs/benchmarks.md, "Storage"). A thread does not help (the encoder holds
the GIL) and slicing the work across loop iterations would need a consistent cut of a state
that keeps changing. ``fork()`` gives that cut for free, like Redis' BGSAVE: the child sees the
memory exactly as it was at the fork, copy-on-write, while the parent goes on applying entries.
The parent pays only the fork itself (copying page tables: about 10-40 ms per GB of heap).

Theory of operation:

* :func:`fork_snapshots` opens one temp file per job (``snapshot_temp_path``), forks, and returns
  a :class:`ForkedWrite` at once. The child renders each job's payload from its frozen copy of
  the state, writes header and payload to the temp file, fsyncs it and leaves with
  ``os._exit`` -- it never returns into the parent's code, runs no ``atexit`` or ``finally`` of
  the parent, and touches no lock, logger or event loop the parent's threads might hold.
* The child first resets the signal handlers it inherited (a SIGTERM meant for the node must
  not be forwarded through the parent's wake-up fd), closes every inherited descriptor but its
  temp files (so it holds no WAL directory lock and no socket), and asks the kernel to kill it
  if the parent dies (``PR_SET_PDEATHSIG``): a SIGKILLed node leaves no writer behind.
* The parent polls :meth:`ForkedWrite.poll` (``waitpid(WNOHANG)`` on its own child's PID). Exit
  status 0 means every temp file is complete and durable; the caller then renames each into
  place with :func:`unimeter.storage.snapshot.publish_snapshot`. Any other status, or
  :meth:`ForkedWrite.abort` (SIGKILL to that PID), leaves only temp files, which are removed.
  A crash of the whole node leaves temp files too: they are never a snapshot's name, so
  recovery ignores them, and :func:`remove_stale_temps` deletes them at the next start.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from crc32c import crc32c

from unimeter.storage.fsutil import TEMP_SUFFIX, is_disk_full, remove_durable, write_all
from unimeter.storage.snapshot import snapshot_header, snapshot_temp_path

__all__ = ["ForkedWrite", "SnapshotJob", "fork_snapshots", "remove_stale_temps"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DISK_FULL = 28  # ENOSPC's number, so a log line reads naturally
EXIT_ORPHANED = 3
_PR_SET_PDEATHSIG = 1
_STALE_TEMP = re.compile(r"^snapshot-\d+\.snap" + re.escape(TEMP_SUFFIX) + "$")


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotJob:
    """One snapshot to write: ``render`` runs in the child and returns the payload's pieces
    (their concatenation is the payload; pieces avoid copying a large encoded state)."""

    directory: Path
    index: int
    render: Callable[[], Sequence[bytes]]


class ForkedWrite:
    """A child writing the temp files of ``jobs``; owned by the process that forked it."""

    def __init__(self, pid: int, jobs: Sequence[SnapshotJob]) -> None:
        self.pid = pid
        self.jobs = tuple(jobs)
        self.status: int | None = None  # the child's exit code once reaped

    def poll(self) -> int | None:
        """The child's exit code if it has ended (reaping it), else None."""
        if self.status is None:
            pid, wait_status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.status = _exit_code(wait_status)
        return self.status

    def wait(self) -> int:
        """Block until the child ends (tests and shutdown only)."""
        if self.status is None:
            _, wait_status = os.waitpid(self.pid, 0)
            self.status = _exit_code(wait_status)
        return self.status

    def abort(self) -> None:
        """SIGKILL the child (by its PID), reap it and remove its temp files."""
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):  # it may have just ended
                os.kill(self.pid, signal.SIGKILL)
            self.wait()
        self.discard()

    def discard(self) -> None:
        """Remove the temp files (after a failure or an abort)."""
        assert self.status is not None, "the child still writes its files"
        remove_durable([snapshot_temp_path(job.directory, job.index) for job in self.jobs])


def fork_snapshots(jobs: Sequence[SnapshotJob]) -> ForkedWrite:
    """Fork a child that writes every job's temp file; returns at once in the parent.

    Raises OSError if a temp file cannot be created or the fork fails (nothing left behind).
    """
    assert jobs
    fds: list[int] = []
    try:
        for job in jobs:
            temp = snapshot_temp_path(job.directory, job.index)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            fds.append(os.open(temp, flags, 0o644))
        parent = os.getpid()
        sys.stdout.flush()  # buffered output must not be written twice
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured by its exit status
            _child(parent, jobs, fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        remove_durable([snapshot_temp_path(j.directory, j.index) for j in jobs[: len(fds)]])
        raise
    for fd in fds:
        os.close(fd)
    return ForkedWrite(pid, jobs)


def remove_stale_temps(directory: str | os.PathLike[str]) -> int:
    """Delete temp files a crashed node's snapshot child left; returns how many."""
    folder = Path(directory)
    stale = [p for p in folder.iterdir() if _STALE_TEMP.match(p.name)] if folder.is_dir() else []
    if stale:
        remove_durable(stale)
    return len(stale)


def _exit_code(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return -os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def _child(parent: int, jobs: Sequence[SnapshotJob], fds: list[int]) -> None:  # pragma: no cover
    """The child's whole life; it always ends in ``os._exit``."""
    code = EXIT_FAILED
    try:
        gc.disable()  # a collection would touch (and so copy) every object's page
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        if os.getppid() != parent:
            code = EXIT_ORPHANED
            return
        keep = sorted({0, 1, 2, *fds})
        for low, high in zip(keep, [*keep[1:], os.sysconf("SC_OPEN_MAX")], strict=True):
            os.closerange(low + 1, high)
        for job, fd in zip(jobs, fds, strict=True):
            _write(fd, job)
        code = EXIT_OK
    except BaseException as exc:
        code = EXIT_DISK_FULL if is_disk_full(exc) else EXIT_FAILED
        if code == EXIT_FAILED:
            text = "".join(traceback.format_exception(exc))
            os.write(2, f"snapshot child {os.getpid()} failed:\n{text}".encode(errors="replace"))
    finally:
        os._exit(code)


def _write(fd: int, job: SnapshotJob) -> None:  # pragma: no cover - runs in the child
    parts = job.render()
    length, crc = 0, 0
    for part in parts:
        length += len(part)
        crc = crc32c(part, crc)
    offset = 0
    for piece in (snapshot_header(job.index, length, crc), *parts):
        write_all(fd, piece, offset)
        offset += len(piece)
    os.fsync(fd)


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up now: a child of a threaded process must not run the loader."""
    if not sys.platform.startswith("linux"):
        return None
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if _PRCTL is not None and _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


assert EXIT_DISK_FULL == errno.ENOSPC
