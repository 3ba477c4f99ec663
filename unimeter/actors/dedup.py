"""Exactly-once state: event-id hashes per day and the idempotent-producer table (semantics.md §8).

Both expire by *log time*: the day of the newest BatchEntry stamp seen, never the wall clock,
so every replica and every replay drops the same things at the same entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import blake2b

from pyroaring import BitMap64

from unimeter import limits
from unimeter.wire.messages import IngestReply


def event_id_hash(metric_code: str, account_id: int, event_id: str) -> int:
    """64-bit key of an event id: blake2b-64 over ``u16 len | code | u64 account | u16 len |
    event id`` (little-endian, UTF-8), identical in every process and on every platform."""
    code = metric_code.encode()
    eid = event_id.encode()
    data = b"".join(
        (
            len(code).to_bytes(2, "little"),
            code,
            account_id.to_bytes(8, "little"),
            len(eid).to_bytes(2, "little"),
            eid,
        )
    )
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


class EventIdIndex:
    """Hashes of stored event ids in per-day sets plus their union for O(1) lookups.

    A hash lives in exactly one day set (it is only added when unseen), so dropping a day is a
    set difference on the union.
    """

    __slots__ = ("combined", "days")

    def __init__(self) -> None:
        self.days: dict[int, BitMap64] = {}
        self.combined = BitMap64()

    def seen(self, key: int) -> bool:
        return key in self.combined

    def day_set(self, day: int) -> BitMap64:
        found = self.days.get(day)
        if found is None:
            found = self.days[day] = BitMap64()
        return found

    def expire(self, oldest_kept_day: int) -> None:
        for day in [d for d in self.days if d < oldest_kept_day]:
            self.combined.difference_update(self.days.pop(day))


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
