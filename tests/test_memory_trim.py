import sys

import pytest

from onedc_lib import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_returns_freed_heap_memory():
    """Small blocks freed into glibc's heap: trim gives them back (a bool either way, never an error)."""
    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # 128 MB below the mmap threshold: the heap
    del blocks
    assert memory.trim() is (memory._glibc() is not None)
    assert isinstance(memory.trim(), bool)  # nothing left to give back: False, or True for a few pages
