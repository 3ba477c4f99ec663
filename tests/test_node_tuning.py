"""The node's process tuning: the allocator keeps large buffers in mappings of their own.

glibc maps blocks of 128 KiB and more separately, but raises that threshold to the size of
each mapped block freed; the node fixes it (``node_cli.tune_malloc``). Each check runs in a
fresh interpreter, so the heap holds no free block that could serve the probe's buffer: there,
after a mapped 8 MiB block is freed, a 1 MiB buffer is mapped only if the threshold stayed
fixed (glibc counts mapped blocks in ``mallinfo2().hblks``).
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from unimeter.node_cli import tune_malloc

_PROBE = """
import ctypes, ctypes.util, sys
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    from unimeter.node_cli import tune_malloc
    assert tune_malloc()
libc.free(libc.malloc(8 << 20))
before = libc.mallinfo2().hblks
libc.malloc(1 << 20)
print(libc.mallinfo2().hblks - before)
"""


def _mapped_after_a_large_free(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=60, check=True
    )
    return int(out.stdout)


@pytest.mark.parametrize("mode, mapped", [("tuned", 1), ("untuned", 0)])
def test_large_buffers_stay_mapped_only_when_tuned(mode: str, mapped: int) -> None:
    if platform.libc_ver()[0] != "glibc":
        assert tune_malloc() is False  # no mallopt: the node runs untuned, and says so
        return
    assert _mapped_after_a_large_free(mode) == mapped
