"""Snapshot files: atomic writes, keeping the newest two, falling back past a damaged one."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unimeter.storage import fsutil
from unimeter.storage.fsutil import DiskFullError
from unimeter.storage.snapshot import (
    SNAPSHOT_HEADER_BYTES,
    load_latest_snapshot,
    snapshot_indexes,
    snapshot_path,
    write_snapshot,
)


def state(index: int) -> bytes:
    return f"applied state up to {index};".encode() * (index % 5 + 1)


def test_round_trip(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path / "snaps", 5, state(5))
    assert path == tmp_path / "snaps" / "snapshot-0000000000000005.snap"
    assert load_latest_snapshot(tmp_path / "snaps") == (5, state(5))
    assert [p.name for p in (tmp_path / "snaps").iterdir()] == [path.name]  # no temp file left
    write_snapshot(tmp_path / "snaps", 6, b"")
    assert load_latest_snapshot(tmp_path / "snaps") == (6, b"")


def test_nothing_to_load(tmp_path: Path) -> None:
    assert load_latest_snapshot(tmp_path / "missing") is None
    assert load_latest_snapshot(tmp_path) is None
    with pytest.raises(ValueError):
        write_snapshot(tmp_path, -1, b"x")


def test_keeps_the_newest_two(tmp_path: Path) -> None:
    for index in (1, 3, 4, 10, 12):
        write_snapshot(tmp_path, index, state(index))
    assert sorted(snapshot_indexes(tmp_path)) == [10, 12]
    write_snapshot(tmp_path, 12, b"rewritten")  # same index: replaced whole
    assert sorted(snapshot_indexes(tmp_path)) == [10, 12]
    assert load_latest_snapshot(tmp_path) == (12, b"rewritten")


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        del data[-3:]
    elif how == "payload bit":
        data[SNAPSHOT_HEADER_BYTES + 2] ^= 0x10
    elif how == "header bit":
        data[12] ^= 0x01
    elif how == "short":
        del data[20:]
    elif how == "renamed":  # the header's index no longer matches the name
        path.rename(path.with_name("snapshot-0000000000000099.snap"))
        return
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "payload bit", "header bit", "short", "renamed"])
def test_a_damaged_newest_falls_back_to_the_previous(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_snapshot(tmp_path, 4, state(4))
    newest = write_snapshot(tmp_path, 7, state(7))
    damage(newest, how)
    with caplog.at_level(logging.WARNING, logger="unimeter.storage.snapshot"):
        assert load_latest_snapshot(tmp_path) == (4, state(4))
    assert "snapshot unusable" in caplog.text and "snapshot-" in caplog.text


def test_all_damaged_loads_nothing(tmp_path: Path) -> None:
    for index in (1, 2):
        damage(write_snapshot(tmp_path, index, state(index)), "payload bit")
    assert load_latest_snapshot(tmp_path) is None


def test_writing_after_a_damaged_newer_snapshot_keeps_it_as_evidence(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 4, state(4))
    damage(write_snapshot(tmp_path, 9, state(9)), "payload bit")
    assert load_latest_snapshot(tmp_path) == (4, state(4))
    write_snapshot(tmp_path, 6, state(6))  # the node moved on from snapshot 4
    assert sorted(snapshot_indexes(tmp_path)) == [4, 6, 9]
    assert load_latest_snapshot(tmp_path) == (6, state(6))


def test_an_interrupted_write_leaves_the_old_snapshots(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 5, state(5))
    temp = snapshot_path(tmp_path, 8).with_suffix(".snap.tmp")
    temp.write_bytes(b"UMTRSNP\n half of a snapshot")  # a crash before the rename
    assert load_latest_snapshot(tmp_path) == (5, state(5))
    write_snapshot(tmp_path, 6, state(6))
    assert not temp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "snapshot-0000000000000005.snap",
        "snapshot-0000000000000006.snap",
    ]


def test_disk_full_leaves_the_previous_snapshots_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_snapshot(tmp_path, 3, state(3))
    write_snapshot(tmp_path, 5, state(5))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def half_then_enospc(fd: int, data: bytes, offset: int, pwrite: object = None) -> None:
        os.pwrite(fd, data[: len(data) // 2], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil, "write_all", half_then_enospc)
    with pytest.raises(DiskFullError):
        write_snapshot(tmp_path, 8, state(8) * 100)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_latest_snapshot(tmp_path) == (5, state(5))


@settings(max_examples=30, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(1, 5), st.binary(max_size=200)), min_size=1))
def test_latest_is_the_last_written(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[int, bytes]]
) -> None:
    directory = tmp_path_factory.mktemp("snaps")
    written = [0]
    for gap, data in steps:
        written.append(written[-1] + gap)
        write_snapshot(directory, written[-1], data)
        assert load_latest_snapshot(directory) == (written[-1], data)
        assert sorted(snapshot_indexes(directory)) == written[1:][-2:]
