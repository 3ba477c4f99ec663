"""Direct decoders for the hot request kinds: a decoded top-level item to plain fields (or,
for an INGEST of a few plain events, straight to its message).

Theory of operation. The generic request decoder (``bodies.py``) walks a table of converters and
builds a frozen message object, which costs dozens of Python calls per request; a lone query
pays that on every page view. These functions read the body map of the most common shapes
straight into a tuple of the fields the node needs, checking each value's exact type and range
inline. They never raise and never judge: anything they do not recognise at once -- a missing or
unknown key, a value of the wrong type or out of range -- makes them return None, and the caller
decodes the same item with the generic decoder, which accepts it or names the problem exactly
as before. So the fast path only ever accepts what the generic decoder accepts, with the same
values (``tests/test_fast_decode.py`` checks that on tables and random bodies), and every error
keeps its type and wording. A QUERY's filters are taken too (``_filters``: the checks of
``bodies.FILTERS`` and of ``Query``'s "a key appears twice").
"""

from __future__ import annotations

from typing import Any

from unimeter import limits
from unimeter.model import is_valid_code, valid_codes
from unimeter.wire.batch import decode_small_batch
from unimeter.wire.convert import utf8_bytes
from unimeter.wire.messages import Ingest

KIND_INGEST = 8
KIND_QUERY = 9
KIND_QUERY_REALTIME = 10
REQUEST_ID_MAX = 2**64 - 1

_U64_MAX = 2**64 - 1
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1
_PARTITION_END = limits.partitions_max
_FILTERS_MAX = limits.dimensions_per_metric_max
_KEY_BYTES_MAX = limits.property_key_bytes_max
_VALUE_BYTES_MAX = limits.property_value_bytes_max

Filters = tuple[tuple[str, str], ...]
# (partition, account_id, metric_code, start_us, end_us, min_index, catalog_version, filters)
QueryFields = tuple[int, int, str, int, int, int, int, Filters]
# (partition, account_id, metric_code, catalog_version)
RealtimeFields = tuple[int, int, str, int]


def ingest(body: Any) -> Ingest | None:
    """The INGEST of a small plain batch (``decode_small_batch``), or None (decode it
    generically)."""
    if type(body) is not dict or len(body) != 6:  # exactly the six keys below
        return None
    p = body.get("p")
    pid = body.get("pid")
    seq = body.get("seq")
    sync = body.get("sy")
    cv = body.get("cv")
    if (
        type(p) is not int
        or type(pid) is not int
        or type(seq) is not int
        or type(cv) is not int
        or type(sync) is not bool
        or not 0 <= p < _PARTITION_END
        or not 0 <= pid <= _U64_MAX
        or not 0 <= seq <= _U64_MAX
        or not 0 <= cv <= _U64_MAX
    ):
        return None
    batch = decode_small_batch(body.get("b"))
    if batch is None:
        return None
    return Ingest(partition=p, producer_id=pid, seq=seq, sync=sync, catalog_version=cv, batch=batch)


def query(body: Any) -> QueryFields | None:
    """The fields of a QUERY body, or None (decode it generically)."""
    if type(body) is not dict:
        return None
    p = a = code = s = e = raw_filters = None
    min_index = cv = 0
    for key, value in body.items():
        if type(value) is not int:
            if key == "m":
                code = value
            elif key == "f" and type(value) is list:
                raw_filters = value  # (null: refused by the generic decoder)
            else:
                return None
        elif key == "p":
            p = value
        elif key == "a":
            a = value
        elif key == "s":
            s = value
        elif key == "e":
            e = value
        elif key == "min":
            min_index = value
        elif key == "cv":
            cv = value
        else:
            return None  # an integer "m" or "f", or a key the generic decoder will name
    if (
        p is None
        or a is None
        or s is None
        or e is None
        or not 0 <= p < _PARTITION_END
        or not 0 <= a <= _U64_MAX
        or not _I64_MIN <= s < e <= _I64_MAX
        or not 0 <= min_index <= _U64_MAX
        or not 0 <= cv <= _U64_MAX
        or type(code) is not str
        or (code not in valid_codes and not is_valid_code(code))
    ):
        return None
    if raw_filters is None:
        return p, a, code, s, e, min_index, cv, ()
    filters = _filters(raw_filters)
    if filters is None:
        return None
    return p, a, code, s, e, min_index, cv, filters


def _filters(raw: list[Any]) -> Filters | None:
    """A QUERY's filters as the generic decoder gives them ((key, value) pairs in order), or
    None: not at most ``_FILTERS_MAX`` [key, value] string pairs of the allowed sizes with
    distinct keys."""
    if len(raw) > _FILTERS_MAX:
        return None
    out: list[tuple[str, str]] = []
    for item in raw:
        if type(item) is not list or len(item) != 2:
            return None
        key, value = item
        if (
            type(key) is not str
            or type(value) is not str
            or not 1 <= _utf8_bytes(key) <= _KEY_BYTES_MAX
            or not 0 <= _utf8_bytes(value) <= _VALUE_BYTES_MAX
        ):
            return None
        for seen, _ in out:
            if seen == key:
                return None
        out.append((key, value))
    return tuple(out)


def _utf8_bytes(text: str) -> int:
    """``convert.utf8_bytes``, or -1 (out of every range) for text UTF-8 cannot hold (a lone
    surrogate: the generic decoder fails on it in its own way)."""
    try:
        return utf8_bytes(text)
    except UnicodeEncodeError:
        return -1


def query_realtime(body: Any) -> RealtimeFields | None:
    """The fields of a QUERY_REALTIME body, or None (decode it generically)."""
    if type(body) is not dict:
        return None
    p = a = code = None
    cv = 0
    for key, value in body.items():
        if type(value) is not int and key != "m":
            return None
        if key == "p":
            p = value
        elif key == "a":
            a = value
        elif key == "m":
            code = value
        elif key == "cv":
            cv = value
        else:
            return None
    if (
        p is None
        or a is None
        or not 0 <= p < _PARTITION_END
        or not 0 <= a <= _U64_MAX
        or not 0 <= cv <= _U64_MAX
        or type(code) is not str
        or (code not in valid_codes and not is_valid_code(code))
    ):
        return None
    return p, a, code, cv
