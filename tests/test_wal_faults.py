"""The write-ahead log under faults: disk full and I/O errors injected at every syscall, a
really full filesystem where one can be mounted, the order of writes and syncs, and sync()
running in another thread while the owner appends."""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.test_wal import contents, payload, segments
from unimeter.storage.diskspace import DiskSpaceWatch
from unimeter.storage.wal import DiskFullError, LogFailedError, Syscalls, WriteAheadLog

# ------------------------------------------------------------------------ disk full and I/O faults


class Faults:
    """Counts the log's syscalls and fails them: from call ``fail_at`` on, or once more than
    ``capacity_bytes`` would have been written (a simulated filesystem). A failing pwrite first
    writes half its buffer, as a real one can before it reports ENOSPC."""

    def __init__(self, *, fail_at: int | None = None, capacity_bytes: int | None = None) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self.capacity_bytes = capacity_bytes
        self.written = 0
        self.errno = errno.ENOSPC
        self.failures = 0

    def syscalls(self) -> Syscalls:
        return Syscalls(pwrite=self.pwrite, fdatasync=self.sync, fsync=self.sync)

    def _failing(self, size: int = 0) -> bool:
        self.calls += 1
        over = self.capacity_bytes is not None and self.written + size > self.capacity_bytes
        failing = over or (self.fail_at is not None and self.calls >= self.fail_at)
        self.failures += failing
        return failing

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        if self._failing(len(data)):
            os.pwrite(fd, data[: len(data) // 2], offset)
            raise OSError(self.errno, os.strerror(self.errno))
        self.written += len(data)
        return os.pwrite(fd, data, offset)

    def sync(self, fd: int) -> None:
        if self._failing():
            raise OSError(self.errno, os.strerror(self.errno))
        os.fsync(fd)


def append_and_sync_until_full(
    wal: WriteAheadLog, records: list[bytes]
) -> tuple[list[bytes], list[bytes]]:
    """Append then sync each record until the disk fills; return (appended, acknowledged)."""
    appended: list[bytes] = []
    acknowledged: list[bytes] = []
    for record in records:
        try:
            wal.append(record)
            appended.append(record)
            acknowledged = appended[: wal.sync() - wal.first_index + 1]
        except DiskFullError:
            break
    return appended, acknowledged


def test_disk_full_at_every_syscall_leaves_exactly_what_was_acknowledged(tmp_path: Path) -> None:
    records = [payload(i) for i in range(1, 13)]
    clean = Faults()
    wal, _ = WriteAheadLog.open(
        tmp_path / "clean", segment_bytes_max=160, test_only_syscalls=clean.syscalls()
    )
    with wal:
        assert append_and_sync_until_full(wal, records) == (records, records)
    assert len(segments(tmp_path / "clean")) > 4  # the story includes rotations
    for fail_at in range(1, clean.calls + 1):
        for space_returns in (False, True):
            directory = tmp_path / f"{fail_at}-{space_returns}"
            faults = Faults(fail_at=fail_at)
            try:
                wal, _ = WriteAheadLog.open(
                    directory, segment_bytes_max=160, test_only_syscalls=faults.syscalls()
                )
            except DiskFullError:  # the new log's first segment could not be made durable
                assert contents(directory) == []
                continue
            appended, acknowledged = append_and_sync_until_full(wal, records)
            assert faults.failures and acknowledged == appended[: len(acknowledged)]
            if space_returns:
                faults.fail_at = None
                assert wal.sync() == wal.last_index  # rewrites whatever a failed fsync cut
                for record in records[len(appended) :]:
                    wal.append(record)
                wal.sync()
                acknowledged = records
            wal.close()
            wal, report = WriteAheadLog.open(directory)
            wal.close()
            assert report.torn_tail_bytes == 0  # a failed append left no partial record behind
            assert contents(directory) == acknowledged, (fail_at, space_returns)


def test_failed_fsync_cuts_in_doubt_bytes_and_the_next_sync_rewrites_them(tmp_path: Path) -> None:
    faults = Faults()
    wal, _ = WriteAheadLog.open(tmp_path, test_only_syscalls=faults.syscalls())
    segment = segments(tmp_path)[-1]
    with wal:
        wal.append_many([b"one", b"two", b"three"])
        wal.sync()
        durable_size = segment.stat().st_size
        wal.append_many([b"four", b"five"])
        faults.fail_at = faults.calls + 1
        for _ in range(2):  # the disk stays full: every retry fails the same clean way
            with pytest.raises(DiskFullError):
                wal.sync()
            assert segment.stat().st_size == durable_size  # nobody may take them for durable
            assert (wal.durable_index, wal.last_index) == (3, 5)
        with pytest.raises(DiskFullError):
            wal.append(b"six")  # backpressure until the in-doubt records are safe
        assert [p for _, p in wal.read_from(2)] == [b"two", b"three", b"four", b"five"]
        faults.fail_at = None
        assert wal.sync() == 5 == wal.durable_index
        assert wal.append(b"six") == 6
        wal.sync()
    assert contents(tmp_path) == [b"one", b"two", b"three", b"four", b"five", b"six"]


def test_other_io_errors_fail_the_log_for_good(tmp_path: Path) -> None:
    for failing_call in ("sync", "append"):
        directory = tmp_path / failing_call
        faults = Faults()
        wal, _ = WriteAheadLog.open(directory, test_only_syscalls=faults.syscalls())
        wal.append(b"safe")
        wal.sync()
        wal.append(b"in doubt")
        faults.errno, faults.fail_at = errno.EIO, faults.calls + 1
        with pytest.raises(LogFailedError):
            wal.sync() if failing_call == "sync" else wal.append(b"never")
        faults.fail_at = None
        expected = [b"safe"] if failing_call == "sync" else [b"safe", b"in doubt"]
        assert [p for _, p in wal.read_from(1)] == [b"safe", b"in doubt"]  # still readable
        with pytest.raises(LogFailedError):
            wal.append(b"x")
        with pytest.raises(LogFailedError):
            wal.sync()
        with pytest.raises(LogFailedError):
            wal.truncate_after(0)
        wal.close()
        assert contents(directory) == expected


def test_a_failed_reset_fails_the_log_and_a_reopen_finishes_it(tmp_path: Path) -> None:
    faults = Faults()
    wal, _ = WriteAheadLog.open(
        tmp_path, segment_bytes_max=160, test_only_syscalls=faults.syscalls()
    )
    wal.append_many([payload(i) for i in range(1, 9)])
    wal.sync()
    faults.fail_at = faults.calls + 1  # the directory fsync after the unlinks
    with pytest.raises(LogFailedError):
        wal.reset(100)
    with pytest.raises(LogFailedError):
        wal.append(b"x")
    wal.close()
    wal, report = WriteAheadLog.open(tmp_path, first_index=100)  # what the owner does next
    with wal:
        assert (report.first_index, report.last_index) == (100, 99)
        assert wal.append(b"y") == 100


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path | None]:
    """A 256 KiB tmpfs if this machine lets us mount one (root in a sandbox usually can)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)]
    try:
        mounted = subprocess.run(command, capture_output=True, check=False).returncode == 0
    except OSError:
        mounted = False
    yield mount_point if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_really_full_disk_answers_disk_full_and_recovers(
    small_filesystem: Path | None, tmp_path: Path
) -> None:
    """On a real tiny filesystem when one can be mounted; otherwise the same story runs against
    a simulated 256 KiB disk through the fault hook, so this test always checks something."""
    root = small_filesystem or tmp_path / "simulated"
    faults = Faults() if small_filesystem else Faults(capacity_bytes=192 << 10)
    filler = root / "filler"
    filler.parent.mkdir(exist_ok=True)
    filler.write_bytes(b"\xaa" * (64 << 10))
    watch = DiskSpaceWatch(root, reserve_bytes=32 << 10)
    records = [i.to_bytes(4, "little") * 250 for i in range(1000)]  # 1000 B each, ~1 MB total
    options = {"segment_bytes_max": 32 << 10, "test_only_syscalls": faults.syscalls()}
    wal, _ = WriteAheadLog.open(root / "log", **options)  # type: ignore[arg-type]
    appended, acknowledged = append_and_sync_until_full(wal, records)
    assert 50 < len(acknowledged) < len(records) and acknowledged == appended
    assert not small_filesystem or not watch.check()  # a real disk reports itself under reserve
    wal.close()
    assert contents(root / "log") == acknowledged  # reopens fine, nothing lost, nothing partial
    filler.unlink()
    if faults.capacity_bytes is not None:
        faults.capacity_bytes += 64 << 10
    assert watch.check() or not small_filesystem
    wal, _ = WriteAheadLog.open(root / "log", **options)  # type: ignore[arg-type]
    with wal:
        assert wal.append(b"space is back") == len(acknowledged) + 1
        wal.sync()
    assert contents(root / "log") == [*acknowledged, b"space is back"]


def test_disk_space_watch(tmp_path: Path) -> None:
    assert DiskSpaceWatch(tmp_path, reserve_bytes=0).check()
    watch = DiskSpaceWatch(tmp_path, reserve_bytes=1 << 62)
    assert watch.free_bytes == -1 and not watch.check()
    assert abs(watch.free_bytes - shutil.disk_usage(tmp_path).free) < 64 << 20
    with pytest.raises(ValueError):
        DiskSpaceWatch(tmp_path, reserve_bytes=-1)


class Recorder:
    """Syscalls that log which file each write and sync touched, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.during_fdatasync: list[Callable[[], object]] = []  # run once each, mid-fsync

    def syscalls(self) -> Syscalls:
        return Syscalls(pwrite=self.pwrite, fdatasync=self.fdatasync, fsync=self.fsync)

    def _log(self, call: str, fd: int) -> None:
        self.events.append((call, Path(os.readlink(f"/proc/self/fd/{fd}")).name))

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        self._log("pwrite", fd)
        return os.pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        self._log("fdatasync", fd)
        os.fdatasync(fd)
        while self.during_fdatasync:
            self.during_fdatasync.pop()()

    def fsync(self, fd: int) -> None:
        self._log("fsync", fd)
        os.fsync(fd)


def test_a_segment_is_synced_before_the_next_one_exists(tmp_path: Path) -> None:
    recorder = Recorder()
    wal, _ = WriteAheadLog.open(
        tmp_path, segment_bytes_max=160, test_only_syscalls=recorder.syscalls()
    )
    with wal:
        for i in range(1, 13):
            wal.append(payload(i))  # no sync(): only rotation may fsync
    names = [s.name for s in segments(tmp_path)]
    assert len(names) > 4
    for closed, following in itertools.pairwise(names):
        last_write = max(i for i, e in enumerate(recorder.events) if e == ("pwrite", closed))
        synced = recorder.events.index(("fdatasync", closed), last_write)
        created = recorder.events.index(("pwrite", following + ".tmp"))
        named = recorder.events.index(("fsync", tmp_path.name), created)  # its name is durable
        assert last_write < synced < created < named
    reopened = Recorder()
    wal, _ = WriteAheadLog.open(tmp_path, test_only_syscalls=reopened.syscalls())
    wal.close()  # what a crashed process left in the page cache is made durable at open
    assert reopened.events == [("fdatasync", names[-1])]


def test_sync_covers_only_what_was_appended_before_it_started(tmp_path: Path) -> None:
    recorder = Recorder()
    wal, _ = WriteAheadLog.open(tmp_path, test_only_syscalls=recorder.syscalls())
    with wal:
        wal.append_many([b"a", b"b"])
        recorder.during_fdatasync.append(lambda: wal.append(b"raced"))
        assert wal.sync() == 2 == wal.durable_index
        assert wal.last_index == 3
        assert wal.sync() == 3


# ------------------------------------------------------------------------ threads


def test_sync_in_another_thread_while_appending(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=4096)  # rotations race with syncs
    done = threading.Event()
    results: list[int] = []
    errors: list[BaseException] = []

    def sync_until_done() -> None:
        try:
            while not done.is_set():
                results.append(wal.sync())
            results.append(wal.sync())
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    syncer = threading.Thread(target=sync_until_done)
    syncer.start()
    index = 0
    while index < 3000:
        batch = [payload(i) for i in range(index + 1, index + 1 + index % 4 + 1)]
        index = wal.append_many(batch) if len(batch) > 1 else wal.append(batch[0])
        assert wal.durable_index <= wal.last_index == index
    done.set()
    syncer.join()
    wal.close()
    assert not errors
    assert results == sorted(results) and results[-1] == index and len(set(results)) > 10
    assert contents(tmp_path) == [payload(i) for i in range(1, index + 1)]
