"""Snapshot files: one applied state per file, written atomically (docs/operations.md §1).

``snapshot-{index:016d}.snap`` holds a 36-byte header, all little-endian::

    magic b"UMTRSNP\\n" | u16 version=1 | u16 flags=0 | u64 index | u64 payload length
    | u32 crc32c(payload) | u32 crc32c(the 32 header bytes before it)

followed by the opaque payload. A file is written under a temporary name, fsynced, renamed and
its directory fsynced (``fsutil.atomic_write``), so a crash leaves the old set of snapshots or
the new one, never a partial file under a snapshot name. The newest two are kept: if the newest
turns out damaged (a bad disk, a bug), the previous one plus the WAL after it still rebuild the
state -- which is also why the WAL may only be compacted up to the *older* kept snapshot.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from pathlib import Path

from crc32c import crc32c

from unimeter.storage.fsutil import (
    TEMP_SUFFIX,
    atomic_write,
    fsync_dir,
    make_dirs_durable,
    remove_durable,
)

__all__ = [
    "load_latest_snapshot",
    "publish_snapshot",
    "snapshot_header",
    "snapshot_indexes",
    "snapshot_temp_path",
    "write_snapshot",
]

log = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"UMTRSNP\n"
SNAPSHOT_VERSION = 1
_HEADER = struct.Struct("<8sHHQQI")
_HEADER_CRC = struct.Struct("<I")
SNAPSHOT_HEADER_BYTES = _HEADER.size + _HEADER_CRC.size
snapshots_kept = 2
_NAME = re.compile(r"^snapshot-(\d+)\.snap$")

assert SNAPSHOT_HEADER_BYTES == 36


def snapshot_path(directory: str | os.PathLike[str], index: int) -> Path:
    return Path(directory) / f"snapshot-{index:016d}.snap"


def snapshot_indexes(directory: str | os.PathLike[str]) -> dict[int, Path]:
    """Every file named like a snapshot, valid or not, by index."""
    folder = Path(directory)
    if not folder.is_dir():
        return {}
    return {int(m[1]): folder / m[0] for p in folder.iterdir() if (m := _NAME.match(p.name))}


def write_snapshot(
    directory: str | os.PathLike[str], index: int, data: bytes, *, prune: bool = True
) -> Path:
    """Atomically write the snapshot at ``index``; keep it and the newest older one.

    Older snapshots are deleted (durably). A snapshot with a *higher* index than ``index`` is
    left alone and logged: it can only exist if it was found damaged at load (or by a caller
    bug), and it stays as evidence. Raises DiskFullError on ENOSPC/EDQUOT, with the previous
    snapshots untouched.
    """
    if index < 0:
        raise ValueError(f"snapshot index must be >= 0, got {index}")
    make_dirs_durable(directory)
    folder = Path(directory)
    crashed = [p for p in folder.iterdir() if p.suffix == TEMP_SUFFIX and _NAME.match(p.stem)]
    remove_durable(crashed)  # temp files of writes a crash interrupted
    path = snapshot_path(folder, index)
    atomic_write(path, snapshot_header(index, len(data), crc32c(data)) + data)
    if prune:  # False while a backup holds deletions off (storage/backup.py)
        _prune(folder, index)
    return path


def snapshot_header(index: int, payload_bytes: int, payload_crc: int) -> bytes:
    """The header of a snapshot file whose payload has that length and crc32c."""
    header = _HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, index, payload_bytes, payload_crc)
    return header + _HEADER_CRC.pack(crc32c(header))


def snapshot_temp_path(directory: str | os.PathLike[str], index: int) -> Path:
    """Where a snapshot is written before :func:`publish_snapshot` renames it into place."""
    final = snapshot_path(directory, index)
    return final.with_name(final.name + TEMP_SUFFIX)


def publish_snapshot(
    directory: str | os.PathLike[str], index: int, *, prune: bool = True
) -> int | None:
    """Rename a complete, fsynced temp file (``snapshot_temp_path``) into place, durably, and
    prune like :func:`write_snapshot`. Returns the index of the older snapshot kept, if any:
    the WAL may be compacted up to it, not further (None, too, without ``prune``)."""
    folder = Path(directory)
    os.replace(snapshot_temp_path(folder, index), snapshot_path(folder, index))
    fsync_dir(folder)
    return _prune(folder, index) if prune else None


def _prune(folder: Path, index: int) -> int | None:
    """Keep ``index`` and the newest older snapshot; return that older one's index."""
    existing = snapshot_indexes(folder)
    older = sorted(i for i in existing if i < index)
    remove_durable([existing[i] for i in older[: -(snapshots_kept - 1) or None]])
    for newer in (i for i in existing if i > index):
        log.warning(
            "snapshot newer than the one just written left in place path=%s", existing[newer]
        )
    return older[-1] if older else None


def load_latest_snapshot(directory: str | os.PathLike[str]) -> tuple[int, bytes] | None:
    """``(index, payload)`` of the newest valid snapshot, or None if there is none.

    A damaged snapshot is logged and skipped in favour of the next older one.
    """
    for index, path in sorted(snapshot_indexes(directory).items(), reverse=True):
        try:
            return index, _read_valid(path, index)
        except (OSError, ValueError) as exc:
            log.warning("snapshot unusable, trying an older one path=%s reason=%s", path, exc)
    return None


def _read_valid(path: Path, index: int) -> bytes:
    data = path.read_bytes()
    if len(data) < SNAPSHOT_HEADER_BYTES:
        raise ValueError(f"{len(data)} bytes is shorter than a snapshot header")
    magic, version, _, header_index, length, payload_crc = _HEADER.unpack_from(data)
    (header_crc,) = _HEADER_CRC.unpack_from(data, _HEADER.size)
    if magic != SNAPSHOT_MAGIC or crc32c(data[: _HEADER.size]) != header_crc:
        raise ValueError("bad magic or header checksum")
    if version != SNAPSHOT_VERSION or header_index != index:
        raise ValueError(f"header says version {version}, index {header_index}")
    payload = data[SNAPSHOT_HEADER_BYTES:]
    if len(payload) != length or crc32c(payload) != payload_crc:
        raise ValueError(f"payload of {len(payload)} bytes fails its length or checksum")
    return payload
