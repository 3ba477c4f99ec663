"""Retry policy: which failures to retry, and how long to wait between attempts.

The policy lives on the error classes (``retriable``, ``refresh_routing``); this module only
decides the waits. Retrying is always safe: reads change nothing, catalog writes are idempotent,
and an ``Ingest`` retry reuses its producer id and sequence number (see ``session.py``).
"""

from __future__ import annotations

import random

from unimeter import limits


class Backoff:
    """Exponential backoff with "equal jitter": each wait is uniform in [b/2, b], b doubling from
    ``initial`` up to ``maximum``. The jitter keeps many clients failing together (a leader
    change) from retrying in lockstep; the lower half keeps every wait meaningfully long."""

    __slots__ = ("_base", "_maximum", "_rng")

    def __init__(
        self,
        rng: random.Random,
        *,
        initial: float = limits.retry_backoff_s_initial,
        maximum: float = limits.retry_backoff_s_max,
    ) -> None:
        assert 0 < initial <= maximum
        self._rng = rng
        self._base = initial
        self._maximum = maximum

    def next_delay(self) -> float:
        base = self._base
        self._base = min(base * 2, self._maximum)
        return self._rng.uniform(base / 2, base)


class Attempts:
    """How many times a request has been sent so far; more than one means an earlier attempt
    may have been applied even though its answer never arrived."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0
