"""Event-id keys claimed by the leader's entries in flight (docs/semantics.md §8).

The leader drops from a new batch every id already stored (the state's table), claimed by an
entry it proposed that is not applied yet, or by an earlier part of the entry it is building.
A claim lives only here and in its entry: nothing is written anywhere before the entry.

Layout: the keys of each claiming entry as one sorted array, by log index, and in front of
them a filter of one int64 slot per ``key & mask`` holding the highest log index that claimed
a key there (``STAGED`` for a key of the entry being built). A key whose slot is not above the
applied index is claimed by no entry in flight: that is the common case, one gather for a
column of keys. Only the few others are looked for in the sorted arrays. Release is lazy: when
an entry applies, its array goes and its slots are left alone, since they are at or below the
applied index from then on. A slot only ever overestimates, so the filter may send a key to
the exact search for nothing, and never lets a claimed key through.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
STAGED = np.iinfo(np.int64).max  # above any applied index until the entry gets its own


class IdClaims:
    """Keys claimed by entries in flight (by log index) and by the entry being built."""

    __slots__ = ("_by_index", "_filter", "_mask", "_staged")

    def __init__(self, bits: int = 18) -> None:
        self._mask = np.uint64((1 << bits) - 1)
        self._filter = np.zeros(1 << bits, np.int64)
        self._by_index: dict[int, Array] = {}  # log index -> its keys, sorted
        self._staged: list[Array] = []  # the sorted keys of each part being built

    def __len__(self) -> int:
        arrays = [*self._by_index.values(), *self._staged]
        return sum(len(keys) for keys in arrays)

    def _slots(self, keys: Array) -> Array:
        return (keys & self._mask).astype(np.intp)

    def taken(self, keys: Array, applied_index: int) -> Array:
        """A boolean per key of ``keys`` (uint64): claimed by an entry after
        ``applied_index`` or by a part of the entry being built?"""
        out = np.zeros(len(keys), dtype=bool)
        if not (self._by_index or self._staged) or not len(keys):
            return out
        maybe = np.flatnonzero(self._filter[self._slots(keys)] > applied_index)
        if not len(maybe):
            return out
        asked = keys[maybe]
        hit = np.zeros(len(asked), dtype=bool)
        for claimed in (*self._by_index.values(), *self._staged):
            at = np.searchsorted(claimed, asked)
            np.minimum(at, len(claimed) - 1, out=at)
            hit |= claimed[at] == asked
        out[maybe] = hit
        return out

    def stage(self, keys: Array) -> None:
        """Claim ``keys`` (distinct, none taken) for the entry being built."""
        if len(keys):
            self._staged.append(np.sort(keys))
            self._filter[self._slots(keys)] = STAGED

    def claim_staged(self, index: int) -> None:
        """The entry being built was proposed at ``index``: its keys are claimed by it."""
        if not self._staged:
            return
        staged = self._staged
        keys = staged[0] if len(staged) == 1 else np.sort(np.concatenate(staged))
        self._staged = []
        self._by_index[index] = keys
        # Every key of the entry moves from STAGED to ``index``; a slot shared with a key of an
        # earlier entry keeps a value at least that key's index (``index`` is the newest).
        self._filter[self._slots(keys)] = index

    def drop_staged(self) -> None:
        """The entry being built was not proposed: nothing it staged is claimed. Its slots keep
        STAGED, which only sends other keys to the exact search until ``clear``."""
        self._staged = []

    def release(self, index: int) -> None:
        """The entry at ``index`` is applied (its keys are in the state's table now)."""
        self._by_index.pop(index, None)

    def clear(self) -> None:
        """Leadership lost: no entry of this replica is in flight any more."""
        self._filter.fill(0)
        self._by_index.clear()
        self._staged = []
