"""The partition leader's verdict on one INGEST batch: which events are stored, which are
rejected (and why), which are duplicates -- all by array masks.

Rules (docs/semantics.md §1, §8), checked in this order for each event, the first that applies
deciding: the metric is unknown; the timestamp is older than the retention; more than
``future_skew_us_max`` ahead; a COUNT_UNIQUE value is negative; an operation type on a metric
that is not COUNT_UNIQUE. An event that passes and carries an event id is a duplicate when its
key is already stored, claimed by an entry in flight, or repeated earlier in the same batch
(the first occurrence is stored). Only rejected events are ever looked at one by one (to list
their reasons); the keys of the stored ids are computed here, once, and travel in the entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from unimeter import limits
from unimeter.model import AggType
from unimeter.state.entries import BatchPart, LiveMetric
from unimeter.state.hashing import code_key, event_id_keys
from unimeter.wire import messages as m

Array = npt.NDArray[Any]

# Reasons a single event is rejected (IngestResult.rejected); documented in docs/protocol.md.
REJECT_UNKNOWN_METRIC = "unknown_metric"
REJECT_TOO_OLD = "timestamp_too_old"
REJECT_IN_FUTURE = "timestamp_in_future"
REJECT_NEGATIVE_UNIQUE = "count_unique_value_negative"
REJECT_OPERATION = "operation_type_requires_count_unique"
_REASONS = (
    "",
    REJECT_UNKNOWN_METRIC,
    REJECT_TOO_OLD,
    REJECT_IN_FUTURE,
    REJECT_NEGATIVE_UNIQUE,
    REJECT_OPERATION,
)
U64 = np.dtype("<u8")


def _flag(reason: Array, hit: Array, code: int) -> None:
    """Give ``code`` to the events of ``hit`` that have no reason yet."""
    reason[hit & (reason == 0)] = code


def admit(
    req: m.Ingest,
    now_us: int,
    metrics: dict[str, LiveMetric],
    retention_us: int,
    seen: Callable[[Array], Array],
) -> BatchPart:
    """The part of a log entry for ``req``; ``seen(keys)`` says which id keys are taken."""
    b = req.batch
    n = len(b)
    known = [metrics.get(code) for code in b.metric_codes]
    unique = [lm is not None and lm.schema.agg_type == AggType.COUNT_UNIQUE for lm in known]
    ops = b.operation_types
    if (
        all(lm is not None for lm in known)
        and not any(unique)
        and b.timestamps is None
        and b.event_id_data is None
        and (ops is None or not ops.any())
    ):
        # The common case: every event is stored as sent, stamped with the entry's stamp.
        return BatchPart(
            producer_id=req.producer_id,
            seq=req.seq,
            batch=b,
            dropped=None,
            n_duplicates=0,
            rejected=(),
            id_hashes=None,
        )
    mi = b.metric_index
    checks: list[tuple[Array, int]] = []  # (events breaking a rule, its reason), in rule order
    if not all(lm is not None for lm in known):
        checks.append((~np.array([lm is not None for lm in known])[mi], 1))
    if b.timestamps is not None:
        stamps = b.timestamps
        # NO_TIMESTAMP is the smallest int64: below any bound, so "too old" must exclude it.
        old = (stamps < now_us - retention_us) & (stamps != m.NO_TIMESTAMP)
        checks.append((old, 2))
        checks.append((stamps > now_us + limits.future_skew_us_max, 3))
    unique_ev = np.array(unique)[mi] if any(unique) else None
    if unique_ev is not None:
        checks.append((unique_ev & (b.values < 0), 4))
    if ops is not None:
        operated = ops != 0
        checks.append((operated if unique_ev is None else operated & ~unique_ev, 5))
    broken = [(hit, code) for hit, code in checks if hit.any()]
    bad = np.zeros(0, np.int64)
    rejected: tuple[tuple[int, str], ...] = ()
    ok: Array | None = None  # None: every event passes
    if broken:
        reason = np.zeros(n, np.uint8)
        for hit, code in broken:
            reason[hit & (reason == 0)] = code
        bad = np.flatnonzero(reason)
        rejected = tuple(zip(bad.tolist(), [_REASONS[r] for r in reason[bad].tolist()],
                             strict=True))  # fmt: skip
        ok = reason == 0
    dropped = bad
    n_duplicates = 0
    hashes = None
    if b.event_id_data is not None:
        offsets = b.event_id_offsets
        assert offsets is not None
        lengths = np.diff(offsets.astype(np.int64))
        has_id = lengths > 0
        with_id = np.flatnonzero(has_id if ok is None else has_id & ok)
        if len(with_id):
            code_keys = np.array([code_key(c) for c in b.metric_codes], U64)
            keys = event_id_keys(
                b.event_id_data,
                offsets[:-1][with_id].astype(np.int64),
                lengths[with_id],
                code_keys[mi[with_id]],
                b.account_ids[with_id],
            )
            duplicate = seen(keys)
            ordered = np.sort(keys)
            if (ordered[1:] == ordered[:-1]).any():
                # A key repeated in the batch: its first occurrence is the one stored.
                _, first = np.unique(keys, return_index=True)
                repeat = np.ones(len(keys), dtype=bool)
                repeat[first] = False
                duplicate |= repeat
            n_duplicates = int(duplicate.sum())
            if n_duplicates:
                dropped = np.union1d(bad, with_id[duplicate])
                hashes = keys[~duplicate]
            else:
                hashes = keys
    return BatchPart(
        producer_id=req.producer_id,
        seq=req.seq,
        batch=b,
        dropped=dropped.astype(np.uint32) if len(dropped) else None,
        n_duplicates=n_duplicates,
        rejected=rejected,
        id_hashes=hashes if hashes is not None and len(hashes) else None,
    )
