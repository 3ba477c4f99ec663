"""Deliberate bugs for the simulator's own tests. Every switch is False in production.

Each switch is read at the one place its bug would live, as a single module attribute check,
so a switched-off bug costs one attribute load. ``tests/test_sim.py`` turns one on at a time
and expects a named checker of ``unimeter.sim`` to fail within a stated number of seeds: proof
that the simulator finds real bugs, not only that the code passes it. Nothing else may set them.
"""

from __future__ import annotations

# PartitionCore answers a SYNC ingest as soon as the leader appended it, like ASYNC, instead of
# once the entry is committed (docs/architecture.md §2).
SYNC_ACK_BEFORE_COMMIT = False

# The Raft leader counts its own durable log as a quorum: entries commit without replication.
COMMIT_WITHOUT_QUORUM = False

# PartitionCore proposes a retried batch again instead of checking (producer_id, seq) first.
SKIP_PRODUCER_CHECK = False

# PartitionCore forgets that an event id was already stored when it builds a batch.
SKIP_EVENT_ID_DEDUP = False

NAMES = (
    "SYNC_ACK_BEFORE_COMMIT",
    "COMMIT_WITHOUT_QUORUM",
    "SKIP_PRODUCER_CHECK",
    "SKIP_EVENT_ID_DEDUP",
)
