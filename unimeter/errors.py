"""The typed error tree, with retry policy on the class (aiokafka/trio style).

Every wire status maps to exactly one exception class (``STATUS_TO_ERROR``); the server
answers with a status, the client raises the matching class. ``retriable`` says whether the
client may retry automatically (always safe: ingest retries reuse producer sequence numbers);
``refresh_routing`` says the partition map should be fetched again first.
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    OK = 0
    BACKPRESSURE = 1
    NOT_LEADER = 2
    UNKNOWN_METRIC = 3
    ALREADY_EXISTS = 4
    NOT_FOUND = 5
    INVALID_REQUEST = 6
    PROTOCOL = 7
    AUTH = 8
    TIMEOUT = 9
    UNAVAILABLE = 10
    INTERNAL = 11


class UnimeterError(Exception):
    """Root of every error this package raises on purpose."""

    status: Status = Status.INTERNAL
    retriable: bool = False
    refresh_routing: bool = False

    def __init__(self, message: str = "", *, leader: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.leader = leader


class ServerError(UnimeterError):
    """The server failed the request (also the base of every server-reported error)."""


class BackpressureError(ServerError):
    """A mailbox is full or the disk is under its reserve: back off and retry."""

    status = Status.BACKPRESSURE
    retriable = True


class NotLeaderError(ServerError):
    """The node does not lead that partition (any more); ``leader`` names who does."""

    status = Status.NOT_LEADER
    retriable = True
    refresh_routing = True


class UnknownMetricError(ServerError):
    status = Status.UNKNOWN_METRIC


class AlreadyExistsError(ServerError):
    status = Status.ALREADY_EXISTS


class NotFoundError(ServerError):
    status = Status.NOT_FOUND


class InvalidRequestError(ServerError):
    """The request is malformed or breaks a limit; the message names the problem."""

    status = Status.INVALID_REQUEST


class ProtocolError(InvalidRequestError):
    """Bytes that are not a valid frame; the connection that sent them is closed."""

    status = Status.PROTOCOL


class AuthError(ServerError):
    status = Status.AUTH


class TimeoutError(UnimeterError):  # shadows the builtin on purpose: the promised name
    """The request's deadline passed before it was answered."""

    status = Status.TIMEOUT
    retriable = True


class UnavailableError(UnimeterError):
    """No node could serve the request right now (starting, no quorum, unreachable)."""

    status = Status.UNAVAILABLE
    retriable = True
    refresh_routing = True


class ClosedError(UnimeterError):
    """The client was closed by its owner; distinct from a connection the peer broke."""

    status = Status.UNAVAILABLE


STATUS_TO_ERROR: dict[Status, type[UnimeterError]] = {
    Status.BACKPRESSURE: BackpressureError,
    Status.NOT_LEADER: NotLeaderError,
    Status.UNKNOWN_METRIC: UnknownMetricError,
    Status.ALREADY_EXISTS: AlreadyExistsError,
    Status.NOT_FOUND: NotFoundError,
    Status.INVALID_REQUEST: InvalidRequestError,
    Status.PROTOCOL: ProtocolError,
    Status.AUTH: AuthError,
    Status.TIMEOUT: TimeoutError,
    Status.UNAVAILABLE: UnavailableError,
    Status.INTERNAL: ServerError,
}


def error_for(status: int, message: str, leader: str | None = None) -> UnimeterError:
    """The exception for a wire status; an unknown status becomes a plain ``ServerError``."""
    try:
        cls = STATUS_TO_ERROR[Status(status)]
    except ValueError:
        return ServerError(f"unknown status {status}: {message}")
    return cls(message, leader=leader)
