"""Exactly-once state: event-id keys and the idempotent-producer table (docs/semantics.md §8).

Both expire by *log time*: the day of the newest BatchEntry stamp seen, never the wall clock,
so every replica and every replay drops the same things at the same entry.

Event-id keys (``hashing.event_id_keys``) live in sorted runs, each with the log day every key
was stored on: a batch's keys become a new run, and runs of similar size are merged (at most
``_FANOUT`` runs of each size class), so a key is moved a logarithmic number of times in all
and a lookup of a whole column is one binary search per run. Expiry filters every run by day.
Eight bytes a key plus its day, where a hash set of Python ints costs about eighty.
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
_FANOUT = 4


class EventIdIndex:
    """The keys of stored event ids, with the day each was stored, in sorted runs."""

    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs: list[tuple[Array, Array]] = []  # (keys sorted, days), largest first

    def __len__(self) -> int:
        return sum(len(keys) for keys, _ in self.runs)

    def contains(self, keys: Array) -> Array:
        """A boolean per key of ``keys`` (uint64): already stored?"""
        hit = np.zeros(len(keys), dtype=bool)
        for run, _ in self.runs:
            pos = np.searchsorted(run, keys)
            np.minimum(pos, len(run) - 1, out=pos)
            hit |= run[pos] == keys
        return hit

    def seen(self, key: int) -> bool:
        return bool(self.contains(np.array([key], U64))[0])

    def add(self, keys: Array, day: int) -> None:
        """Store ``keys`` (distinct, none stored yet) on log day ``day``."""
        if not len(keys):
            return
        run = np.sort(keys)
        assert not (run[1:] == run[:-1]).any(), "an event id is already stored (twice in a batch)"
        self.runs.append((run, np.full(len(run), day, I32)))
        self._merge()

    def _merge(self) -> None:
        """Merge the smallest runs while more than ``_FANOUT`` share a size class."""
        runs = self.runs
        while len(runs) > 1:
            tail = runs[-1]
            size_class = len(tail[0]).bit_length()
            same = 1
            while same < len(runs) and len(runs[-1 - same][0]).bit_length() <= size_class:
                same += 1
            if same <= _FANOUT:
                break
            merged = runs[-same:]
            del runs[-same:]
            keys = np.concatenate([k for k, _ in merged])
            days = np.concatenate([d for _, d in merged])
            order = np.argsort(keys, kind="stable")
            runs.append((keys[order], days[order]))
            runs.sort(key=lambda r: -len(r[0]))

    def expire(self, oldest_kept_day: int) -> None:
        kept: list[tuple[Array, Array]] = []
        for keys, days in self.runs:
            live = days >= oldest_kept_day
            if live.all():
                kept.append((keys, days))
            elif live.any():
                kept.append((keys[live], days[live]))
        kept.sort(key=lambda r: -len(r[0]))
        self.runs = kept

    def dump(self) -> tuple[Array, Array]:
        """Every (key, day), keys sorted (snapshots)."""
        if not self.runs:
            return np.zeros(0, U64), np.zeros(0, I32)
        keys = np.concatenate([k for k, _ in self.runs])
        days = np.concatenate([d for _, d in self.runs])
        order = np.argsort(keys, kind="stable")
        return keys[order], days[order]

    def load(self, keys: Array, days: Array) -> None:
        self.runs = [(keys, days)] if len(keys) else []


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
