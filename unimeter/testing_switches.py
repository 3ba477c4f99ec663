"""Deliberate bugs for the simulator's own tests. Every switch is False in production.

Besides the switches, ``PLANTED_FAULT`` plants one unexpected exception in a real node process,
for the supervision tests (``tests/test_supervision.py``): the node must fail-stop. It is read
once from the environment variable ``UNIMETER_PLANTED_FAULT``, which production never sets.

Each switch is read at the one place its bug would live, as a single module attribute check,
so a switched-off bug costs one attribute load. ``tests/test_sim.py`` turns one on at a time
and expects a named checker of ``unimeter.sim`` to fail within a stated number of seeds: proof
that the simulator finds real bugs, not only that the code passes it. Nothing else may set them.
"""

from __future__ import annotations

import os

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

# One of PLANTED_FAULTS, or "" (no fault).
PLANTED_FAULT = os.environ.get("UNIMETER_PLANTED_FAULT", "")
PLANTED_FAULTS = (
    "partition-step",  # a partition core's step raises on the first client ingest
    "fsync-callback",  # the loop callback that reports a finished fsync raises
    "disk-watch-task",  # the node's disk-space watch task raises on its second round
)
assert PLANTED_FAULT in ("", *PLANTED_FAULTS), f"unknown UNIMETER_PLANTED_FAULT {PLANTED_FAULT!r}"


class PlantedFault(Exception):
    """The exception a planted fault raises."""
