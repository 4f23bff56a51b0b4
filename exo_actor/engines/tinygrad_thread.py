"""The one thread every call into tinygrad runs on.

tinygrad keeps per-thread state: its compile cache is an SQLite connection that refuses use from any
thread but the one that opened it. Nodes call engines from several threads (loading, compute, the
event loop), so all tinygrad work is funnelled through here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

R = TypeVar("R")
_executor = ThreadPoolExecutor(1, "exo-tinygrad")
_thread: threading.Thread = _executor.submit(threading.current_thread).result()


def on_tinygrad_thread(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """fn(*args, **kwargs), run on the tinygrad thread (directly if already there)."""
    if threading.current_thread() is _thread:
        return fn(*args, **kwargs)
    return _executor.submit(fn, *args, **kwargs).result()
