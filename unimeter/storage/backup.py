"""Online backup: a consistent copy of a running node's data directory.

Theory of operation. A running node changes its files in three ways: it appends to the last
WAL segment, it creates files by rename (segments, snapshots, the hard state), and it deletes
files (WAL compaction, pruning of old snapshots, and a follower's log reset when its leader
sends a snapshot). Appends and renames are harmless to a copy taken snapshots first, then the
hard state, then the segments in ascending order: the copy is a crash image, and recovery cuts
a torn last record. Deletions are not: compaction in the middle of the copy leaves a copy whose
log has a hole ("gap in the log") or starts after its newest snapshot.

So deletions are held off while a backup runs. ``backup.lock`` in the data directory is a
reader-writer lock (``flock``): the node takes it *shared and without waiting* around every
compaction and every pruning (``RemovalGuard``), and skips that deletion if it cannot (the next
snapshot deletes what was skipped); the backup takes it *exclusive*, waiting for a deletion in
progress to end. A follower's log reset cannot wait (its leader's snapshot replaces the log), so
each replica's copy is verified by opening it as recovery would -- newest valid snapshot, then
the WAL, which must reach back to it without a hole -- and copied again if that fails.

The copy is fsynced (files and directories) before ``backup`` returns. Restore: stop the node,
put the copy in place of its data directory, start it (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unimeter.storage.fsutil import fsync_dir
from unimeter.storage.snapshot import load_latest_snapshot
from unimeter.storage.wal import WriteAheadLog
from unimeter.storage.walformat import CorruptLogError

log = logging.getLogger("unimeter.backup")

LOCK_FILE = "backup.lock"
hold_wait_s_max = 30.0  # a deletion in progress ends in milliseconds; this is a stuck node
replica_attempts_max = 10


class BackupError(Exception):
    """The backup could not be made; nothing usable was left at the target."""


class RemovalGuard:
    """The node's side of the lock: may files be deleted now?"""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self.skipped = 0  # deletions skipped because a backup ran

    @contextlib.contextmanager
    def removals(self) -> Iterator[bool]:
        """Yields True (holding the lock shared) if deletions may go ahead, False while a
        backup holds it. Never waits."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:  # no lock file can be made (a full disk): nobody can be copying
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                self.skipped += 1
                log.info("event=deletion_deferred reason=backup_running skipped=%d", self.skipped)
                yield False
                return
            yield True  # closing the descriptor releases the lock
        finally:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class BackupReport:
    target: Path
    replicas: int
    files: int
    bytes: int
    retries: int
    seconds: float


def backup(data_dir: str | os.PathLike[str], target: str | os.PathLike[str]) -> BackupReport:
    """Copy the node data directory ``data_dir`` (running or not) to ``target``, which must not
    exist yet. Raises ``BackupError``; on failure nothing is left at ``target``."""
    started = time.monotonic()
    source, out = Path(data_dir), Path(target)
    if not (source / "cluster.cbor").is_file():
        raise BackupError(f"{source} is not a unimeter data directory (no cluster.cbor)")
    if out.exists():
        raise BackupError(f"{out} exists already; back up into a new directory")
    try:
        with _exclusive(source / LOCK_FILE):
            out.mkdir(parents=True)
            files, size, retries = _copy_file(source / "cluster.cbor", out), 0, 0
            size += (out / "cluster.cbor").stat().st_size
            replicas = [source / "catalog"]
            if (source / "partitions").is_dir():
                replicas += sorted(p for p in (source / "partitions").iterdir() if p.is_dir())
            for replica in replicas:
                copied, nbytes, tries = _copy_replica(replica, out / replica.relative_to(source))
                files, size, retries = files + copied, size + nbytes, retries + tries
            _sync_tree(out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return BackupReport(
        target=out, replicas=len(replicas), files=files, bytes=size, retries=retries,
        seconds=time.monotonic() - started,
    )  # fmt: skip


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + hold_wait_s_max
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BackupError(
                        f"{path} stayed locked for {hold_wait_s_max:.0f}s (another backup?)"
                    ) from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)


def _copy_replica(replica: Path, out: Path) -> tuple[int, int, int]:
    """Copy one replica until the copy verifies; returns (files, bytes, retries)."""
    for attempt in range(replica_attempts_max):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        files = 0
        # Snapshots first (newest first), then the hard state, then the log oldest first.
        names = sorted((p for p in replica.glob("snapshot-*.snap")), reverse=True)
        names.append(replica / "raft-state.cbor")
        names += sorted(replica.glob("*.wal"))
        for path in names:
            files += _copy_file(path, out)
        try:
            _verify(out)
        except (CorruptLogError, ValueError, OSError):
            continue  # a leader's snapshot reset this replica's log meanwhile: copy again
        return files, sum(p.stat().st_size for p in out.iterdir()), attempt
    raise BackupError(f"no consistent copy of {replica} in {replica_attempts_max} attempts")


def _copy_file(path: Path, out: Path) -> int:
    try:
        shutil.copyfile(path, out / path.name)
    except FileNotFoundError:  # a snapshot pruned, a log reset: the verification decides
        return 0
    return 1


def _verify(out: Path) -> None:
    """The copy recovers: its newest valid snapshot, then a log that reaches back to it."""
    snap = load_latest_snapshot(out)
    first = snap[0] + 1 if snap is not None else 1
    if not any(out.glob("*.wal")):
        if snap is None and any(out.glob("snapshot-*.snap")):
            raise ValueError(f"{out}: no valid snapshot and no log")
        return  # never written to, or reset exactly at the snapshot: recovery starts anew
    wal, _ = WriteAheadLog.open(out, first_index=first)
    try:
        if wal.first_index > first:
            raise ValueError(f"{out}: log starts at {wal.first_index}, snapshot at {first - 1}")
    finally:
        wal.close()


def _sync_tree(root: Path) -> None:
    for directory, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
            finally:
                os.close(fd)
        fsync_dir(directory)
