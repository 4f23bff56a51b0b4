"""A download's progress drawn as a tqdm bar on stderr (`run` and `download`)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from ..storage.downloads import Progress


@contextlib.contextmanager
def progress_bar() -> Iterator[Progress]:
    """A download Progress drawn as a tqdm bar on stderr (bytes, speed, time left)."""
    from tqdm import tqdm

    from ..storage.downloads import Progress

    bar: list[tqdm[NoReturn]] = []

    def draw(p: Progress) -> None:
        if p.state != "downloading" or not p.total_bytes:
            return
        if not bar:
            bar.append(
                tqdm(
                    total=p.total_bytes,
                    initial=p.done_bytes,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"downloading {p.repo}",
                    file=sys.stderr,
                    mininterval=0.5,
                )
            )
        b = bar[0]
        if b.total != p.total_bytes:
            b.total = p.total_bytes
        b.update(p.done_bytes - b.n)

    progress = Progress(draw)
    try:
        yield progress
    finally:
        if bar:
            bar[0].close()
