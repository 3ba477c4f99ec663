"""Free-space watch feeding write backpressure (docs/operations.md §6).

The runtime calls :meth:`DiskSpaceWatch.check` every ~100 ms; it is one ``statvfs`` call
(about a microsecond). Below the reserve, writes are answered BACKPRESSURE before they reach the
WAL, so ENOSPC stays the exception rather than the control signal; when space returns, the next
check says so and writes resume by themselves.
"""

from __future__ import annotations

import os


class DiskSpaceWatch:
    """Whether the filesystem holding ``path`` has at least ``reserve_bytes`` free."""

    def __init__(self, path: str | os.PathLike[str], reserve_bytes: int) -> None:
        if reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, got {reserve_bytes}")
        self.path = os.fspath(path)
        self.reserve_bytes = reserve_bytes
        self.free_bytes = -1  # as of the last check; -1 before the first

    def check(self) -> bool:
        """Measure now; True if free space (usable without privileges) meets the reserve."""
        stats = os.statvfs(self.path)
        self.free_bytes = stats.f_bavail * stats.f_frsize
        return self.free_bytes >= self.reserve_bytes
