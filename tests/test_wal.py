"""The write-ahead log on real files with real fsync: round trips, truncation, compaction and
recovery from torn tails and corruption. Crash states are made by editing a closed log's files
(a torn write is a truncated or junk-extended last segment). Faults and threads are in
``test_wal_faults.py``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unimeter.storage import walformat
from unimeter.storage.wal import (
    CorruptLogError,
    WriteAheadLog,
)
from unimeter.storage.walformat import RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, record_bytes_max


def payload(i: int) -> bytes:
    return f"record-{i:05d};".encode() * (1 + i % 7)  # 14..98 bytes, distinct per index


def write_log(directory: Path, count: int, *, segment_bytes_max: int = 256) -> None:
    wal, _ = WriteAheadLog.open(directory, segment_bytes_max=segment_bytes_max)
    with wal:
        for i in range(1, count + 1, 3):  # mix single appends and batches
            wal.append(payload(i))
            wal.append_many([payload(j) for j in range(i + 1, min(i + 3, count + 1))])
        assert wal.sync() == count


def contents(directory: Path, segment_bytes_max: int = 1 << 20) -> list[bytes]:
    wal, _ = WriteAheadLog.open(directory, segment_bytes_max=segment_bytes_max)
    with wal:
        records = list(wal.read_from(wal.first_index))
    assert [i for i, _ in records] == list(range(wal.first_index, wal.last_index + 1))
    return [p for _, p in records]


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def record_offsets(path: Path) -> list[int]:
    data, offsets, offset = path.read_bytes(), [], SEGMENT_HEADER_BYTES
    while offset < len(data):
        offsets.append(offset)
        offset += RECORD_HEADER_BYTES + int.from_bytes(data[offset : offset + 4], "little")
    return offsets


# ------------------------------------------------------------------------ round trips


def test_round_trip_across_many_small_segments(tmp_path: Path) -> None:
    write_log(tmp_path, 60)
    assert len(segments(tmp_path)) > 10
    for segment in segments(tmp_path):  # only a lone over-sized batch may exceed the bound
        assert segment.stat().st_size <= 256 or len(record_offsets(segment)) <= 2
    wal, report = WriteAheadLog.open(tmp_path, segment_bytes_max=256)
    with wal:
        assert (report.records, report.first_index, report.last_index) == (60, 1, 60)
        assert report.torn_tail_bytes == 0 and report.torn_tail_file is None
        assert wal.durable_index == wal.last_index == 60
        assert wal.append(payload(61)) == 61
        wal.sync()
    assert contents(tmp_path) == [payload(i) for i in range(1, 62)]


def test_indexes_durability_and_batches(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path / "log", first_index=101)
    with wal:
        assert (wal.first_index, wal.last_index, wal.durable_index) == (101, 100, 100)
        assert wal.append_many([]) == 100
        assert wal.append(b"a") == 101
        assert wal.append_many([b"b", b"c", b"d"]) == 104
        assert wal.durable_index == 100  # append never syncs
        assert wal.sync() == 104 == wal.durable_index
        assert wal.sync() == 104
        with pytest.raises(ValueError):
            wal.append(b"")  # a zero length is reserved: zeroed space must never parse
        with pytest.raises(ValueError):
            wal.append_many([b"ok", b"\0" * (record_bytes_max + 1)])
        assert wal.last_index == 104  # the rejected batch left nothing behind
    wal, _ = WriteAheadLog.open(tmp_path / "log", first_index=1)  # ignored: segments exist
    with wal:
        assert (wal.first_index, wal.last_index) == (101, 104)
        with pytest.raises(BlockingIOError):
            WriteAheadLog.open(tmp_path / "log")  # one owner per directory
    with pytest.raises(ValueError):
        wal.append(b"x")
    wal.close()  # closing twice is harmless


def test_oversized_batch_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=100)
    with wal:
        wal.append(b"small")
        wal.append_many([b"x" * 150, b"y" * 150])
        wal.append(b"after")
        wal.sync()
    assert [len(record_offsets(s)) for s in segments(tmp_path)] == [1, 2, 1]
    assert contents(tmp_path) == [b"small", b"x" * 150, b"y" * 150, b"after"]


def test_read_from_every_index(tmp_path: Path) -> None:
    expected = [payload(i) for i in range(1, 301)]
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=8192)  # > OFFSET_STRIDE per segment
    with wal:
        wal.append_many(expected[:150])
        for item in expected[150:]:
            wal.append(item)
        for index in range(1, 302):
            assert [p for _, p in wal.read_from(index)] == expected[index - 1 :]
        reader = wal.read_from(299)
        wal.append(b"later")  # an iterator covers the records present when it was made
        assert [i for i, _ in reader] == [299, 300]
        for bad in (0, 303):
            with pytest.raises(ValueError):
                wal.read_from(bad)


# ------------------------------------------------------------------------ truncation, compaction


def test_truncate_after_every_index_then_reopen(tmp_path: Path) -> None:
    write_log(tmp_path / "base", 30, segment_bytes_max=200)
    for index in range(0, 31):
        directory = tmp_path / f"cut{index}"
        shutil.copytree(tmp_path / "base", directory)
        wal, _ = WriteAheadLog.open(directory, segment_bytes_max=200)
        with wal:
            wal.truncate_after(index)
            assert wal.last_index == wal.durable_index == index
            assert wal.append(b"new") == index + 1  # appends continue after the cut
            wal.sync()
        assert contents(directory) == [payload(i) for i in range(1, index + 1)] + [b"new"]
    wal, _ = WriteAheadLog.open(tmp_path / "base", segment_bytes_max=200)
    with wal:
        for bad in (-1, 31):
            with pytest.raises(ValueError):
                wal.truncate_after(bad)
        wal.truncate_after(30)  # nothing after the last record: no change
    assert contents(tmp_path / "base") == [payload(i) for i in range(1, 31)]


def test_compact_before_then_reopen(tmp_path: Path) -> None:
    write_log(tmp_path, 40)
    firsts = [int(s.name[:16]) for s in segments(tmp_path)]
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=256)
    with wal:
        wal.compact_before(firsts[1])  # exactly the first segment's records precede it
        assert wal.first_index == firsts[1]
        wal.compact_before(firsts[3] + 1)
        assert wal.first_index == firsts[3]
        with pytest.raises(ValueError):
            wal.read_from(firsts[3] - 1)
        wal.compact_before(10_000)  # never the last segment: the log keeps a place to append
        assert wal.first_index == firsts[-1] and wal.last_index == 40
        wal.truncate_after(wal.first_index - 1)  # emptied down to its first index
        assert wal.append(b"z") == firsts[-1]
        wal.sync()
    assert contents(tmp_path) == [b"z"]
    wal, report = WriteAheadLog.open(tmp_path)
    with wal:
        assert (report.first_index, report.last_index) == (firsts[-1], firsts[-1])


def test_reset_restarts_the_log_after_a_snapshot(tmp_path: Path) -> None:
    write_log(tmp_path, 40)
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=256)
    with wal:
        wal.reset(501)  # a leader's snapshot at 500 replaced everything
        assert (wal.first_index, wal.last_index, wal.durable_index) == (501, 500, 500)
        assert list(wal.read_from(501)) == []
        assert wal.append(b"after the snapshot") == 501
        wal.sync()
        with pytest.raises(ValueError):
            wal.reset(0)
    assert [s.name for s in segments(tmp_path)] == ["0000000000000501.wal"]
    assert contents(tmp_path) == [b"after the snapshot"]
    wal, report = WriteAheadLog.open(tmp_path, first_index=7)
    wal.close()
    assert (report.first_index, report.last_index) == (501, 501)


# ------------------------------------------------------------------------ recovery: torn tails


def test_torn_tail_at_every_cut_point_of_the_last_record(tmp_path: Path) -> None:
    write_log(tmp_path / "base", 20, segment_bytes_max=300)
    last = segments(tmp_path / "base")[-1]
    start = record_offsets(last)[-1]
    whole = last.read_bytes()
    for cut in range(start + 1, len(whole)):
        directory = tmp_path / f"cut{cut}"
        shutil.copytree(tmp_path / "base", directory)
        segment = directory / last.name
        os.truncate(segment, cut)
        wal, report = WriteAheadLog.open(directory, segment_bytes_max=300)
        with wal:
            assert report.last_index == 19 and report.torn_tail_bytes == cut - start
            assert report.torn_tail_offset == start and report.torn_tail_segment == str(segment)
            assert Path(str(report.torn_tail_file)).read_bytes() == whole[start:cut]
            assert segment.stat().st_size == start
            assert wal.append(b"next") == 20
            wal.sync()
        assert contents(directory) == [payload(i) for i in range(1, 20)] + [b"next"]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=12),
    tail=st.one_of(
        st.binary(min_size=1, max_size=64).filter(lambda b: b[:4] != b"\0\0\0\0"),
        st.integers(1, 5000).map(lambda n: b"\0" * n),  # file extended, data never landed
    ),
)
def test_garbage_or_zeros_after_the_last_record_is_a_torn_tail(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], tail: bytes
) -> None:
    directory = tmp_path_factory.mktemp("wal")
    records = [bytes([n % 251]) * n for n in sizes]
    wal, _ = WriteAheadLog.open(directory)
    with wal:
        wal.append_many(records)
        wal.sync()
    with segments(directory)[-1].open("ab") as file:
        file.write(tail)
    wal, report = WriteAheadLog.open(directory)
    with wal:
        assert report.torn_tail_bytes == len(tail) and wal.last_index == len(records)
    assert contents(directory) == records


def test_a_second_torn_tail_at_the_same_offset_keeps_both_side_files(tmp_path: Path) -> None:
    write_log(tmp_path, 3)
    for garbage in (b"\x05\0\0\0first", b"\x05\0\0\0other"):
        with segments(tmp_path)[-1].open("ab") as file:
            file.write(garbage)
        wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=256)
        wal.close()
    sides = sorted(p.read_bytes() for p in tmp_path.glob("*.torn-*"))
    assert sides == [b"\x05\0\0\0first", b"\x05\0\0\0other"]


# ------------------------------------------------------------------------ recovery: corruption


def assert_refused(
    directory: Path, path: Path, offset: int, segment_bytes_max: int = 1 << 20
) -> CorruptLogError:
    before = files(directory)
    with pytest.raises(CorruptLogError) as caught:
        WriteAheadLog.open(directory, segment_bytes_max=segment_bytes_max)
    assert (caught.value.path, caught.value.offset) == (str(path), offset)
    assert str(path) in str(caught.value) and str(offset) in str(caught.value)
    assert files(directory) == before  # refused without touching a byte
    return caught.value


def test_a_bit_flip_before_valid_records_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path / "base", 40, segment_bytes_max=4096)  # one segment: the last one
    segment = segments(tmp_path / "base")[-1]
    victim = record_offsets(segment)[20]
    length = int.from_bytes(segment.read_bytes()[victim : victim + 4], "little")
    for position in range(victim, victim + RECORD_HEADER_BYTES + length):  # length, crc, payload
        for bit in (0, 5, 7):
            directory = tmp_path / f"flip{position}-{bit}"
            shutil.copytree(tmp_path / "base", directory)
            flip_bit(directory / segment.name, position, bit)
            assert_refused(directory, directory / segment.name, victim, segment_bytes_max=4096)


def test_a_flipped_length_bit_in_the_last_record_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, 5)
    segment = segments(tmp_path)[-1]
    last = record_offsets(segment)[-1]
    flip_bit(segment, last + 2, 3)  # the length now runs past EOF: looks torn, but is not
    error = assert_refused(tmp_path, segment, last)
    assert "length field damaged" in error.reason


def test_damage_confined_to_the_last_payload_is_cut_as_torn(tmp_path: Path) -> None:
    """The documented limit: indistinguishable from a torn write, so cut -- but kept aside."""
    write_log(tmp_path, 5)
    segment = segments(tmp_path)[-1]
    last = record_offsets(segment)[-1]
    flip_bit(segment, last + RECORD_HEADER_BYTES + 1)
    damaged = segment.read_bytes()[last:]
    wal, report = WriteAheadLog.open(tmp_path, segment_bytes_max=256)
    wal.close()
    assert report.last_index == 4 and Path(str(report.torn_tail_file)).read_bytes() == damaged


def test_a_bad_record_in_a_closed_segment_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, 30)
    first = segments(tmp_path)[0]
    last_record = record_offsets(first)[-1]
    flip_bit(first, len(first.read_bytes()) - 1)  # even its very last byte: closed means whole
    assert_refused(tmp_path, first, last_record)


def test_stray_or_damaged_segment_files_are_corruption(tmp_path: Path) -> None:
    write_log(tmp_path / "base", 30)
    names = [s.name for s in segments(tmp_path / "base")]
    cases = {
        "garbage": (names[1], b"this is not a WAL segment at all, no"),
        "short": (names[1], b"UMTRWAL\n"),
        "empty": (names[-1], b""),
        "stray": ("0000000000009999.wal", b"\0" * 64),
    }
    for case, (name, content) in cases.items():
        directory = tmp_path / case
        shutil.copytree(tmp_path / "base", directory)
        (directory / name).write_bytes(content)
        assert_refused(directory, directory / name, 0)
    renamed = tmp_path / "renamed"  # a valid header under the wrong name
    shutil.copytree(tmp_path / "base", renamed)
    (renamed / names[-1]).rename(renamed / "0000000000000999.wal")
    assert_refused(renamed, renamed / "0000000000000999.wal", 0)
    gap = tmp_path / "gap"
    shutil.copytree(tmp_path / "base", gap)
    (gap / names[2]).unlink()
    error = assert_refused(gap, gap / names[3], 0)
    assert "gap" in error.reason


def test_bounded_search_refuses_unless_the_tail_looks_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(walformat, "tail_search_work_max", 1)
    rng = bytes(range(1, 256)) * 40
    write_log(tmp_path / "a", 3)
    segment = segments(tmp_path / "a")[-1]
    with segment.open("ab") as file:  # fits but fails its CRC: not an interrupted write
        file.write((64).to_bytes(4, "little") + b"\xff" * 4 + rng)
    assert (
        "could not finish"
        in assert_refused(tmp_path / "a", segment, segment.stat().st_size - 8 - len(rng)).reason
    )
    write_log(tmp_path / "b", 3)
    segment = segments(tmp_path / "b")[-1]
    with segment.open("ab") as file:  # a length running past EOF: an interrupted write
        file.write((100_000).to_bytes(4, "little") + b"\xff" * 4 + rng)
    wal, report = WriteAheadLog.open(tmp_path / "b", segment_bytes_max=256)
    wal.close()
    assert report.torn_tail_bytes == 8 + len(rng)


def test_search_finds_a_record_behind_long_false_candidates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Timestamps read as lengths look like ~400 KB records; trying them first would spend the
    bound before the real record right behind them is reached."""
    monkeypatch.setattr(walformat, "tail_search_work_max", 64 << 20)
    decoys = (400_000).to_bytes(4, "little") * 5000  # 20,000 long false candidates
    record, _ = walformat.encode_records([b"the real next record"])
    data = b"\xff" * 8 + decoys + record + b"\x07" * 500_000
    found, exhausted = walformat.find_record(data, 1, len(data) - RECORD_HEADER_BYTES)
    assert (found, exhausted) == (8 + len(decoys), False)
    data = b"\xff" * 8 + decoys + b"\x07" * 500_000  # nothing real: the bound stops it
    assert walformat.find_record(data, 1, len(data) - RECORD_HEADER_BYTES) == (None, True)


def test_leftover_temp_files_are_removed_and_others_ignored(tmp_path: Path) -> None:
    write_log(tmp_path, 10)
    (tmp_path / "0000000000000011.wal.tmp").write_bytes(b"half a header")
    (tmp_path / "notes.txt").write_bytes(b"operator notes")
    wal, report = WriteAheadLog.open(tmp_path, segment_bytes_max=256)
    wal.close()
    assert report.temp_files_removed == 1 and report.last_index == 10
    assert not (tmp_path / "0000000000000011.wal.tmp").exists()
    assert (tmp_path / "notes.txt").exists()
