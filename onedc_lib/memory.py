"""The process's memory on glibc (Linux): freed tensors' memory given back to the system.

PyTorch's CPU tensors come from malloc. glibc maps a block of its own for an allocation above its mmap threshold
(which grows up to 32 MiB as mapped blocks are freed) and serves smaller ones from its heap, where freed memory
stays in the process (its RSS) until malloc trims. `trim()` (malloc_trim) gives back what the heap holds free:
0.36 GiB after casting the sd15 weights to bf16 (OneDC.cast_weights calls it, as does OneDC.keep_only).

Measured and not adopted: fixing the mmap threshold at 1 MiB (mallopt) returned freed maps at once (the sd15 VAE
encode at 2048 x 1408 in bf16 left 1.02 GiB RSS, not 1.30; peaks 0.02-0.3 GiB lower) but cost a third more CPU
time at 768 x 512 (3.6 -> 4.9 CPU s, the page faults of fresh mappings; 8 MiB: 4.7 s; 32 MiB fixed: 4.2 s).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.lru_cache(maxsize=None)
def _glibc():
    """glibc's handle, or None (another C library or system)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _ = libc.gnu_get_libc_version, libc.malloc_trim  # musl and others have neither
    except (OSError, AttributeError):
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def trim() -> bool:
    """Gives the memory glibc's heap holds free back to the system (malloc_trim(0)); True where some was
    returned, False where none was or off glibc."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
