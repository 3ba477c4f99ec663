"""Exactly-once state: event-id keys and the idempotent-producer table (docs/semantics.md §8).

Both expire by *log time*: the day of the newest BatchEntry stamp seen, never the wall clock,
so every replica and every replay drops the same things at the same entry.

Event-id keys (``hashing.event_id_keys``, already uniformly spread 64-bit numbers) live in a
bucketed hash table of numpy arrays: 8 slots per bucket (one cache line), and every key may sit
in either of two buckets (two-choice hashing keeps buckets even, so the table fills to 3/4
before it grows). A column of keys is looked up with two gathers and a compare, and inserted
with a few scatters and gathers per round of keys: no sort, no Python per key. Each slot also keeps
the log day its key was stored on; expiry clears the slots of old days and packs each bucket
again. About 13 bytes a key, where a Python set of ints costs about eighty and a roaring set
of random 64-bit values more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pyroaring import BitMap64

from unimeter import limits
from unimeter.wire.messages import IngestReply

Array = npt.NDArray[Any]
U64 = np.dtype("<u8")
I32 = np.dtype("<i4")
SLOTS = 8
_EMPTY = np.uint64(0)  # no key is 0: ``stored_form`` maps it to 1


def stored_form(keys: Array) -> Array:
    """Keys as the table holds them: 0 marks an empty slot, so key 0 is stored as 1 (a
    collision of the two, odds 2**-64, would make one look like a duplicate of the other)."""
    return np.where(keys == _EMPTY, np.uint64(1), keys).astype(U64, copy=False)


class EventIdIndex:
    """The keys of stored event ids, with the day each was stored on."""

    __slots__ = ("_bits", "_claim", "_days", "_fill", "_keys", "size")

    def __init__(self, bits: int = 10) -> None:
        self._bits = bits
        self._keys = np.zeros((1 << bits, SLOTS), U64)
        self._days = np.zeros((1 << bits, SLOTS), I32)
        self._fill = np.zeros(1 << bits, np.int8)  # used slots of each bucket, packed first
        self._claim = np.zeros(1 << bits, np.int32)  # scratch of ``_place_round``
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def _buckets(self, keys: Array) -> tuple[Array, Array]:
        bits = np.uint64(self._bits)
        first = (keys >> (np.uint64(64) - bits)).astype(np.intp)
        second = (keys & ((np.uint64(1) << bits) - np.uint64(1))).astype(np.intp)
        return first, second

    def contains(self, keys: Array) -> Array:
        """A boolean per key of ``keys`` (uint64): already stored?"""
        keys = stored_form(keys)
        return self._hits(keys, *self._buckets(keys))

    def _hits(self, keys: Array, first: Array, second: Array) -> Array:
        column = keys[:, None]
        # A row of 8 booleans is 8 bytes: viewed as one uint64 it is non-zero when any is set.
        hit = (self._keys.take(first, axis=0) == column).view(U64)[:, 0] != 0
        hit |= (self._keys.take(second, axis=0) == column).view(U64)[:, 0] != 0
        return hit  # type: ignore[no-any-return]

    def seen(self, key: int) -> bool:
        return bool(self.contains(np.array([key], U64))[0])

    def add(self, keys: Array, day: int | Array) -> None:
        """Store ``keys`` (distinct, none stored yet) on log day ``day`` (or one day each)."""
        if not len(keys):
            return
        self._add(stored_form(keys), day)

    def add_new(self, keys: Array, day: int) -> bool:
        """Store ``keys`` (distinct) on log day ``day`` unless one of them is stored already:
        then store nothing and return False. One pass for the check and the placement (the
        check reads the cache lines the placement writes)."""
        if not len(keys):
            return True
        keys = stored_form(keys)
        if self._hits(keys, *self._buckets(keys)).any():
            return False
        self._add(keys, day)
        return True

    def _add(self, keys: Array, day: int | Array) -> None:
        days = np.broadcast_to(np.asarray(day, I32), keys.shape)
        if (self.size + len(keys)) * 4 > len(self._fill) * SLOTS * 3:
            self._grow(self.size + len(keys))
        left_keys, left_days = self._place(keys, days)
        while len(left_keys):  # a bucket pair was full: grow and place the rest
            self._grow(2 * len(self._fill) * SLOTS // 2)
            left_keys, left_days = self._place(left_keys, left_days)

    def _place(self, keys: Array, days: Array) -> tuple[Array, Array]:
        """Put keys in the emptier of their two buckets (the other when that one is full);
        return those that fit in neither. Keys go in rounds of at most a quarter as many as
        there are buckets, so that few of a round share a bucket (and each round sees the
        fill the earlier ones left)."""
        room = max(len(self._fill) // 4, 1)
        if len(keys) <= room:
            return self._place_round(keys, days)
        left = [self._place_round(keys[i : i + room], days[i : i + room])
                for i in range(0, len(keys), room)]  # fmt: skip
        return np.concatenate([k for k, _ in left]), np.concatenate([d for _, d in left])

    def _place_round(self, keys: Array, days: Array) -> tuple[Array, Array]:
        """Each pass, every bucket wanted takes one of the keys that want it (whichever the
        scatter below leaves in ``_claim``) into its next free slot: no sort. A key whose
        bucket is full moves to its other bucket once; full there too, it is returned. Which
        slot a key lands in never changes an answer (lookups read whole buckets, ``dump``
        sorts)."""
        first, second = self._buckets(keys)
        fill, claim = self._fill, self._claim
        bucket = np.where(fill[second] < fill[first], second, first)
        other = first ^ second ^ bucket
        moved = np.zeros(len(keys), dtype=bool)
        flat_keys = self._keys.reshape(-1)
        flat_days = self._days.reshape(-1)
        overflow: list[tuple[Array, Array]] = []
        while len(keys):
            ids = np.arange(len(keys), dtype=np.int32)
            claim[bucket] = ids
            won = claim[bucket] == ids  # exactly one key per wanted bucket
            slot = fill[bucket]
            free = slot < SLOTS
            fits = won & free
            at = bucket[fits]
            flat = at * SLOTS + slot[fits]
            flat_keys[flat] = keys[fits]
            flat_days[flat] = days[fits]
            fill[at] += 1  # the buckets of ``at`` are distinct
            self.size += len(at)
            full = won & ~free
            if full.any():
                spilled = full & moved
                if spilled.any():
                    overflow.append((keys[spilled], days[spilled]))
                turn = full & ~moved
                bucket = np.where(turn, other, bucket)
                moved |= turn
                waiting = ~(fits | spilled)
            else:
                waiting = ~fits
            keys, days = keys[waiting], days[waiting]
            bucket, other, moved = bucket[waiting], other[waiting], moved[waiting]
        if not overflow:
            return keys, days
        return np.concatenate([k for k, _ in overflow]), np.concatenate([d for _, d in overflow])

    def _grow(self, size: int) -> None:
        # Slot by slot across the buckets, not bucket by bucket: keys of one old bucket want
        # the same new buckets, and a round of ``_place_round`` places one key per bucket.
        used = (self._keys != _EMPTY).T
        keys, days = self._keys.T[used], self._days.T[used]
        bits = self._bits
        while size * 4 > (1 << bits) * SLOTS * 3:
            bits += 1
        self.__init__(bits)  # type: ignore[misc]
        if len(keys):
            self.add(keys, days)

    def expire(self, oldest_kept_day: int) -> None:
        stale = (self._days < oldest_kept_day) & (self._keys != _EMPTY)
        if not stale.any():
            return
        self._keys[stale] = _EMPTY
        # Pack each bucket again: used slots first, in their order.
        order = np.argsort(self._keys == _EMPTY, axis=1, kind="stable")
        self._keys = np.take_along_axis(self._keys, order, axis=1)
        self._days = np.take_along_axis(self._days, order, axis=1)
        used = self._keys != _EMPTY
        self._fill = used.sum(axis=1).astype(np.int8)
        self.size = int(used.sum())

    def dump(self) -> tuple[Array, Array]:
        """Every (key as stored, day), keys sorted (snapshots)."""
        used = self._keys != _EMPTY
        keys = self._keys[used]
        days = self._days[used]
        order = np.argsort(keys, kind="stable")
        return keys[order], days[order]

    def load(self, keys: Array, days: Array) -> None:
        self.__init__()  # type: ignore[misc]
        self.add(keys, days)


@dataclass(frozen=True, slots=True)
class Seen:
    """The producer's batch was applied, but its exact answer is no longer cached."""


