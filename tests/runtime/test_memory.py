"""Giving memory back: which library mappings may be dropped, and that dropping them keeps the process working
while its resident set shrinks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from exo_actor.runtime.memory import LibraryMapping, library_vmas

SMAPS = """\
7f0000000000-7f0000400000 r--p 00000000 08:01 101 /usr/lib/libfoo.so.1
Size:               4096 kB
Rss:                1200 kB
Anonymous:             0 kB
7f0000400000-7f0000800000 r-xp 00400000 08:01 101 /usr/lib/libfoo.so.1
Size:               4096 kB
Rss:                 800 kB
Anonymous:             0 kB
7f0000800000-7f0000810000 r--p 00800000 08:01 101 /usr/lib/libfoo.so.1
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
7f0000810000-7f0000820000 rw-p 00810000 08:01 101 /usr/lib/libfoo.so.1
Size:                 64 kB
Rss:                   8 kB
Anonymous:             0 kB
7f0000900000-7f0000a00000 r--p 00000000 08:01 202 /cache/weights.pt
Size:               1024 kB
Rss:                1024 kB
Anonymous:             0 kB
7f0000a00000-7f0000b00000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
Anonymous:          1024 kB
7f0000b00000-7f0000b10000 r-xp 00000000 08:01 303 /site-packages/torch/lib/libtorch_cpu.so
Size:                 64 kB
Rss:                   0 kB
Anonymous:             0 kB
7f0000c00000-7f0000c10000 r-xp 00000000 08:01 404 /site-packages/numpy/_core/_umath.cpython-311-x86_64-linux-gnu.so
Size:                 64 kB
Rss:                  16 kB
Anonymous:             0 kB
"""


def test_only_clean_read_only_library_pages_are_listed():
    """Listed: read-only / executable library mappings holding only the file's pages. Not listed: a relocated
    (copy-on-write) RELRO segment, writable data, other files (the weights), anonymous memory, mappings with
    nothing resident."""
    numpy = "/site-packages/numpy/_core/_umath.cpython-311-x86_64-linux-gnu.so"
    assert library_vmas(SMAPS) == [
        LibraryMapping(0x7F0000000000, 0x7F0000400000, "/usr/lib/libfoo.so.1", 1200),
        LibraryMapping(0x7F0000400000, 0x7F0000800000, "/usr/lib/libfoo.so.1", 800),
        LibraryMapping(0x7F0000C00000, 0x7F0000C10000, numpy, 16),
    ]


def test_an_empty_or_truncated_smaps_lists_nothing():
    assert library_vmas("") == []
    assert library_vmas("7f0000000000-7f0000400000 r--p 00000000 08:01 101 /usr/lib/libfoo.so.1\n") == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps is Linux's")
def test_released_library_pages_shrink_the_resident_set_and_map_back_on_use():
    """A process that has imported numpy drops its libraries' clean pages (its resident set falls by about as
    much), then computes the same result as before: the pages map back from the file."""
    script = textwrap.dedent(
        """
        import json
        import numpy as np
        from exo_actor.runtime.memory import release_library_pages, rss_bytes

        a = np.arange(1, 65, dtype=np.float64).reshape(8, 8)
        before_value = float(np.linalg.inv(a + 64 * np.eye(8)).sum())
        before = rss_bytes()
        released = release_library_pages()
        after = rss_bytes()
        again = float(np.linalg.inv(a + 64 * np.eye(8)).sum())
        print(json.dumps([before, after, released * 1024, before_value, again]))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    before, after, released, value, again = json.loads(out.stdout.strip().splitlines()[-1])
    assert released > 2**20, released  # numpy's and Python's own libraries: several MiB
    assert before - after > released / 2, (before, after, released)
    assert again == value
