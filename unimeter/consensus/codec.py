"""Raft messages to CBOR-ready lists and back, for the peer link.

Each message travels as ``[tag, group, src, dst, term, ...fields]``; a log entry as
``[term, index, data]``. ``group`` is the partition number, or ``CATALOG_GROUP`` for the
metric catalog. Decoding checks shapes and types and raises ``PeerMessageError`` on anything
malformed: a peer link that sends garbage is closed, never trusted.
"""

from __future__ import annotations

from typing import Any

from unimeter.consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    LogEntry,
    Message,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)

CATALOG_GROUP = -1


class PeerMessageError(Exception):
    """A peer sent something that is not a Raft message of this protocol."""


def _entry(e: LogEntry) -> list[Any]:
    return [e.term, e.index, e.data]


def encode_message(group: int, msg: Message) -> list[Any]:
    head = [group, msg.src, msg.dst, msg.term]
    if isinstance(msg, AppendEntries):
        return [
            1,
            *head,
            msg.prev_index,
            msg.prev_term,
            [_entry(e) for e in msg.entries],
            msg.leader_commit,
        ]
    if isinstance(msg, AppendEntriesResponse):
        return [
            2,
            *head,
            msg.success,
            msg.match_index,
            msg.rejected_index,
            msg.hint_index,
            msg.hint_term,
        ]
    if isinstance(msg, Heartbeat):
        return [3, *head, msg.commit]
    if isinstance(msg, HeartbeatResponse):
        return [4, *head]
    if isinstance(msg, RequestVote):
        return [5, *head, msg.last_index, msg.last_term, msg.pre_vote, msg.transfer]
    if isinstance(msg, RequestVoteResponse):
        return [6, *head, msg.granted, msg.pre_vote]
    if isinstance(msg, InstallSnapshot):
        meta = msg.snapshot.meta
        return [7, *head, meta.index, meta.term, list(meta.members), msg.snapshot.data]
    if isinstance(msg, InstallSnapshotResponse):
        return [8, *head, msg.match_index]
    if isinstance(msg, TimeoutNow):
        return [9, *head]
    raise AssertionError(f"unknown raft message {msg!r}")


def _int(x: object) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise PeerMessageError(f"expected an integer, got {type(x).__name__}")
    return x


def _bool(x: object) -> bool:
    if not isinstance(x, bool):
        raise PeerMessageError(f"expected a boolean, got {type(x).__name__}")
    return x


def _bytes(x: object) -> bytes:
    if not isinstance(x, bytes):
        raise PeerMessageError(f"expected bytes, got {type(x).__name__}")
    return x


def decode_message(item: object) -> tuple[int, Message]:
    """``(group, message)`` from what ``encode_message`` produced."""
    if not isinstance(item, list) or len(item) < 5:
        raise PeerMessageError("a raft message is a list of at least 5 items")
    tag, group, src, dst, term = (_int(x) for x in item[:5])
    rest = item[5:]
    head = {"src": src, "dst": dst, "term": term}
    try:
        msg: Message
        if tag == 1:
            prev_index, prev_term, raw, commit = rest
            if not isinstance(raw, list):
                raise PeerMessageError("entries must be a list")
            entries = tuple(
                LogEntry(term=_int(e[0]), index=_int(e[1]), data=_bytes(e[2])) for e in raw
            )
            msg = AppendEntries(
                **head,
                prev_index=_int(prev_index),
                prev_term=_int(prev_term),
                entries=entries,
                leader_commit=_int(commit),
            )
        elif tag == 2:
            ok, match, rejected, hint_index, hint_term = rest
            msg = AppendEntriesResponse(
                **head,
                success=_bool(ok),
                match_index=_int(match),
                rejected_index=_int(rejected),
                hint_index=_int(hint_index),
                hint_term=_int(hint_term),
            )
        elif tag == 3:
            (commit,) = rest
            msg = Heartbeat(**head, commit=_int(commit))
        elif tag == 4:
            if rest:
                raise PeerMessageError("heartbeat response has no fields")
            msg = HeartbeatResponse(**head)
        elif tag == 5:
            last_index, last_term, pre_vote, transfer = rest
            msg = RequestVote(
                **head,
                last_index=_int(last_index),
                last_term=_int(last_term),
                pre_vote=_bool(pre_vote),
                transfer=_bool(transfer),
            )
        elif tag == 6:
            granted, pre_vote = rest
            msg = RequestVoteResponse(**head, granted=_bool(granted), pre_vote=_bool(pre_vote))
        elif tag == 7:
            index, snap_term, members, data = rest
            if not isinstance(members, list):
                raise PeerMessageError("members must be a list")
            meta = SnapshotMeta(
                index=_int(index), term=_int(snap_term), members=tuple(_int(x) for x in members)
            )
            msg = InstallSnapshot(**head, snapshot=Snapshot(meta=meta, data=_bytes(data)))
        elif tag == 8:
            (match,) = rest
            msg = InstallSnapshotResponse(**head, match_index=_int(match))
        elif tag == 9:
            if rest:
                raise PeerMessageError("TimeoutNow has no fields")
            msg = TimeoutNow(**head)
        else:
            raise PeerMessageError(f"unknown raft message tag {tag}")
    except (ValueError, TypeError, IndexError) as exc:
        raise PeerMessageError(f"malformed raft message (tag {tag}): {exc}") from None
    return group, msg
