"""`exo-actor models`: the registry, and where each model is on this machine."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .flags import Subparsers


def add_parser(sub: Subparsers) -> None:
    """Register `models`."""
    models = sub.add_parser("models", help="list the registry and what is available locally")
    models.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Print a table: name, architecture, layers, Hub repo, local path (or -)."""
    from ..storage.registry import load_registry, local_path

    rows = [("NAME", "ARCH", "LAYERS", "HUGGING FACE REPO", "LOCAL")]
    for e in load_registry().values():
        path = local_path(e)
        rows.append((e.name, e.architecture, str(e.layers), e.hf_repo, str(path) if path else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])
    return 0
