"""Everything a PartitionState holds except caches, as plain values.

Two states with equal ``structure`` answer every read and apply every later entry the same
way: the snapshot tests compare a restored state with its original through it. It is the
snapshot's CBOR map with every column blob replaced by its values, so a difference shows as a
readable diff of named fields rather than of bytes. The snapshot writes no caches (recurring
sets, the sorted order of sealed event chunks), and every container in insertion or id order,
so equal structures mean equal state.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2
import numpy as np

from unimeter.state.partition_state import PartitionState

_HEAD = struct.Struct("<4sHQ")


def _resolve(obj: Any, blobs: memoryview) -> Any:
    if isinstance(obj, list):
        if (
            len(obj) == 3
            and all(isinstance(x, int) for x in obj[:2])
            and isinstance(obj[2], str)
            and obj[2][:1] in "<>|="
        ):
            offset, length, dtype = obj
            return ("array", dtype, np.frombuffer(blobs[offset : offset + length], dtype).tolist())
        return [_resolve(x, blobs) for x in obj]
    if isinstance(obj, dict):
        return {k: _resolve(v, blobs) for k, v in obj.items()}
    return obj


def structure(state: PartitionState) -> Any:
    data = state.snapshot()
    _, _, body_bytes = _HEAD.unpack_from(data)
    view = memoryview(data)
    body = cbor2.loads(view[_HEAD.size : _HEAD.size + body_bytes])
    return _resolve(body, view[_HEAD.size + body_bytes :])
