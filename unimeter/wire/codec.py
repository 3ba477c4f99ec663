"""The sans-I/O connection codecs: bytes in, message objects out, and back (h11 style).

Theory of operation. A frame is ``u32 big-endian length | CBOR item`` (``frames.py``). A request
item is ``[kind, request_id, body]``, a response item ``[status, request_id, body]``; bodies are
maps described in ``bodies.py``. Many requests may be in flight on one connection and replies
may come back in any order, so the client side remembers the kind of every request it sent,
keyed by request id, to know how to read the reply.

The server may also send *pushes* for live alert subscriptions: ``[push_kind, subscription_id,
body]`` with a negative ``push_kind`` (a reply status never is). Only a client that
subscribes reads them (``ClientCodec.next_event``); ``next_frame`` treats one as a protocol
error, so code that never subscribes keeps its simple reply-only loop.

Two kinds of failure, kept apart on purpose:
- ``errors.ProtocolError`` (connection-fatal): bad framing, bytes that are not one CBOR item,
  a top-level item of the wrong shape, a request id out of range; on the client side also a
  malformed reply body or a reply to a request that was never sent. Nothing after it can be
  trusted, so the codec stays broken and the connection must be closed.
- ``BadRequest`` (server side only): a well-framed request whose kind or body is invalid. It
  carries the request id, so the server answers INVALID_REQUEST and keeps the connection.

Neither codec ever touches a socket; ``next_frame`` never raises anything but ProtocolError.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from struct import Struct
from typing import Any

from cbor2 import dumps

from unimeter import errors, limits
from unimeter.wire import messages as m
from unimeter.wire.bodies import decode_push, decode_reply, decode_request, encode_body
from unimeter.wire.convert import BodyError
from unimeter.wire.fast_ingest import ingest_frame, ingest_reply
from unimeter.wire.fast_read import agg_reply, read_body
from unimeter.wire.frames import FrameDecoder, encode_frame

__all__ = [
    "ANNOUNCED_LIMITS",
    "BadRequest",
    "ClientCodec",
    "FrameDecoder",
    "ServerCodec",
    "announced_limits",
    "encode_frame",
]

REQUEST_ID_MAX = 2**64 - 1
STATUS_MAX = 2**32 - 1
_PREFIX = Struct(">I")

# The limits a node announces in WELCOME, by their names in ``unimeter.limits``.
ANNOUNCED_LIMITS = (
    "frame_bytes_max",
    "events_per_batch_max",
    "string_bytes_max",
    "metric_code_bytes_max",
    "event_id_bytes_max",
    "properties_per_event_max",
    "property_key_bytes_max",
    "property_value_bytes_max",
    "dimensions_per_metric_max",
    "group_by_keys_max",
    "list_page_events_max",
    "list_page_alerts_max",
    "in_flight_requests_per_connection_max",
    "alert_subscriptions_per_connection_max",
)


def announced_limits(*, frame_bytes_max: int = limits.frame_bytes_max) -> dict[str, int]:
    """The ``limits`` map of a WELCOME reply."""
    out: dict[str, int] = {name: getattr(limits, name) for name in ANNOUNCED_LIMITS}
    out["frame_bytes_max"] = frame_bytes_max
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class BadRequest:
    """A well-framed request whose kind or body is invalid: answer INVALID_REQUEST, keep going."""

    request_id: int
    kind: int
    message: str  # names the problem, e.g. "Query.account_id: expected an integer in ..."


def _split(item: Any, side: str) -> tuple[int, int, Any]:
    """The three parts of a top-level item, or ProtocolError."""
    if type(item) is not list or len(item) != 3:
        raise errors.ProtocolError(f"a {side} must be an array of 3 items")
    head, request_id, body = item
    if type(head) is not int or type(request_id) is not int:
        raise errors.ProtocolError(f"a {side} must start with two integers")
    if not 0 <= request_id <= REQUEST_ID_MAX:
        raise errors.ProtocolError(f"request id {request_id} is outside [0, 2**64)")
    return head, request_id, body


class ClientCodec:
    """The client end of one connection."""

    __slots__ = ("_decoder", "_forgotten", "_pending", "frame_bytes_max")

    def __init__(self, *, frame_bytes_max: int = limits.frame_bytes_max) -> None:
        self.frame_bytes_max = frame_bytes_max
        self._decoder = FrameDecoder(frame_bytes_max=frame_bytes_max)
        self._pending: dict[int, m.Kind] = {}
        # Ids given up on whose replies may still arrive. Bounded, oldest dropped first: a reply
        # to a dropped id then counts as unknown, which only a peer that sat on thousands of
        # requests can cause.
        self._forgotten: OrderedDict[int, None] = OrderedDict()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def encode_request(self, request_id: int, message: m.Request) -> bytes:
        """The whole frame for ``message``; remembers its kind until the reply is decoded.

        Raises ``errors.InvalidRequestError`` if the frame exceeds ``frame_bytes_max`` (split
        the batch) and ``ValueError`` if ``request_id`` is out of range or still in use.
        """
        if not 0 <= request_id <= REQUEST_ID_MAX:
            raise ValueError(f"request id {request_id} is outside [0, 2**64)")
        if request_id in self._pending or request_id in self._forgotten:
            raise ValueError(f"request id {request_id} is still awaiting its reply")
        kind = message.KIND
        frame = ingest_frame(request_id, message) if type(message) is m.Ingest else None
        if frame is None:
            body = read_body(message)  # a read's body map without the field table, or None
            if body is None:
                body = encode_body(message)
            frame = encode_frame([int(kind), request_id, body])
        if len(frame) - 4 > self.frame_bytes_max:
            raise errors.InvalidRequestError(
                f"{type(message).__name__} frame of {len(frame) - 4} bytes exceeds "
                f"frame_bytes_max={self.frame_bytes_max}"
            )
        self._pending[request_id] = kind
        return frame

    def forget(self, request_id: int) -> None:
        """The caller gave up on a request; its reply, if it ever comes, is dropped."""
        if self._pending.pop(request_id, None) is None:
            return
        self._forgotten[request_id] = None
        if len(self._forgotten) > limits.in_flight_requests_per_connection_max:
            self._forgotten.popitem(last=False)

    def feed(self, data: bytes) -> None:
        self._decoder.feed(data)

    def next_frame(self) -> m.ResponseFrame | None:
        """The next reply, or None until more bytes arrive; ProtocolError on anything bad
        (a push included: use ``next_event`` on a connection that subscribes)."""
        frame = self.next_event()
        if isinstance(frame, m.PushFrame):
            exc = errors.ProtocolError("a push arrived on a connection that never subscribed")
            self._decoder.fail(exc.message)
            raise exc
        return frame

    def next_event(self) -> m.ResponseFrame | m.PushFrame | None:
        """The next reply or push, or None until more bytes arrive; ProtocolError on
        anything bad."""
        decoder = self._decoder
        try:
            while True:
                payload = decoder.next_payload()
                if payload is None:
                    return None
                fast = ingest_reply(payload)
                if fast is not None and self._pending.get(fast[0]) is m.Kind.INGEST:
                    request_id, reply = fast
                    del self._pending[request_id]
                    return m.ResponseFrame(
                        request_id=request_id, status=0, kind=m.Kind.INGEST, message=reply
                    )
                item = decoder.item_of(payload)
                read = self._read_reply(item)
                if read is not None:
                    return read
                frame = self._response(item)
                if frame is not None:
                    return frame
        except errors.ProtocolError as exc:
            self._decoder.fail(exc.message)  # nothing after it can be trusted
            raise

    def _read_reply(self, item: Any) -> m.ResponseFrame | None:
        """The OK reply to a QUERY or QUERY_REALTIME in flight, read without the field table
        (``fast_read.agg_reply``); None for any other item, which ``_response`` then takes."""
        if type(item) is not list or len(item) != 3 or item[0] != 0:
            return None
        request_id = item[1]
        if type(request_id) is not int:
            return None
        kind = self._pending.get(request_id)
        if kind is not m.Kind.QUERY and kind is not m.Kind.QUERY_REALTIME:
            return None
        reply = agg_reply(item[2])
        if reply is None:
            return None
        del self._pending[request_id]
        return m.ResponseFrame(request_id=request_id, status=0, kind=kind, message=reply)

    def _response(self, item: Any) -> m.ResponseFrame | m.PushFrame | None:
        status, request_id, body = _split(item, "response")
        if status < 0:
            return _push(status, request_id, body)
        if status > STATUS_MAX:
            raise errors.ProtocolError(f"status {status} is outside [0, 2**32)")
        if status == errors.Status.PROTOCOL:
            # The server found our bytes unreadable and is closing: fatal whatever the id.
            raise errors.ProtocolError(f"the server refused the connection: {_message_of(body)}")
        kind = self._pending.pop(request_id, None)
        if kind is None:
            if request_id in self._forgotten:
                del self._forgotten[request_id]
                return None  # a late reply to a request given up on
            raise errors.ProtocolError(f"reply to request id {request_id}, which is not in flight")
        cls = m.REPLY_OF[kind] if status == errors.Status.OK else m.ErrorReply
        try:
            message = decode_reply(cls, body)
        except BodyError as exc:
            raise errors.ProtocolError(f"malformed {kind.name} reply: {exc}") from None
        except Exception as exc:  # a decoder bug; see ServerCodec._request
            raise errors.ProtocolError(
                f"internal error decoding a {kind.name} reply: {exc!r}"
            ) from None
        return m.ResponseFrame(request_id=request_id, status=status, kind=kind, message=message)


def _push(raw_kind: int, subscription_id: int, body: Any) -> m.PushFrame:
    try:
        kind = m.PushKind(raw_kind)
    except ValueError:
        raise errors.ProtocolError(f"unknown push kind {raw_kind}") from None
    try:
        message = decode_push(kind, body)
    except BodyError as exc:
        raise errors.ProtocolError(f"malformed {kind.name} push: {exc}") from None
    except Exception as exc:  # a decoder bug; see ServerCodec._request
        raise errors.ProtocolError(f"internal error decoding a {kind.name} push: {exc!r}") from None
    return m.PushFrame(subscription_id=subscription_id, message=message)


def _message_of(body: Any) -> str:
    if type(body) is dict and type(body.get("msg")) is str:
        return str(body["msg"])
    return "(no message)"


class ServerCodec:
    """The server end of one connection."""

    __slots__ = ("_decoder", "decoder", "feed", "frame_bytes_max", "next_item")

    def __init__(self, *, frame_bytes_max: int = limits.frame_bytes_max) -> None:
        self.frame_bytes_max = frame_bytes_max
        self._decoder = self.decoder = decoder = FrameDecoder(frame_bytes_max=frame_bytes_max)
        # The frame decoder's own methods, bound once (the request path calls them per frame):
        # ``feed(data)`` buffers bytes; ``next_item()`` is the next frame's top-level item as
        # decoded CBOR, or None until more bytes arrive (``request_of`` makes it a request; a
        # fast path may read it directly first). The decoder breaks itself for good on any
        # ProtocolError it raises.
        self.feed: Callable[[bytes], None] = decoder.feed
        self.next_item: Callable[[], Any] = decoder.next_item

    @property
    def last_frame_bytes(self) -> int:
        """The payload size of the frame ``next_frame`` returned last (mailbox byte bounds)."""
        return self._decoder.last_payload_bytes

    def next_frame(self) -> m.RequestFrame | m.PeerFrame | BadRequest | None:
        """The next request (or BadRequest), or None until more bytes arrive."""
        item = self.next_item()
        return None if item is None else self.request_of(item)

    def request_of(self, item: Any) -> m.RequestFrame | m.PeerFrame | BadRequest:
        """The request (or BadRequest) an item from ``next_item`` holds."""
        try:
            return self._request(item)
        except errors.ProtocolError as exc:
            self._decoder.fail(exc.message)
            raise

    def _request(self, item: Any) -> m.RequestFrame | m.PeerFrame | BadRequest:
        raw_kind, request_id, body = _split(item, "request")
        if raw_kind == m.Kind.PEER:
            # Peer traffic is decoded by the consensus layer, which checks every item.
            if type(body) is not list:
                return BadRequest(
                    request_id=request_id,
                    kind=raw_kind,
                    message="a PEER frame carries a list of raft messages",
                )
            return m.PeerFrame(items=body)
        try:
            kind = m.Kind(raw_kind)
        except ValueError:
            return BadRequest(
                request_id=request_id, kind=raw_kind, message=f"unknown request kind {raw_kind}"
            )
        try:
            message = decode_request(kind, body)
        except BodyError as exc:
            return BadRequest(request_id=request_id, kind=raw_kind, message=str(exc))
        except Exception as exc:
            # A decoder bug must not escape as a surprise exception type into the connection
            # actor; closing this one connection (and logging the message) is the safe answer.
            raise errors.ProtocolError(
                f"internal error decoding a {kind.name} request: {exc!r}"
            ) from None
        return m.RequestFrame(request_id=request_id, message=message)

    def encode_response(self, request_id: int, status: int, message: m.Reply) -> bytes:
        """The whole frame answering ``request_id``.

        ``message`` must be an ``ErrorReply`` exactly when ``status`` is not OK. Raises
        ``errors.ServerError`` if the reply exceeds ``frame_bytes_max``: answer with a short
        error instead.
        """
        if type(message) is m.IngestReply and not message.rejected and status == 0:
            # The reply of nearly every ingest, its body built here as the field table builds
            # it (same keys in the same order: ``tests/test_codec.py``), without the walk.
            reply = {"ns": message.n_stored, "nd": message.n_duplicates, "nr": message.n_rejected}
            if message.last_offset is not None:
                reply["lo"] = message.last_offset
            reply["li"] = message.log_index
            return encode_frame([0, request_id, reply])
        if (status == errors.Status.OK) == isinstance(message, m.ErrorReply):
            raise ValueError(f"status {status} cannot carry a {type(message).__name__}")
        frame = encode_frame([int(status), request_id, encode_body(message)])
        if len(frame) - 4 > self.frame_bytes_max:
            raise errors.ServerError(
                f"{type(message).__name__} reply of {len(frame) - 4} bytes exceeds "
                f"frame_bytes_max={self.frame_bytes_max}"
            )
        return frame

    def encode_ok(self, request_id: int, body: dict[str, Any]) -> bytes:
        """The whole OK frame answering ``request_id`` with a body already in wire form (the
        read fast path's reply template: the same bytes ``encode_response`` makes of the
        message that body encodes). For small bodies only: the frame limit is not checked."""
        payload = dumps([0, request_id, body])
        return _PREFIX.pack(len(payload)) + payload

    @staticmethod
    def reply_of(kind: int, body: dict[str, Any]) -> m.Reply:
        """The reply message an OK ``body`` in wire form encodes (for checks, not the path)."""
        return decode_reply(m.REPLY_OF[m.Kind(kind)], body)

    def encode_push(self, subscription_id: int, message: m.Push) -> bytes:
        """The whole push frame for the live subscription ``subscription_id``. The caller keeps
        pushes small (at most ``list_page_alerts_max`` alerts each), far below the frame limit.
        """
        frame = encode_frame([int(message.PUSH), subscription_id, encode_body(message)])
        assert len(frame) - 4 <= self.frame_bytes_max, len(frame)
        return frame
