"""How many examples a Hypothesis test draws: a short run by default, four times as many with
``UNIMETER_SLOW=1`` (the soak setting, as the slow node tests take it)."""

from __future__ import annotations

import os

SLOW = os.environ.get("UNIMETER_SLOW") == "1"


def examples(default: int) -> int:
    """``default`` examples, or four times as many under ``UNIMETER_SLOW=1``."""
    return default * 4 if SLOW else default
