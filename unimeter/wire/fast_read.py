"""The client's read frames written and read directly: QUERY / QUERY_REALTIME and their reply.

Theory of operation. A dashboard calls ``query`` once per page view, so the generic path --
the body map built from the message's field table (a converter call and a default check per
field), and for the reply a field table walk, a record converter and a keyword construction
per nested value -- is most of the client's own work per read. Both shapes are small and
fixed (docs/protocol.md, sections 3 and 5).

``read_body`` builds the body map the field table builds for an unfiltered Query or a
QueryRealtime (same keys, same order, defaults left out), or returns None for anything else
(filters: the generic encoder takes over). ``agg_reply`` turns an OK reply body of the common
shape -- exactly the keys v, ps, pe; the value an array of six items, each of the type the
field table accepts, the sum a plain integer -- into the ``AggReply`` the generic decoder
makes of it, and returns None for anything else (an unknown key, a bignum sum, a value out of
range), and the caller decodes the same body generically, which accepts it or names the
problem exactly as before. ``tests/test_fast_read.py`` checks both against the generic path.
"""

from __future__ import annotations

from typing import Any

from unimeter import limits, periods
from unimeter.model import AggValue
from unimeter.wire import messages as m
from unimeter.wire.convert import TIME_US_MAX, TIME_US_MIN

_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1
_U64_MAX = 2**64 - 1
_FLAGS_END = 2**limits.thresholds_per_metric_max  # one alert flag bit per threshold


def read_body(message: m.Request) -> dict[str, Any] | None:
    """The body map of an unfiltered Query or of a QueryRealtime, as ``encode_body`` makes
    it; None for any other message."""
    cls = type(message)
    if cls is m.Query:
        assert isinstance(message, m.Query)
        if message.filters:
            return None
        body: dict[str, Any] = {
            "p": message.partition,
            "a": message.account_id,
            "m": message.metric_code,
            "s": message.start_us,
            "e": message.end_us,
        }
        if message.min_index != 0:
            body["min"] = message.min_index
    elif cls is m.QueryRealtime:
        assert isinstance(message, m.QueryRealtime)
        body = {"p": message.partition, "a": message.account_id, "m": message.metric_code}
    else:
        return None
    if message.catalog_version != 0:
        body["cv"] = message.catalog_version
    return body


def agg_reply(body: Any) -> m.AggReply | None:
    """The ``AggReply`` of an OK reply body of the common shape, or None (decode it
    generically)."""
    if type(body) is not dict or len(body) != 3:
        return None
    value = body.get("v")
    start = body.get("ps")
    end = body.get("pe")
    if (
        type(value) is not list
        or len(value) != 6
        or type(start) is not int
        or type(end) is not int
        or not _I64_MIN <= start <= _I64_MAX
        or not _I64_MIN <= end <= _I64_MAX
    ):
        return None
    total, count, top, last_value, last_us, flags = value
    if (
        type(total) is not int
        or type(count) is not int
        or not 0 <= count <= _U64_MAX
        or type(flags) is not int
        or not 0 <= flags < _FLAGS_END
        or (top is not None and (type(top) is not int or not _I64_MIN <= top <= _I64_MAX))
        or (
            last_value is not None
            and (type(last_value) is not int or not _I64_MIN <= last_value <= _I64_MAX)
        )
    ):
        return None
    if last_us is None:
        last = None
    elif type(last_us) is int and TIME_US_MIN <= last_us <= TIME_US_MAX:
        last = periods.from_us(last_us)
    else:
        return None
    return m.AggReply(
        value=AggValue(total, count, top, last_value, last, flags),
        period_start_us=start,
        period_end_us=end,
    )
