"""What a webhook receiver gets, and how it checks it.

Each delivery is ``POST <url>`` with a JSON body::

    {"idempotency_key": "<cluster id>/<partition>/<cursor>", "cluster_id": "...",
     "partition": 3, "alert": {"account_id": ..., "metric_code": ..., "threshold_code": ...,
     "value_at_cross": ..., "triggered_at": "RFC 3339", "cursor": 17}}

and the headers ``Idempotency-Key`` (the same key), ``X-Unimeter-Signature:
sha256=<hex HMAC-SHA256 of the raw body under the webhook secret>`` and ``X-Unimeter-Attempt``
(1 for the first try). The body is the same on every attempt and from every leader, so a
receiver that stores the key of what it accepted turns at-least-once into exactly-once.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from unimeter.json_model import json_bytes, stored_alert_json
from unimeter.wire.messages import StoredAlert

IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_HEADER = "X-Unimeter-Signature"
ATTEMPT_HEADER = "X-Unimeter-Attempt"
_PREFIX = "sha256="
SECRET_BYTES_MIN = 16


class WebhookSecretError(ValueError):
    """The webhook secret file cannot be used."""


def load_webhook_secret(path: str | Path) -> bytes:
    try:
        raw = Path(path).read_bytes().strip()
    except OSError as exc:
        raise WebhookSecretError(f"cannot read the webhook secret file {path}: {exc}") from None
    if len(raw) < SECRET_BYTES_MIN:
        raise WebhookSecretError(
            f"the webhook secret in {path} is {len(raw)} bytes; use at least {SECRET_BYTES_MIN}"
        )
    return raw


def idempotency_key(cluster_id: str, partition: int, cursor: int) -> str:
    return f"{cluster_id}/{partition}/{cursor}"


def body_of(cluster_id: str, partition: int, alert: StoredAlert) -> bytes:
    return json_bytes(
        {
            "idempotency_key": idempotency_key(cluster_id, partition, alert.cursor),
            "cluster_id": cluster_id,
            "partition": partition,
            "alert": stored_alert_json(alert),
        }
    )


def signature(secret: bytes, body: bytes) -> str:
    return _PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` (the X-Unimeter-Signature value) signs ``body``: what a receiver
    runs before it trusts a delivery. Constant time."""
    if header is None or not header.startswith(_PREFIX):
        return False
    return hmac.compare_digest(signature(secret, body), header)
