"""Segmented write-ahead log: append, group-commit fsync, crash recovery (docs/operations.md §1-2).

Theory of operation (the byte format and the torn-tail rule are in ``walformat``):

*Segments.* A log is a directory of segment files named by the index of their first record.
Records have consecutive indexes. A segment is closed once the next batch would push it past
``segment_bytes_max``; a batch always lands whole in one segment, so a segment exceeds the bound
only when one batch alone does. A new segment is written under a temporary name, fsynced,
renamed and the directory fsynced: a segment name never points at a partial header.

*Durability.* ``append``/``append_many`` only ``pwrite`` to the page cache and never fsync,
except that rotating to a new segment first fdatasyncs the old one, so a segment that is not
the last is always complete. ``sync`` fdatasyncs and advances ``durable_index`` to the
``last_index`` it saw when it started: that is what the runtime may acknowledge. Everything
appended before a ``sync`` starts is covered by it; appends racing with it wait for the next.

*Threading contract.* One owner thread (the event loop) calls every method except ``sync``,
which may run concurrently in other threads (sync calls serialise among themselves). ``append``
holds an internal lock only while it writes to the page cache, so an fsync in flight never
blocks it -- unless it rotates segments: then it waits for that sync and fsyncs the old segment
itself; ``truncate_after``, ``reset`` and ``close`` wait too. The ``*_index`` attributes may be
read from any thread. A ``read_from`` iterator survives ``append`` and successful ``sync``;
finish it before anything that removes bytes (truncate, compact, reset, a failed sync).

*Recovery.* ``open`` checks every record of every segment. Corruption (rule in ``walformat``)
raises :class:`CorruptLogError` naming file and offset, with nothing modified; a torn tail of
the last segment is copied to ``<segment>.torn-<offset>`` and cut. The last segment is then
fdatasynced: what a crashed process left in the page cache is durable before it counts.

*Disk full.* ENOSPC/EDQUOT become :class:`DiskFullError`. A failed write is truncated away:
the log is exactly as before the call. After a failed fsync, Linux may have dropped the dirty
pages and will report success next time, so the bytes after the last durable point are cut
from the file at once (no one, not even a reopen, may take them for durable) and their batches
kept in memory; appends get ``DiskFullError`` and the next ``sync`` rewrites and fsyncs them.
Writes resume by themselves when space returns (operations.md §6); no appended record is dropped.
Any other I/O error fails the log for good (:class:`LogFailedError`): stop the node; a restart
recovers from the disk.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import fcntl
import logging
import os
import re
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from unimeter.storage.fsutil import (
    TEMP_SUFFIX,
    DiskFullError,
    atomic_write,
    disk_full_error,
    is_disk_full,
    make_dirs_durable,
    set_aside,
    write_all,
)
from unimeter.storage.walformat import (
    OFFSET_STRIDE,
    RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
    CorruptLogError,
    check_torn_tail,
    decode_records,
    encode_records,
    read_record,
    scan_segment,
    segment_header,
    skip_record,
)

__all__ = [
    "CorruptLogError",
    "DiskFullError",
    "LogFailedError",
    "RecoveryReport",
    "SegmentFullError",
    "Syscalls",
    "WriteAheadLog",
    "segment_bytes_max_default",
]

log = logging.getLogger(__name__)

segment_bytes_max_default = 64 << 20
_SEGMENT_NAME = re.compile(r"^(\d{16,20})\.wal$")


class LogFailedError(Exception):
    """An I/O error other than disk-full; the log refuses further use (restart the node)."""


class SegmentFullError(Exception):
    """``append_many(rotate=False)``: the batch needs a new segment; call ``rotate()`` (it
    fsyncs, so an event loop runs it in a thread) and append again. Nothing was written."""


def _fdatasync(fd: int) -> None:
    os.fdatasync(fd)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Syscalls:
    """The calls through which the log writes and syncs. Only fault-injection tests replace them."""

    pwrite: Callable[[int, memoryview, int], int] = os.pwrite
    fdatasync: Callable[[int], None] = _fdatasync if hasattr(os, "fdatasync") else os.fsync
    fsync: Callable[[int], None] = os.fsync


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryReport:
    directory: str
    segments: int
    records: int
    bytes_scanned: int
    first_index: int
    last_index: int
    torn_tail_bytes: int
    torn_tail_file: str | None  # the side file now holding the cut bytes
    torn_tail_segment: str | None
    torn_tail_offset: int | None
    temp_files_removed: int
    elapsed_s: float


@dataclasses.dataclass(slots=True)
class _Segment:
    first_index: int
    path: Path
    records: int = 0
    size: int = SEGMENT_HEADER_BYTES
    offsets: array[int] = dataclasses.field(default_factory=lambda: array("Q"))

    def add(self, offset: int, lengths: Sequence[int]) -> None:
        for length in lengths:
            if self.records % OFFSET_STRIDE == 0:
                self.offsets.append(offset)
            self.records += 1
            offset += RECORD_HEADER_BYTES + length
        self.size = offset

    def cut(self, records: int, size: int) -> None:
        self.records, self.size = records, size
        del self.offsets[-(-records // OFFSET_STRIDE) :]


_Batch = tuple[bytes, tuple[int, ...]]  # framed records as written, and their payload lengths
_ReadPlan = list[tuple[Path, int, int, int, int]]  # path, offset, records to skip, index, count


class WriteAheadLog:
    """One log directory, opened with :meth:`open`. The module docstring holds the contract."""

    def __init__(
        self,
        directory: Path,
        dir_fd: int,
        segments: list[_Segment],
        fd: int,
        *,
        segment_bytes_max: int,
        syscalls: Syscalls,
    ) -> None:
        self._dir = directory
        self._dir_fd = dir_fd  # holds an exclusive flock: one owner per log directory
        self._segments = segments
        self._fd = fd
        self._segment_bytes_max = segment_bytes_max
        self._sys = syscalls
        self._lock = threading.Lock()  # guards all state; held only briefly
        self._sync_lock = threading.Lock()  # taken before _lock; held across fsyncs and fd swaps
        tail = segments[-1]
        self.last_index = tail.first_index + tail.records - 1
        self.durable_index = self.last_index
        self._synced_size = tail.size
        self._unsynced: list[_Batch] = []  # batches in the last segment after _synced_size
        self._failure: BaseException | None = None
        self._failed_for_good = False
        self._closed = False

    @property
    def first_index(self) -> int:
        return self._segments[0].first_index

    @property
    def segment_bytes_max(self) -> int:
        return self._segment_bytes_max

    # ---------------------------------------------------------------- opening and recovery

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        segment_bytes_max: int = segment_bytes_max_default,
        first_index: int = 1,
        test_only_syscalls: Syscalls | None = None,
    ) -> tuple[WriteAheadLog, RecoveryReport]:
        """Open and recover the log, creating it if needed.

        ``first_index`` is used only when the directory holds no segment. ``test_only_syscalls``
        substitutes the write/fsync calls, for fault-injection tests.
        """
        if segment_bytes_max < SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 1:
            raise ValueError(f"segment_bytes_max too small: {segment_bytes_max}")
        if first_index < 1:
            raise ValueError(f"first_index must be >= 1, got {first_index}")
        started = time.monotonic()
        path = Path(directory)
        make_dirs_durable(path)
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BlockingIOError(errno.EWOULDBLOCK, f"WAL {path} is open elsewhere") from None
            syscalls = test_only_syscalls or Syscalls()
            wal, report = cls._recover(path, dir_fd, segment_bytes_max, first_index, syscalls)
        except BaseException:
            os.close(dir_fd)
            raise
        report = dataclasses.replace(report, elapsed_s=time.monotonic() - started)
        log.info(
            "wal recovered dir=%s segments=%d records=%d bytes=%d first=%d last=%d "
            "torn_tail_bytes=%d elapsed_s=%.3f",
            path, report.segments, report.records, report.bytes_scanned, report.first_index,
            report.last_index, report.torn_tail_bytes, report.elapsed_s,
        )  # fmt: skip
        return wal, report

    @classmethod
    def _recover(
        cls, path: Path, dir_fd: int, segment_bytes_max: int, first_index: int, sys: Syscalls
    ) -> tuple[WriteAheadLog, RecoveryReport]:
        names = {
            int(m[1]): path / m[0] for p in path.iterdir() if (m := _SEGMENT_NAME.match(p.name))
        }
        temps = [p for p in path.iterdir() if p.name.endswith(".wal" + TEMP_SUFFIX)]
        segments: list[_Segment] = []
        scanned, tail_data = 0, b""
        for first in sorted(names):  # read-only until every check has passed
            segment = _Segment(first_index=first, path=names[first])
            if segments and segments[-1].first_index + segments[-1].records != first:
                expected = segments[-1].first_index + segments[-1].records
                raise CorruptLogError(segment.path, 0, f"gap in the log: expected {expected}")
            tail_data = segment.path.read_bytes()
            scanned += len(tail_data)
            segment.records, segment.size, offsets = scan_segment(segment.path, first, tail_data)
            segment.offsets.extend(offsets)
            if segment.size < len(tail_data) and first != max(names):
                raise CorruptLogError(segment.path, segment.size, "bad record in a closed segment")
            if segment.size < len(tail_data):
                check_torn_tail(segment.path, tail_data, segment.size)
            segments.append(segment)
        for temp in temps:  # never renamed into place, so never part of the log
            temp.unlink()
        torn_file: Path | None = None
        torn_bytes = len(tail_data) - segments[-1].size if segments else 0
        if torn_bytes:
            tail = segments[-1]
            side = tail.path.with_name(f"{tail.path.name}.torn-{tail.size}")
            torn_file = set_aside(side, tail_data[tail.size :])
            os.truncate(tail.path, tail.size)  # made durable by the fdatasync below
            log.warning(
                "wal torn tail cut file=%s offset=%d bytes=%d side_file=%s",
                tail.path, tail.size, torn_bytes, torn_file,
            )  # fmt: skip
        if temps:
            sys.fsync(dir_fd)
        if segments:
            fd = os.open(segments[-1].path, os.O_WRONLY | os.O_CLOEXEC)
        else:
            segment, fd = _create_segment(path, first_index, sys)
            segments.append(segment)
        try:
            sys.fdatasync(fd)  # a crashed process's unsynced bytes may sit only in the page cache
        except OSError as exc:
            os.close(fd)
            if is_disk_full(exc):
                raise disk_full_error(exc, f"syncing {segments[-1].path}") from exc
            raise
        wal = cls(path, dir_fd, segments, fd, segment_bytes_max=segment_bytes_max, syscalls=sys)
        report = RecoveryReport(
            directory=str(path),
            segments=len(segments),
            records=sum(s.records for s in segments),
            bytes_scanned=scanned,
            first_index=wal.first_index,
            last_index=wal.last_index,
            torn_tail_bytes=torn_bytes,
            torn_tail_file=str(torn_file) if torn_file else None,
            torn_tail_segment=str(segments[-1].path) if torn_file else None,
            torn_tail_offset=segments[-1].size if torn_file else None,
            temp_files_removed=len(temps),
            elapsed_s=0.0,
        )
        return wal, report

    # ---------------------------------------------------------------- appending and syncing

    def append(self, payload: bytes) -> int:
        """Write one record to the page cache and return its index (see ``append_many``)."""
        return self.append_many((payload,))

    def append_many(self, payloads: Sequence[bytes], *, rotate: bool = True) -> int:
        """Write records with one write and return the last index; all or nothing. Raises
        DiskFullError (log unchanged), LogFailedError, ValueError (payload not 1..16 MiB), and
        with ``rotate=False`` SegmentFullError instead of rotating (which fsyncs) itself."""
        if not payloads:
            return self.last_index
        frame, lengths = encode_records(payloads)
        while True:
            with self._lock:
                self._check_writable()
                tail = self._segments[-1]
                if not self._must_rotate(len(frame)):
                    offset = tail.size
                    try:
                        write_all(self._fd, frame, offset, self._sys.pwrite)
                    except OSError as exc:
                        raise self._undo_write(offset, exc) from exc
                    tail.add(offset, lengths)
                    self.last_index += len(lengths)
                    self._unsynced.append((frame, lengths))
                    return self.last_index
            if not rotate:
                raise SegmentFullError(f"{tail.path} is full")
            self._rotate(len(frame))

    def rotate(self) -> None:
        """Close the last segment (fdatasynced) and start the next one, unless it is empty.
        Thread-safe like ``sync``; appends wait for it."""
        self._rotate(0, force=True)

    def sync(self) -> int:
        """fdatasync all appended before the call; return the index now durable. Thread-safe.
        Raises DiskFullError (records stay appended; a later sync retries) or LogFailedError."""
        with self._sync_lock:
            with self._lock:
                self._check_open()
                if self._failure is not None:
                    self._repair()
                    return self.durable_index
                target, fd, size = self.last_index, self._fd, self._segments[-1].size
                batches = len(self._unsynced)
            if target == self.durable_index:
                return target
            try:
                self._sys.fdatasync(fd)
            except OSError as exc:
                with self._lock:
                    raise self._fail_sync(exc) from exc
            with self._lock:
                self.durable_index = target
                self._synced_size = size
                del self._unsynced[:batches]
            return target

    def _must_rotate(self, frame_bytes: int) -> bool:
        tail = self._segments[-1]
        return tail.records > 0 and tail.size + frame_bytes > self._segment_bytes_max

    def _rotate(self, frame_bytes: int, *, force: bool = False) -> None:
        with self._sync_lock, self._lock:
            self._check_writable()
            if not (self._must_rotate(frame_bytes) or (force and self._segments[-1].records)):
                return
            try:  # a closed segment must be complete, so fsync it before the next one exists
                self._sys.fdatasync(self._fd)
            except OSError as exc:
                raise self._fail_sync(exc) from exc
            self.durable_index, self._synced_size = self.last_index, self._segments[-1].size
            self._unsynced.clear()
            try:
                segment, fd = _create_segment(self._dir, self.last_index + 1, self._sys)
            except OSError as exc:
                self._failure, self._failed_for_good = exc, True
                raise LogFailedError(f"cannot create a segment in {self._dir}") from exc
            os.close(self._fd)
            self._fd, self._synced_size = fd, segment.size
            self._segments.append(segment)

    def _undo_write(self, offset: int, exc: OSError) -> Exception:
        """Cut a failed write's partial bytes; return the error to raise."""
        path = self._segments[-1].path
        try:
            os.ftruncate(self._fd, offset)
        except OSError:
            self._failure, self._failed_for_good = exc, True
            return LogFailedError(f"cannot cut a partial write from {path}")
        if is_disk_full(exc):
            return disk_full_error(exc, f"appending to {path}")
        self._failure, self._failed_for_good = exc, True
        return LogFailedError(f"write failed in {path}")

    def _fail_sync(self, exc: OSError) -> Exception:
        """After a failed fsync (both locks held): cut the in-doubt bytes; return the error."""
        tail = self._segments[-1]
        self._failure, self._failed_for_good = exc, not is_disk_full(exc)
        try:
            os.ftruncate(self._fd, self._synced_size)
        except OSError:
            self._failed_for_good = True
        tail.cut(self.durable_index - tail.first_index + 1, self._synced_size)
        log.error(
            "wal fsync failed file=%s errno=%s durable=%d last=%d",
            tail.path, exc.errno, self.durable_index, self.last_index,
        )  # fmt: skip
        return self._failure_error()

    def _repair(self) -> None:
        """Rewrite the batches a failed fsync left in doubt and fsync them (both locks held)."""
        if self._failed_for_good:
            raise self._failure_error()
        tail = self._segments[-1]
        fd = os.open(tail.path, os.O_WRONLY | os.O_CLOEXEC)
        os.close(self._fd)  # a fresh open file description carries no stale writeback error
        self._fd, offset = fd, self._synced_size
        try:
            for frame, _ in self._unsynced:
                write_all(fd, frame, offset, self._sys.pwrite)
                offset += len(frame)
            self._sys.fdatasync(fd)
        except OSError as exc:
            raise self._fail_sync(exc) from exc
        for _, lengths in self._unsynced:
            tail.add(tail.size, lengths)
        assert tail.size == offset and tail.first_index + tail.records - 1 == self.last_index
        self.durable_index, self._synced_size, self._failure = self.last_index, offset, None
        self._unsynced.clear()
        log.info("wal rewrote in-doubt records file=%s durable=%d", tail.path, self.last_index)

    # ---------------------------------------------------------------- reading

    def read_from(self, index: int) -> Iterator[tuple[int, bytes]]:
        """``(index, payload)`` for every record from ``index`` to the current ``last_index``.

        Raises ValueError unless first_index <= index <= last_index + 1; CorruptLogError
        (while iterating) if a record no longer passes its CRC.
        """
        with self._lock:
            self._check_open()
            if not self.first_index <= index <= self.last_index + 1:
                raise ValueError(f"index {index} outside {self.first_index}..{self.last_index + 1}")
            firsts = [s.first_index for s in self._segments]
            plan: _ReadPlan = []
            for segment in self._segments[max(bisect.bisect_right(firsts, index) - 1, 0) :]:
                skip = max(index - segment.first_index, 0)
                if skip < segment.records:
                    start = segment.offsets[skip // OFFSET_STRIDE]
                    plan.append(
                        (segment.path, start, skip % OFFSET_STRIDE,
                         segment.first_index + skip, segment.records - skip)
                    )  # fmt: skip
            in_file = self._segments[-1].first_index + self._segments[-1].records - 1
            pending = list(self._unsynced) if in_file < self.last_index else []  # cut by _fail_sync
        return self._read(plan, pending, in_file + 1, index)

    @staticmethod
    def _read(
        plan: _ReadPlan, pending: list[_Batch], pending_first: int, start: int
    ) -> Iterator[tuple[int, bytes]]:
        for path, offset, skip, first, count in plan:
            with path.open("rb", buffering=1 << 20) as file:
                file.seek(offset)
                for _ in range(skip):
                    offset = skip_record(file, path, offset)
                for index in range(first, first + count):
                    payload, offset = read_record(file, path, offset)
                    yield index, payload
        index = pending_first
        for frame, _ in pending:  # only after a failed fsync: records held in memory
            for payload in decode_records(frame):
                if index >= start:
                    yield index, payload
                index += 1

    # ---------------------------------------------------------------- truncation and compaction

    def truncate_after(self, index: int) -> None:
        """Drop every record after ``index`` (a Raft log conflict); durable when it returns."""
        with self._sync_lock, self._lock:
            self._check_writable()
            if not self.first_index - 1 <= index <= self.last_index:
                raise ValueError(
                    f"cannot truncate after {index}: log is {self.first_index}..{self.last_index}"
                )
            if index == self.last_index:
                return
            keep = bisect.bisect_right([s.first_index for s in self._segments], index + 1) - 1
            segment = self._segments[keep]
            try:
                cut = self._offset_of(segment, index + 1)
                if keep < len(self._segments) - 1:
                    fd = os.open(segment.path, os.O_WRONLY | os.O_CLOEXEC)
                    os.close(self._fd)
                    self._fd = fd
                    for doomed in reversed(self._segments[keep + 1 :]):  # newest first: a crash
                        doomed.path.unlink()  # midway leaves a shorter, still contiguous log
                    del self._segments[keep + 1 :]
                    self._sys.fsync(self._dir_fd)
                os.ftruncate(self._fd, cut)
                self._sys.fdatasync(self._fd)
            except OSError as exc:
                self._failure, self._failed_for_good = exc, True
                raise LogFailedError(f"truncating {segment.path} failed") from exc
            segment.cut(index + 1 - segment.first_index, cut)
            self.last_index = self.durable_index = index
            self._synced_size = cut
            self._unsynced.clear()

    def reset(self, first_index: int) -> None:
        """Drop every record; the log continues at ``first_index`` (a leader's snapshot replaced
        it). Durable when it returns. A crash midway leaves a prefix of the old log, or an empty
        directory that ``open(first_index=...)`` restarts: the owner compares ``last_index``
        with its snapshot at recovery and resets again if the log ends before it."""
        if first_index < 1:
            raise ValueError(f"first_index must be >= 1, got {first_index}")
        with self._sync_lock, self._lock:
            self._check_open()
            os.close(self._fd)
            self._fd = -1
            try:
                for segment in reversed(self._segments):  # newest first: each step leaves a prefix
                    segment.path.unlink()
                self._sys.fsync(self._dir_fd)
                segment, self._fd = _create_segment(self._dir, first_index, self._sys)
            except (OSError, DiskFullError) as exc:
                self._failure, self._failed_for_good = exc, True
                raise LogFailedError(f"resetting {self._dir} failed; restart to recover") from exc
            self._segments, self._synced_size, self._failure = [segment], segment.size, None
            self.last_index = self.durable_index = first_index - 1
            self._unsynced.clear()

    def compact_before(self, index: int) -> None:
        """Delete whole segments whose records all precede ``index`` (never the last segment).
        Thread-safe; appends wait only for the unlinks, not for the directory fsync."""
        with self._lock:
            self._check_open()
            doomed = 0
            while (
                doomed + 1 < len(self._segments) and self._segments[doomed + 1].first_index <= index
            ):
                doomed += 1
            if not doomed:
                return
            for segment in self._segments[:doomed]:  # oldest first: the log stays contiguous
                segment.path.unlink()
            del self._segments[:doomed]
        with self._sync_lock:  # not concurrently with close(), which releases the fd
            self._check_open()
            self._sys.fsync(self._dir_fd)

    def close(self) -> None:
        """Release the files and the directory lock. Does not sync: call ``sync()`` first."""
        with self._sync_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fd >= 0:
                os.close(self._fd)
            os.close(self._dir_fd)

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("WAL is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._failure is not None:
            raise self._failure_error() from self._failure

    def _failure_error(self) -> Exception:
        path = self._segments[-1].path
        if self._failed_for_good:
            return LogFailedError(f"WAL {path} failed; restart the node to recover")
        return DiskFullError(f"WAL {path} waits for space; the next sync() rewrites and retries")

    def _offset_of(self, segment: _Segment, index: int) -> int:
        position = index - segment.first_index
        if position == segment.records:
            return segment.size
        offset = segment.offsets[position // OFFSET_STRIDE]
        with segment.path.open("rb") as file:
            file.seek(offset)
            for _ in range(position % OFFSET_STRIDE):
                offset = skip_record(file, segment.path, offset)
        return offset


def _create_segment(directory: Path, first: int, sys: Syscalls) -> tuple[_Segment, int]:
    """A new empty segment whose name is durable and never names a partial header."""
    path = directory / f"{first:016d}.wal"
    try:
        atomic_write(path, segment_header(first), pwrite=sys.pwrite, fsync=sys.fsync)
    except (OSError, DiskFullError):
        path.unlink(missing_ok=True)  # renamed but not durable: must not outlive the failure
        raise
    return _Segment(first_index=first, path=path), os.open(path, os.O_WRONLY | os.O_CLOEXEC)
