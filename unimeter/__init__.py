"""Unimeter: exact, durable usage metering. This module is the public client API.

``import unimeter`` stays cheap and never imports server code: the model, the errors and the
period helpers load at once; ``AsyncClient`` (asyncio, the wire codec, CBOR) loads on first use,
so a server process importing ``unimeter.model`` does not pull in the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unimeter.errors import (
    AlreadyExistsError,
    AuthError,
    BackpressureError,
    ClosedError,
    InvalidRequestError,
    NotFoundError,
    NotLeaderError,
    ProtocolError,
    ServerError,
    TimeoutError,
    UnavailableError,
    UnimeterError,
    UnknownMetricError,
)
from unimeter.model import (
    AggType,
    AggValue,
    AlertRecord,
    AlertThreshold,
    DeliveryMode,
    DimensionFilter,
    Event,
    EventRecord,
    IngestResult,
    MetricSchema,
    OperationType,
    Period,
    PeriodType,
    UsageResult,
    current_billing_period,
    current_month,
    last_billing_period,
    last_month,
    last_week_utc,
    scale,
    this_week_utc,
    today_utc,
    unscale,
    yesterday_utc,
)

if TYPE_CHECKING:
    from unimeter.client import AsyncClient
    from unimeter.client.alerts import AlertSubscription
    from unimeter.wire.messages import ClusterStatusReply, PartitionInfo

__version__ = "0.1.0"

__all__ = [
    "AggType",
    "AggValue",
    "AlertRecord",
    "AlertSubscription",
    "AlertThreshold",
    "AlreadyExistsError",
    "AsyncClient",
    "AuthError",
    "BackpressureError",
    "ClosedError",
    "ClusterStatusReply",
    "DeliveryMode",
    "DimensionFilter",
    "Event",
    "EventRecord",
    "IngestResult",
    "InvalidRequestError",
    "MetricSchema",
    "NotFoundError",
    "NotLeaderError",
    "OperationType",
    "PartitionInfo",
    "Period",
    "PeriodType",
    "ProtocolError",
    "ServerError",
    "TimeoutError",
    "UnavailableError",
    "UnimeterError",
    "UnknownMetricError",
    "UsageResult",
    "current_billing_period",
    "current_month",
    "last_billing_period",
    "last_month",
    "last_week_utc",
    "scale",
    "this_week_utc",
    "today_utc",
    "unscale",
    "yesterday_utc",
]

_LAZY = {
    "AsyncClient": "unimeter.client",
    "AlertSubscription": "unimeter.client.alerts",
    "ClusterStatusReply": "unimeter.wire.messages",
    "PartitionInfo": "unimeter.wire.messages",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'unimeter' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
