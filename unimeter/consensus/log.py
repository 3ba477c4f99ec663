"""The in-memory Raft log: the entries after the last snapshot.

The log is a snapshot base (``snapshot_index``, ``snapshot_term``) followed by consecutive
entries. Entries at or below the base are gone from memory; only their last term is known.
Durability is not tracked here: the core decides what is stable (see raft.py).

Between the base and the entries held in full there may be *released* entries: applied ones
whose payload no member will be sent (a group of one member has no one to send them to), kept
as their terms only (``release``). They are still in the log -- terms, matching and the
snapshot policy see them -- but their payloads are on disk only, which in a lone member saves
holding every applied batch in memory until the next snapshot.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from unimeter.consensus.messages import LogEntry, SnapshotMeta


class RaftLog:
    def __init__(self, snapshot: SnapshotMeta | None, entries: Sequence[LogEntry]) -> None:
        self._snap_index = snapshot.index if snapshot is not None else 0
        self._snap_term = snapshot.term if snapshot is not None else 0
        self._entries: list[LogEntry] = []
        # Terms of the released entries, ``_snap_index + 1`` up to ``_held_from - 1``.
        self._released = array("q")
        self._held_from = self._snap_index + 1  # the first index whose entry is held in full
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
        """The first index after the snapshot base (may be ``last_index + 1`` if none is)."""
        return self._snap_index + 1

    @property
    def held_from(self) -> int:
        """The first index whose entry is held in full (payload included)."""
        return self._held_from

    @property
    def last_term(self) -> int:
        if self._entries:
            return self._entries[-1].term
        return self._released[-1] if self._released else self._snap_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; None when compacted away or beyond the end."""
        if index >= self._held_from:
            if index > self.last_index:
                return None
            return self._entries[index - self._held_from].term
        if index > self._snap_index:
            return self._released[index - self._snap_index - 1]
        return self._snap_term if index == self._snap_index else None

    def matches(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def entry(self, index: int) -> LogEntry:
        assert self._held_from <= index <= self.last_index, index
        return self._entries[index - self._held_from]

    def entries_from(self, lo: int) -> tuple[LogEntry, ...]:
        assert lo >= self._held_from, (lo, self._held_from)
        return tuple(self._entries[lo - self._held_from :])

    def span(self, lo: int, hi: int) -> tuple[LogEntry, ...]:
        """Entries ``lo..hi`` (inclusive), both held in full."""
        assert self._held_from <= lo and hi <= self.last_index, (lo, hi, self._held_from)
        return tuple(self._entries[lo - self._held_from : hi - self._held_from + 1])

    def slice(self, lo: int, hi: int, *, count_max: int, bytes_max: int) -> tuple[LogEntry, ...]:
        """Entries ``lo..hi`` (inclusive), cut to the limits but never empty if any exist."""
        assert lo >= self._held_from, (lo, self._held_from)
        hi = min(hi, self.last_index, lo + count_max - 1)
        out: list[LogEntry] = []
        total = 0
        for i in range(lo - self._held_from, hi - self._held_from + 1):
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
        while i > self._snap_index:
            found = self.term_at(i)
            assert found is not None
            if found <= term:
                break
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
        # Released entries are applied, so committed: no leader replaces them.
        assert self._held_from <= first <= self.last_index + 1, (first, self._held_from)
        prev_term = self.term_at(first - 1)
        assert prev_term is not None
        self._check_sequence(entries, first - 1, prev_term)
        del self._entries[first - self._held_from :]
        self._entries.extend(entries)
        self.last_index = entries[-1].index

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (which a snapshot now holds) from memory."""
        assert self._snap_index < index <= self.last_index, (index, self._snap_index)
        term = self.term_at(index)
        assert term is not None
        released = min(index, self._held_from - 1) - self._snap_index
        del self._released[:released]
        if index >= self._held_from:
            del self._entries[: index - self._held_from + 1]
            self._held_from = index + 1
        self._snap_index, self._snap_term = index, term

    def release(self, index: int) -> None:
        """Drop the payloads of the entries up to ``index`` from memory, keeping their terms.

        The caller vouches that no one will ask for them again: they are applied and no member
        will be sent them (see the module's docstring).
        """
        count = min(index, self.last_index) - self._held_from + 1
        if count <= 0:
            return
        self._released.extend([e.term for e in self._entries[:count]])
        del self._entries[:count]
        self._held_from += count

    def restore(self, meta: SnapshotMeta) -> None:
        """Replace the whole log with a snapshot that does not match it."""
        self._entries = []
        self._released = array("q")
        self._snap_index, self._snap_term = meta.index, meta.term
        self._held_from = meta.index + 1
        self.last_index = meta.index
