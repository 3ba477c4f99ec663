"""Which nodes hold which partition, and which of them should lead it.

Deterministic from the member list alone, so every node computes the same placement without
talking: partition ``p`` is held by ``replication_factor`` consecutive nodes of the sorted member
list starting at ``p mod n``, and the first of them is its *preferred leader*. Leadership
therefore spreads evenly, and a partition led elsewhere is handed back to its preferred node
when that node is healthy and caught up (leadership transfer).
"""

from __future__ import annotations


def replicas_of(
    partition: int, members: tuple[int, ...], replication_factor: int
) -> tuple[int, ...]:
    ordered = sorted(members)
    n = len(ordered)
    rf = min(replication_factor, n)
    assert rf >= 1
    start = partition % n
    return tuple(ordered[(start + i) % n] for i in range(rf))


def preferred_leader(partition: int, members: tuple[int, ...], replication_factor: int) -> int:
    return replicas_of(partition, members, replication_factor)[0]
