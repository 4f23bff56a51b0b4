"""Giving freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def release_freed_memory() -> None:
    """Collect garbage, then ask glibc to return free heap pages (malloc_trim).

    A node that re-plans drops one shard's weights and loads another's; glibc keeps the freed
    blocks for reuse (its mmap threshold grows after large frees, so later arrays land on the heap),
    and without this a shard process stays as large as the biggest shard it ever held. No-op where
    the C library has no malloc_trim (macOS, musl).
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (0 where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return 0