SEEN = Seen()


class _Producer:
    __slots__ = ("last_day", "replies", "seqs")

    def __init__(self) -> None:
        self.seqs = BitMap64()
        self.replies: dict[int, IngestReply] = {}  # insertion (= apply) order
        self.last_day = 0


class ProducerTable:
    """Applied ``(producer_id, seq)`` pairs, with the answers of each producer's latest ones."""

    __slots__ = ("_producers",)

    def __init__(self) -> None:
        self._producers: dict[int, _Producer] = {}

    def outcome(self, producer_id: int, seq: int) -> IngestReply | Seen | None:
        producer = self._producers.get(producer_id)
        if producer is None or seq not in producer.seqs:
            return None
        return producer.replies.get(seq, SEEN)

    def record(self, producer_id: int, seq: int, reply: IngestReply, day: int) -> None:
        producer = self._producers.get(producer_id)
        if producer is None:
            producer = self._producers[producer_id] = _Producer()
        assert seq not in producer.seqs, f"producer {producer_id} seq {seq} applied twice"
        producer.seqs.add(seq)
        producer.replies[seq] = reply
        if len(producer.replies) > limits.producer_results_cached_max:
            del producer.replies[next(iter(producer.replies))]
        producer.last_day = max(producer.last_day, day)

    def expire(self, oldest_kept_day: int) -> None:
        stale = [p for p, prod in self._producers.items() if prod.last_day < oldest_kept_day]
        for producer_id in stale:
            del self._producers[producer_id]

    def dump(self) -> list[list[object]]:
        out: list[list[object]] = []
        for producer_id, prod in self._producers.items():
            replies = [
                [
                    seq,
                    r.n_stored,
                    r.n_duplicates,
                    r.n_rejected,
                    [list(x) for x in r.rejected],
                    r.last_offset,
                    r.log_index,
                ]
                for seq, r in prod.replies.items()
            ]
            out.append([producer_id, prod.seqs.serialize(), prod.last_day, replies])
        return out

    def load(self, rows: list[list[object]]) -> None:
        for producer_id, blob, last_day, replies in rows:
            assert isinstance(producer_id, int) and isinstance(blob, bytes)
            assert isinstance(last_day, int) and isinstance(replies, list)
            prod = self._producers[producer_id] = _Producer()
            prod.seqs = BitMap64.deserialize(blob)
            prod.last_day = last_day
            for seq, stored, dups, n_rejected, rejected, last_offset, log_index in replies:
                prod.replies[seq] = IngestReply(
                    n_stored=stored,
                    n_duplicates=dups,
                    n_rejected=n_rejected,
                    rejected=tuple((int(i), str(reason)) for i, reason in rejected),
                    last_offset=last_offset,
                    log_index=log_index,
                )
