"""64-bit hashes computed a whole column at a time (numpy, arithmetic modulo 2**64).

Event-id keys. An event with an id is stored at most once per (metric, account, id) within the
dedup window (docs/semantics.md, section 8). The partition leader hashes each id once, here,
and the hashes travel in the log entry, so followers and replay never hash again. The key is
defined so that any implementation can reproduce it (docs/architecture.md gives vectors):

    code_key(code) = the first 8 bytes of blake2b(UTF-8 code, digest_size=8), little-endian
    w_0 .. w_7     = the id's UTF-8 bytes (1..64 of them) zero-padded to 64 bytes, read as
                     eight little-endian 64-bit words
    P_j            = mix64(j) | 1 for j = 0..7 (``unimeter.routing.mix64``: odd multipliers)
    A = 0xC2B2AE3D27D4EB4F
    h = fmix((w_0 * P_0 + ... + w_7 * P_7) ^ (L * 0x9E3779B97F4A7C15) ^ code_key(code)
             ^ (account_id * A))                                     (L = the id's byte length)

where ``fmix`` is the finalizer of ``mix64`` (``mix64`` without its additive constant), a
bijection. The word sum is one matrix product for a whole batch whatever the ids' lengths; a
difference confined to one word, or to the account, can never cancel (the multipliers are odd,
so invertible modulo 2**64); ``fmix`` then spreads every input bit over the key.
"""

from __future__ import annotations

from functools import lru_cache
from hashlib import blake2b
from typing import Any

import numpy as np
import numpy.typing as npt

from unimeter import limits
from unimeter.routing import mix64
from unimeter.wire.batch import EventBatch

Array = npt.NDArray[Any]

U64 = np.dtype("<u8")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ACCOUNT_MULT = np.uint64(0xC2B2AE3D27D4EB4F)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31 = (np.uint64(s) for s in (27, 30, 31))


def _finalize(h: Array) -> Array:
    """splitmix64's finalizer, in place on a uint64 array."""
    h ^= h >> _S30
    h *= _MIX1
    h ^= h >> _S27
    h *= _MIX2
    h ^= h >> _S31
    return h


def mix64_many(x: Array) -> Array:
    """``unimeter.routing.mix64`` of every item of a uint64 array."""
    h = x.astype(U64, copy=True)
    h += _GOLDEN
    return _finalize(h)


def partitions_of(accounts: Array, partitions: int) -> Array:
    """``routing.partition_of`` for a column of account ids."""
    return mix64_many(accounts) % np.uint64(partitions)


@lru_cache(maxsize=4096)
def code_key(code: str) -> int:
    return int.from_bytes(blake2b(code.encode(), digest_size=8).digest(), "little")


_WORDS_MAX = 8  # 64 bytes: limits.event_id_bytes_max
_MULTIPLIERS = np.array([mix64(j) | 1 for j in range(_WORDS_MAX)], dtype=U64)
assert limits.event_id_bytes_max <= 8 * _WORDS_MAX


# MASKS[r]: the low r bytes of a word (r = 0..8 bytes of the id left in it).
_MASKS = np.array([(1 << (8 * r)) - 1 for r in range(9)], dtype=U64)


def _word_sum(data: bytes, starts: Array, lengths: Array) -> Array:
    """``w_0 * P_0 + ... + w_7 * P_7`` for every id, a uint64 array.

    Ids of one length lying back to back (a batch's ids do, unless some events lack one) are a
    reshape of the buffer and one matrix product. Otherwise each word is read for every id at
    once through an unaligned 8-byte view of the buffer and masked to the id's length.
    """
    k = len(starts)
    first = int(lengths[0])
    start = int(starts[0])
    end = int(starts[-1]) + int(lengths[-1])
    if end - start == k * first and bool((lengths == first).all()):
        width = (first + 7) // 8 * 8
        out = np.zeros((k, width), dtype=np.uint8)
        out[:, :first] = np.frombuffer(data, dtype=np.uint8)[start:end].reshape(k, first)
        words = out.view(U64)
        return words @ _MULTIPLIERS[: words.shape[1]]
    padded = data + bytes(8)
    unaligned = np.ndarray(shape=(len(data) + 1,), dtype=U64, buffer=padded, strides=(1,))
    top = len(data)
    h = np.zeros(k, dtype=U64)
    for j in range((int(lengths.max()) + 7) // 8):
        left = lengths - 8 * j
        word = unaligned[np.minimum(starts + 8 * j, top)]
        word &= _MASKS[np.clip(left, 0, 8)]
        word *= _MULTIPLIERS[j]
        h += word
    return h


def event_id_keys(
    data: bytes, starts: Array, lengths: Array, code_keys: Array, accounts: Array
) -> Array:
    """The key of each id ``data[starts[i] : starts[i] + lengths[i]]`` (lengths >= 1) under
    metric code key ``code_keys[i]`` and account ``accounts[i]``; a uint64 array."""
    if not len(starts):
        return np.zeros(0, U64)
    h = _word_sum(data, starts, lengths)
    h ^= lengths.astype(U64) * _GOLDEN
    h ^= code_keys
    h ^= accounts.astype(U64, copy=False) * _ACCOUNT_MULT
    return _finalize(h)


def event_id_key(code: str, account_id: int, event_id: str) -> int:
    """One key, the same function for a single id (reads, tests, other implementations)."""
    data = event_id.encode()
    keys = event_id_keys(
        data,
        np.zeros(1, np.int64),
        np.array([len(data)], np.int64),
        np.array([code_key(code)], U64),
        np.array([account_id], U64),
    )
    return int(keys[0])


def batch_id_keys(batch: EventBatch, mask: Array | None = None) -> Array | None:
    """The key of every event of ``batch`` that has an id (and is in ``mask``), in order; None
    when there is none. The leader's admission computes the same keys while it deduplicates."""
    data, offsets = batch.event_id_data, batch.event_id_offsets
    if data is None or offsets is None:
        return None
    lengths = np.diff(offsets.astype(np.int64))
    chosen = lengths > 0 if mask is None else (lengths > 0) & mask
    which = np.flatnonzero(chosen)
    if not len(which):
        return None
    code_keys = np.array([code_key(c) for c in batch.metric_codes], U64)
    return event_id_keys(
        data,
        offsets[:-1][which].astype(np.int64),
        lengths[which],
        code_keys[batch.metric_index[which]],
        batch.account_ids[which],
    )
