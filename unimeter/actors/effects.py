"""What a pure core asks its runtime to do after one ``step``.

The runtime executes effects in a fixed order (etcd-io/raft's Ready contract):
1. ``appends`` go to the write-ahead log (buffered write);
2. ``sync`` requests an fsync, off the event loop; its completion comes back to the core as a
   ``Durable`` message, and only then does the core release what waited for durability;
3. ``replies`` go out (they never include anything that still waits for durability);
4. ``alerts`` are published to live subscribers.
A core never awaits, never reads a clock and never touches a file or socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unimeter.actors.entries import Entry
from unimeter.wire.messages import Reply, StoredAlert


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A reply for the requester behind ``token`` (opaque to the core)."""

    token: object
    status: int
    message: Reply


@dataclass(slots=True)
class Effects:
    appends: list[tuple[int, Entry]] = field(default_factory=list)
    sync: bool = False
    replies: list[Outgoing] = field(default_factory=list)
    alerts: list[StoredAlert] = field(default_factory=list)

    def merge(self, other: Effects) -> None:
        self.appends.extend(other.appends)
        self.sync = self.sync or other.sync
        self.replies.extend(other.replies)
        self.alerts.extend(other.alerts)
