"""``PartitionCache``: the memoised ``partition_of`` the node's hot paths index."""

from __future__ import annotations

from unimeter.routing import PartitionCache, partition_of


def test_the_cache_answers_as_partition_of_and_stays_bounded() -> None:
    cache = PartitionCache(7, size_max=5)
    accounts = [0, 1, 2, 2**64 - 1, 12345, 99, 7, 1]
    for account in accounts:
        assert cache[account] == cache(account) == partition_of(account, 7)
        assert len(cache) <= 5
    assert 1 in cache  # the last account looked up is remembered
    assert cache.partitions == 7
