"""Durable-filesystem helpers shared by the WAL, snapshots and (later) the catalog.

Two facts drive everything here:

* Creating, renaming or deleting a file changes its *directory*. Until the directory is
  fsynced, a crash may forget the new name (or resurrect a deleted one) even though the file's
  own data was fsynced. So every create/rename/unlink that must survive is followed by
  :func:`fsync_dir`.
* ``rename`` is atomic, but it may reach the disk before the renamed file's data does. A file
  is therefore written under a temporary name, fsynced, and only then renamed
  (:func:`atomic_write`), so the final name never points at a partial file.

Disk-full errors (ENOSPC, and EDQUOT for quotas) become :class:`DiskFullError` so callers can
answer BACKPRESSURE (docs/operations.md §6) instead of treating them as I/O failures.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
TEMP_SUFFIX = ".tmp"


class DiskFullError(Exception):
    """A write or fsync failed for lack of space; nothing was left half-done.

    The OSError that caused it is ``__cause__``; ``errno`` repeats its code.
    """

    def __init__(self, message: str, *, errno_code: int = errno.ENOSPC) -> None:
        super().__init__(message)
        self.errno = errno_code


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_error(exc: OSError, what: str) -> DiskFullError:
    """The DiskFullError for ``exc``; raise it ``from exc``."""
    return DiskFullError(f"{what}: {os.strerror(exc.errno or 0)}", errno_code=exc.errno or 0)


def fsync_dir(path: str | os.PathLike[str], fsync: Callable[[int], None] = os.fsync) -> None:
    """Make the directory's entries (created, renamed, removed names) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: str | os.PathLike[str]) -> None:
    """``mkdir -p`` whose new directory names survive a crash (each new level's parent fsynced)."""
    target = Path(path)
    missing: list[Path] = []
    probe = target
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        fsync_dir(directory.parent)


def write_all(
    fd: int, data: bytes, offset: int, pwrite: Callable[[int, memoryview, int], int] = os.pwrite
) -> None:
    """pwrite every byte of ``data`` at ``offset``; a short write is continued, not ignored."""
    view = memoryview(data)
    while view:
        written = pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    pwrite: Callable[[int, memoryview, int], int] = os.pwrite,
    fsync: Callable[[int], None] = os.fsync,
) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old file or the new one.

    Temp file, write, fsync, rename over ``path``, fsync the directory. On failure the temp
    file is removed; ENOSPC/EDQUOT raise :class:`DiskFullError`. ``pwrite``/``fsync`` are
    substituted only by fault-injection tests.
    """
    final = Path(path)
    temp = final.with_name(final.name + TEMP_SUFFIX)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, data, 0, pwrite)
            fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
        fsync_dir(final.parent, fsync)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(exc, f"writing {final}") from exc
        raise


def remove_durable(paths: list[Path]) -> None:
    """Unlink ``paths`` (in order) and make the removals durable with one directory fsync each."""
    parents: dict[Path, None] = {}
    for path in paths:
        path.unlink(missing_ok=True)
        parents[path.parent] = None
    for parent in parents:
        fsync_dir(parent)


def set_aside(path: Path, data: bytes) -> Path:
    """Durably save ``data`` as ``path`` -- or, if a different file holds that name already, as
    ``path-1``, ``path-2``...: evidence is never overwritten. Returns the name used."""
    candidate, attempt = path, 0
    while candidate.exists() and candidate.read_bytes() != data:
        attempt += 1
        candidate = path.with_name(f"{path.name}-{attempt}")
    atomic_write(candidate, data)
    return candidate
