"""Which partition an account lives in: the documented 64-bit mix, shared by every SDK.

``partition_of(account_id, n) = splitmix64(account_id) % n`` where splitmix64 is the finalizer
of Vigna's SplitMix64 generator (all arithmetic modulo 2**64):

    z = account_id + 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    z = z ^ (z >> 31)

The mix spreads consecutive account ids evenly, so small sequential ids do not pile up in one
partition. ``docs/protocol.md`` gives test vectors.
"""

from __future__ import annotations

_MASK = (1 << 64) - 1


def mix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def partition_of(account_id: int, partitions: int) -> int:
    return mix64(account_id) % partitions


class PartitionCache(dict[int, int]):
    """Memoised ``partition_of`` for hot paths: ``cache[account_id]`` is a plain dict lookup
    once the account was seen (the hot paths index it: no Python call), and calling the cache
    does the same. Bounded: cleared when it grows too large."""

    __slots__ = ("_size_max", "partitions")

    def __init__(self, partitions: int, size_max: int = 1 << 20) -> None:
        super().__init__()
        self.partitions = partitions
        self._size_max = size_max

    def __missing__(self, account_id: int) -> int:
        if len(self) >= self._size_max:
            self.clear()
        p = self[account_id] = mix64(account_id) % self.partitions
        return p

    def __call__(self, account_id: int) -> int:
        return self[account_id]
