"""The node's process tuning: the allocator keeps large buffers in mappings of their own."""

from __future__ import annotations

import platform

import pytest

from unimeter.node_cli import tune_malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_malloc_sets_a_fixed_mmap_threshold_on_glibc() -> None:
    assert tune_malloc() is True
