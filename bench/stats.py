"""Percentiles and rates, computed the same way for every figure."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence."""
    assert sorted_values and 0.0 < q <= 1.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[rank - 1])


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p999, mean, min, max and count of ``values`` (empty: count 0 only)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    out: dict[str, float] = {name: percentile(ordered, q) for name, q in PERCENTILES}
    out["mean"] = sum(ordered) / len(ordered)
    out["min"] = float(ordered[0])
    out["max"] = float(ordered[-1])
    out["n"] = len(ordered)
    return out


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0
