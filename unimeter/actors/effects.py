"""What a pure core asks its runtime to do after one ``step``.

The runtime executes effects in a fixed order (etcd-io/raft's Ready contract,
``unimeter/consensus/ready.py``):
1. ``install``: a snapshot replaces the log (write the snapshot file, restart the WAL after it);
2. ``truncate_after`` then ``appends`` go to the write-ahead log (buffered writes);
3. ``hard_state`` is stored (term and vote changes are fsynced before anything else leaves);
4. ``sends`` go to peers (they never depend on what 1-3 wrote: the Raft core holds back every
   message that promises durable state until it is durable);
5. ``sync_number``: fsync off the loop, then report ``Persisted(sync_number)`` to the core —
   only then does the core count the entries as durable and release what waited for them;
6. ``replies`` go out (none of them waits for durability any more);
7. ``alerts`` are published to live subscribers.
A core never awaits, never reads a clock and never touches a file or socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unimeter.consensus.messages import HardState, Message, Snapshot
from unimeter.wire.messages import Reply, StoredAlert


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A reply for the requester behind ``token`` (opaque to the core)."""

    token: object
    status: int
    message: Reply


@dataclass(frozen=True, slots=True)
class Send:
    dst: int  # node id
    group: int  # partition number, or the catalog's group
    message: Message


@dataclass(slots=True)
class Effects:
    install: Snapshot | None = None
    truncate_after: int | None = None
    appends: list[tuple[int, int, bytes]] = field(default_factory=list)  # (index, term, data)
    hard_state: HardState | None = None
    sends: list[Send] = field(default_factory=list)
    sync_number: int | None = None
    replies: list[Outgoing] = field(default_factory=list)
    alerts: list[StoredAlert] = field(default_factory=list)
