"""Checks shared by the tests of the client codec's fast paths."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from unimeter import errors
from unimeter.wire.codec import ClientCodec


def frame_of(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def check_late_and_stray_replies(codec: ClientCodec, late_id: int, body: dict[str, Any]) -> None:
    """A reply to ``late_id``, given up on, is dropped; one to an id never sent (``late_id +
    1``) is a protocol error -- on whichever path the reply's shape takes."""
    codec.forget(late_id)
    codec.feed(frame_of(cbor2.dumps([0, late_id, body])))
    assert codec.next_frame() is None
    assert codec.in_flight == 0
    codec.feed(frame_of(cbor2.dumps([0, late_id + 1, body])))
    with pytest.raises(errors.ProtocolError, match="not in flight"):
        codec.next_frame()
