"""A replica's files as recovery reads them: snapshot, hard state and write-ahead log.

A log record is the entry's term (8 bytes, little-endian) followed by its data. The hard state
(term, vote, commit) lives in ``raft-state.cbor``, replaced atomically.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cbor2

from unimeter.actors.replicated import Recovered
from unimeter.consensus.messages import HardState, LogEntry, SnapshotMeta
from unimeter.storage.fsutil import atomic_write
from unimeter.storage.snapshot import load_latest_snapshot
from unimeter.storage.wal import WriteAheadLog, segment_bytes_max_default
from unimeter.storage.walformat import CorruptLogError

_TERM = struct.Struct("<Q")
HARD_STATE_FILE = "raft-state.cbor"


def encode_record(term: int, data: bytes) -> bytes:
    return _TERM.pack(term) + data


def recover_replica(
    directory: Path, *, segment_bytes_max: int = segment_bytes_max_default
) -> tuple[WriteAheadLog, Recovered, bytes | None]:
    """Read a replica's snapshot, hard state and log. Returns the open WAL, what Raft needs,
    and the snapshot's application bytes (None without a snapshot)."""
    directory.mkdir(parents=True, exist_ok=True)
    meta: SnapshotMeta | None = None
    app: bytes | None = None
    snap = load_latest_snapshot(directory)
    if snap is not None:
        term, members, app = cbor2.loads(snap[1])
        meta = SnapshotMeta(index=snap[0], term=term, members=tuple(members))
    hard = HardState()
    path = directory / HARD_STATE_FILE
    if path.exists():
        term, vote, commit = cbor2.loads(path.read_bytes())
        hard = HardState(term=term, vote=vote, commit=commit)
    first = meta.index + 1 if meta else 1
    wal, _ = WriteAheadLog.open(directory, first_index=first, segment_bytes_max=segment_bytes_max)
    if wal.last_index < first - 1:
        # A crash during a snapshot install: the log ends before the snapshot; start after it.
        wal.reset(first)
    if wal.first_index > first:  # compacted past every snapshot still readable: a hole
        wal.close()
        raise CorruptLogError(
            directory, 0, f"the log starts at index {wal.first_index} but no readable snapshot "
            f"reaches index {wal.first_index - 1} (snapshot files missing or damaged)",
        )  # fmt: skip
    entries = tuple(
        LogEntry(term=_TERM.unpack_from(data)[0], index=index, data=bytes(data[8:]))
        for index, data in wal.read_from(max(wal.first_index, first))
    )
    if meta is not None and hard.commit < meta.index:
        hard = HardState(term=hard.term, vote=hard.vote, commit=meta.index)
    if entries and hard.commit > entries[-1].index:
        hard = HardState(term=hard.term, vote=hard.vote, commit=entries[-1].index)
    return wal, Recovered(hard_state=hard, entries=entries, snapshot=meta), app


def save_hard_state(directory: Path, hs: HardState) -> None:
    atomic_write(directory / HARD_STATE_FILE, cbor2.dumps([hs.term, hs.vote, hs.commit]))
