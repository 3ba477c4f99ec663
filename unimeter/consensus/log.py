"""The in-memory Raft log: the entries after the last snapshot.

The log is a snapshot base (``snapshot_index``, ``snapshot_term``) followed by consecutive
entries. Entries at or below the base are gone from memory; only their last term is known.
Durability is not tracked here: the core decides what is stable (see raft.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from unimeter.consensus.messages import LogEntry, SnapshotMeta


class RaftLog:
    def __init__(self, snapshot: SnapshotMeta | None, entries: Sequence[LogEntry]) -> None:
        self._snap_index = snapshot.index if snapshot is not None else 0
        self._snap_term = snapshot.term if snapshot is not None else 0
        self._entries: list[LogEntry] = []
        # Entries the WAL kept from before the snapshot are already in the snapshot.
        tail = [e for e in entries if e.index > self._snap_index]
        if tail:
            self._check_sequence(tail, self._snap_index, self._snap_term)
        self._entries = tail
        # ``_snap_index + len(_entries)``, kept as a field: the core reads it after every input.
        self.last_index = self._snap_index + len(tail)

    @staticmethod
    def _check_sequence(entries: Sequence[LogEntry], prev_index: int, prev_term: int) -> None:
        for e in entries:
            if e.index != prev_index + 1:
                raise ValueError(f"log entries not consecutive: {e.index} after {prev_index}")
            if e.term < prev_term:
                raise ValueError(f"log term goes back at index {e.index}: {e.term} < {prev_term}")
            prev_index, prev_term = e.index, e.term

    # ------------------------------------------------------------------ views

    @property
    def snapshot_index(self) -> int:
        return self._snap_index

    @property
    def snapshot_term(self) -> int:
        return self._snap_term

    @property
    def first_index(self) -> int:
        """The first index still held in memory (may be ``last_index + 1`` if none is)."""
        return self._snap_index + 1

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self._snap_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; None when compacted away or beyond the end."""
        if index == self._snap_index:
            return self._snap_term
        if index < self._snap_index or index > self.last_index:
            return None
        return self._entries[index - self._snap_index - 1].term

    def matches(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def entry(self, index: int) -> LogEntry:
        assert self._snap_index < index <= self.last_index, index
        return self._entries[index - self._snap_index - 1]

    def entries_from(self, lo: int) -> tuple[LogEntry, ...]:
        assert lo > self._snap_index, (lo, self._snap_index)
        return tuple(self._entries[lo - self._snap_index - 1 :])

    def span(self, lo: int, hi: int) -> tuple[LogEntry, ...]:
        """Entries ``lo..hi`` (inclusive), both in memory."""
        assert self._snap_index < lo and hi <= self.last_index, (lo, hi, self._snap_index)
        return tuple(self._entries[lo - self._snap_index - 1 : hi - self._snap_index])

    def slice(self, lo: int, hi: int, *, count_max: int, bytes_max: int) -> tuple[LogEntry, ...]:
        """Entries ``lo..hi`` (inclusive), cut to the limits but never empty if any exist."""
        assert lo > self._snap_index, (lo, self._snap_index)
        hi = min(hi, self.last_index, lo + count_max - 1)
        out: list[LogEntry] = []
        total = 0
        for i in range(lo - self._snap_index - 1, hi - self._snap_index):
            e = self._entries[i]
            total += e.size_bytes
            if out and total > bytes_max:
                break
            out.append(e)
        return tuple(out)

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Is a log ending at (last_index, last_term) at least as up to date as ours (§5.4.1)?"""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def find_conflict(self, entries: Sequence[LogEntry]) -> int:
        """The index of the first of ``entries`` we do not hold with the same term, or 0."""
        for e in entries:
            if self.term_at(e.index) != e.term:
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index at or below ``index`` whose term is at most ``term``.

        Every entry above it has a larger term, so it cannot match a log whose entry at
        ``index`` has ``term`` (terms never decrease along a log); probing there skips them.
        Stops at the snapshot base (whose term is the best we know), or below it if ``index``
        is already there: the caller then needs a snapshot.
        """
        i = min(index, self.last_index)
        while i > self._snap_index and self._entries[i - self._snap_index - 1].term > term:
            i -= 1
        return i

    # ------------------------------------------------------------------ changes

    def append(self, entry: LogEntry) -> None:
        assert entry.index == self.last_index + 1, (entry.index, self.last_index)
        assert entry.term >= self.last_term, (entry.term, self.last_term)
        self._entries.append(entry)
        self.last_index = entry.index

    def truncate_and_append(self, entries: Sequence[LogEntry]) -> None:
        """Replace everything from ``entries[0].index`` on with ``entries``."""
        assert entries
        first = entries[0].index
        assert self._snap_index < first <= self.last_index + 1, (first, self._snap_index)
        prev_term = self.term_at(first - 1)
        assert prev_term is not None
        self._check_sequence(entries, first - 1, prev_term)
        del self._entries[first - self._snap_index - 1 :]
        self._entries.extend(entries)
        self.last_index = entries[-1].index

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (which a snapshot now holds) from memory."""
        assert self._snap_index < index <= self.last_index, (index, self._snap_index)
        term = self.term_at(index)
        assert term is not None
        del self._entries[: index - self._snap_index]
        self._snap_index, self._snap_term = index, term

    def restore(self, meta: SnapshotMeta) -> None:
        """Replace the whole log with a snapshot that does not match it."""
        self._entries = []
        self._snap_index, self._snap_term = meta.index, meta.term
        self.last_index = meta.index
