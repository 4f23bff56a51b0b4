"""Giving freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import sys
from typing import NamedTuple

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # Linux's value (asm-generic/mman-common.h)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, found once (find_library runs ldconfig in a subprocess); None where it cannot load."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except (OSError, TypeError):
        return None


def release_freed_memory() -> None:
    """Collect garbage, then ask glibc to return free heap pages (malloc_trim).

    A node that re-plans drops one shard's weights and loads another's; glibc keeps the freed
    blocks for reuse (its mmap threshold grows after large frees, so later arrays land on the heap),
    and without this a shard process stays as large as the biggest shard it ever held. No-op where
    the C library has no malloc_trim (macOS, musl). Then the shared libraries' pages go too
    (release_library_pages).
    """
    gc.collect()
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    release_library_pages()


class LibraryMapping(NamedTuple):
    start: int
    end: int
    path: str
    rss_kib: int


def library_vmas(smaps: str) -> list[LibraryMapping]:
    """The shared-library mappings in a /proc/PID/smaps text that hold only the file's own pages: not
    writable and no private (copy-on-write) page. Dropping such pages loses nothing: the next access maps
    them again from the file (relocated RELRO pages and data show as Anonymous and are never listed)."""
    found: list[LibraryMapping] = []
    header: list[str] | None = None
    rss = anonymous = 0

    def close() -> None:
        if header is None:
            return
        path = header[5] if len(header) > 5 else ""
        library = path.endswith(".so") or ".so." in path
        if library and "w" not in header[1] and anonymous == 0 and rss > 0:
            lo, _, hi = header[0].partition("-")
            found.append(LibraryMapping(int(lo, 16), int(hi, 16), path, rss))

    for line in smaps.splitlines():
        fields = line.split()
        if not fields:
            continue
        if not fields[0].endswith(":") and "-" in fields[0]:  # a mapping: range perms offset dev inode [path]
            close()
            header, rss, anonymous = fields, 0, 0
        elif header is not None and fields[0] == "Rss:":
            rss = int(fields[1])
        elif header is not None and fields[0] == "Anonymous:":
            anonymous = int(fields[1])
    close()
    return found


def release_library_pages() -> int:
    """Unmap the pages of shared libraries this process touched but does not hold privately, and drop
    those no process maps from the page cache; returns the KiB unmapped (0 off Linux).

    Importing torch touches tens of MiB of its libraries' code that no decode pass runs again. Worse,
    right after pip writes a library the page cache holds it in large folios, and the kernel's
    fault-around maps a whole folio around each page touched (measured on Linux 6.18): a torch node then
    shows ~150 MiB of libtorch_cpu.so resident instead of ~25. Mapped code is also what the kernel reclaims last,
    ahead of the model's weights. After a load the node unmaps these pages and advises the files' cache
    away (POSIX_FADV_DONTNEED skips pages other processes map); the next passes read back the few MiB
    they run, in ordinary read-around sizes. Only clean pages of read-only mappings are dropped
    (MADV_DONTNEED on them is a refault, never a loss of data).
    """
    if not sys.platform.startswith("linux"):
        return 0
    libc = _libc()
    if libc is None:
        return 0
    try:
        with open("/proc/self/smaps") as f:
            vmas = library_vmas(f.read())
    except OSError:
        return 0
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for vma in vmas:
        if madvise(vma.start, vma.end - vma.start, MADV_DONTNEED) == 0:
            released += vma.rss_kib
    for path in {vma.path for vma in vmas}:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        finally:
            os.close(fd)
    log.debug("released %.1f MiB of shared-library pages", released / 1024)
    return released


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (0 where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return 0
