"""A map from uint64 keys to int64 values, looked up a whole column at a time.

Theory of operation: the keys live in one sorted array (``np.searchsorted`` finds a column of
keys in one call) plus a small sorted *delta* that takes new keys. The delta is merged into the
main array once it holds more than a sixteenth of it (at least ``_DELTA_MIN``), so a new key
costs an amortised handful of element moves and a lookup costs two binary searches. It is the
columnar form of ``dict[int, int]`` at 16 bytes an entry instead of about a hundred.

Keys added a few at a time (a lone request's new account or row) first go to a *tail* of at
most ``_TAIL_MAX`` keys: rewriting the delta for each of them would cost a sixteenth of the
index per key (tens of thousands of element moves in an index of a million), where the tail
costs a few dozen and reaches the delta once per ``_TAIL_MAX`` keys. A lookup then costs up to
three binary searches, the last two only while those levels hold keys.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
U64 = np.dtype("<u8")
I64 = np.dtype("<i8")
MISSING = -1
_DELTA_MIN = 1024
_TAIL_MAX = 64


def _find(keys: Array, vals: Array, query: Array) -> Array:
    """Values of ``query`` in one sorted run (MISSING where absent)."""
    if not len(keys):
        return np.full(len(query), MISSING, I64)
    pos = np.searchsorted(keys, query)
    np.minimum(pos, len(keys) - 1, out=pos)
    return np.where(keys[pos] == query, vals[pos], MISSING)


def _merged(keys: Array, vals: Array, more_keys: Array, more_vals: Array) -> tuple[Array, Array]:
    """Two sorted runs of distinct keys (and their values) as one, in new arrays. Each new key
    lands after the old keys below it (a binary search) and the new keys before it; the old
    keys fill the other places, in order. Only the two results and a mask are written: a merge
    of the main run writes 17 bytes per key, where sorting the runs laid end to end wrote 40
    (fresh pages, each a fault, as the index grows)."""
    if not len(keys):
        return np.array(more_keys, U64), np.array(more_vals, I64)
    total = len(keys) + len(more_keys)
    at = keys.searchsorted(more_keys)
    at += np.arange(len(more_keys))
    old = np.ones(total, bool)
    old[at] = False
    out_keys = np.empty(total, U64)
    out_vals = np.empty(total, I64)
    out_keys[at] = more_keys
    out_vals[at] = more_vals
    out_keys[old] = keys
    out_vals[old] = vals
    return out_keys, out_vals


class KeyIndex:
    __slots__ = ("_delta_keys", "_delta_vals", "_keys", "_tail_keys", "_tail_vals", "_vals")

    def __init__(self, keys: Array | None = None, vals: Array | None = None) -> None:
        """An index holding ``keys`` (sorted, distinct) -> ``vals``, or an empty one."""
        self._keys = np.zeros(0, U64) if keys is None else keys.astype(U64, copy=False)
        self._vals = np.zeros(0, I64) if vals is None else vals.astype(I64, copy=False)
        assert len(self._keys) == len(self._vals)
        self._delta_keys = self._tail_keys = np.zeros(0, U64)
        self._delta_vals = self._tail_vals = np.zeros(0, I64)

    def __len__(self) -> int:
        return len(self._keys) + len(self._delta_keys) + len(self._tail_keys)

    def _small_levels(self) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
        """(keys, values) of the delta, then of the tail."""
        return (self._delta_keys, self._delta_vals), (self._tail_keys, self._tail_vals)

    def get(self, query: Array) -> Array:
        """The value of each key of ``query`` (uint64), MISSING where absent."""
        found = _find(self._keys, self._vals, query)
        for keys, vals in self._small_levels():
            if len(keys):
                missing = found == MISSING
                if missing.any():
                    found[missing] = _find(keys, vals, query[missing])
        return found

    def get1(self, key: int) -> int:
        """One key's value, MISSING when absent (for reads: no arrays built)."""
        # The key as uint64 (numpy would convert the whole column to search for a Python
        # int), the arrays' own searchsorted, the smaller levels only when they hold keys.
        probe = np.uint64(key)
        keys = self._keys
        pos = int(keys.searchsorted(probe))
        if pos < keys.size and keys.item(pos) == key:
            return int(self._vals.item(pos))
        for keys, vals in (  # ``_small_levels()`` inlined: a call less on the read fast path
            (self._delta_keys, self._delta_vals),
            (self._tail_keys, self._tail_vals),
        ):
            if keys.size:
                pos = int(keys.searchsorted(probe))
                if pos < keys.size and keys.item(pos) == key:
                    return int(vals.item(pos))
        return MISSING

    def add(self, keys: Array, vals: Array) -> None:
        """Add ``keys`` (uint64, distinct, none present yet) with their values."""
        if not len(keys):
            return
        vals = vals.astype(I64, copy=False)
        if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():  # callers mostly pass them sorted
            order = np.argsort(keys, kind="stable")
            keys, vals = keys[order], vals[order]
        if len(self._tail_keys):
            keys, vals = _merged(self._tail_keys, self._tail_vals, keys, vals)
        if len(keys) <= _TAIL_MAX:
            self._tail_keys, self._tail_vals = np.array(keys, U64), np.array(vals, I64)
            return
        self._tail_keys = np.zeros(0, U64)
        self._tail_vals = np.zeros(0, I64)
        if len(self._delta_keys):
            keys, vals = _merged(self._delta_keys, self._delta_vals, keys, vals)
        if len(keys) > max(_DELTA_MIN, len(self._keys) >> 4):
            self._keys, self._vals = _merged(self._keys, self._vals, keys, vals)
            self._delta_keys = np.zeros(0, U64)
            self._delta_vals = np.zeros(0, I64)
        else:
            self._delta_keys, self._delta_vals = np.array(keys, U64), np.array(vals, I64)

    def _merge(self) -> None:
        for keys, vals in self._small_levels():
            if len(keys):
                self._keys, self._vals = _merged(self._keys, self._vals, keys, vals)
        self._delta_keys = self._tail_keys = np.zeros(0, U64)
        self._delta_vals = self._tail_vals = np.zeros(0, I64)

    def items(self) -> tuple[Array, Array]:
        """Every (key, value), keys sorted."""
        if len(self._delta_keys) or len(self._tail_keys):
            self._merge()
        return self._keys, self._vals

    def range(self, low: int, high: int) -> tuple[Array, Array]:
        """The (keys, values) with ``low <= key < high``, keys sorted."""
        keys, vals = self.items()
        a = int(keys.searchsorted(np.uint64(low)))
        b = int(keys.searchsorted(np.uint64(high)))
        return keys[a:b], vals[a:b]

    def pairs_in(self, low: int, high: int) -> list[tuple[int, int]]:
        """Every (key, value) with ``low <= key < high``, in no set order, as Python ints: for
        a narrow span (a total row's few cell rows). Unlike ``range`` it leaves the levels
        unmerged, so a lone read costs one binary search a level, not a rewrite of the whole
        index after each write; the keys of the span are then stepped through one by one."""
        probe = np.uint64(low)
        out: list[tuple[int, int]] = []
        for keys, vals in ((self._keys, self._vals), *self._small_levels()):
            size = keys.size
            if size:
                at = int(keys.searchsorted(probe))
                while at < size:
                    key = int(keys[at])
                    if key >= high:
                        break
                    out.append((key, int(vals[at])))
                    at += 1
        return out

    def keep(self, mask_of: Any) -> None:
        """Keep only the entries for which ``mask_of(keys, vals)`` is True."""
        keys, vals = self.items()
        mask = mask_of(keys, vals)
        self._keys = keys[mask]
        self._vals = vals[mask]

    def remap_values(self, mapping: Array) -> None:
        """Replace every value v by ``mapping[v]`` (after renumbering what they point at)."""
        _, vals = self.items()
        self._vals = mapping[vals].astype(I64, copy=False)
