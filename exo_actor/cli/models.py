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
    """Print the registry (name, architecture, layers, Hub repo, local path or -), then the model families
    this version runs and on which engines."""
    from ..storage.registry import load_registry, local_path

    rows: list[tuple[str, ...]] = [("NAME", "ARCH", "LAYERS", "HUGGING FACE REPO", "LOCAL")]
    for e in load_registry().values():
        path = local_path(e)
        rows.append((e.name, e.architecture, str(e.layers), e.hf_repo, str(path) if path else "-"))
    _table(rows)
    print()
    _table(family_rows())
    return 0


def family_rows() -> list[tuple[str, ...]]:
    """(family, config.json model_type, GGUF architecture, what it adds to Llama, engines that run it)."""
    from ..engines.base import ENGINE_FEATURES
    from ..models.config import FEATURE_NAMES
    from ..models.families import FAMILIES

    rows: list[tuple[str, ...]] = [("FAMILY", "CONFIG.JSON", "GGUF", "BEYOND LLAMA", "ENGINES")]
    for f in FAMILIES:
        engines = ", ".join(e for e, have in ENGINE_FEATURES.items() if f.features <= have)
        adds = ", ".join(FEATURE_NAMES[x] for x in sorted(f.features)) or "-"
        if f.optional:
            some = ", ".join(FEATURE_NAMES[x] for x in sorted(f.optional))
            adds += f" (some: {some})"
            engines += (
                " (with "
                + some
                + ": "
                + ", ".join(e for e, have in ENGINE_FEATURES.items() if f.optional <= have)
                + ")"
            )
        rows.append((f.name, f.model_type, f.gguf or "-", adds, engines))
    return rows


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
