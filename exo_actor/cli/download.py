"""`exo-actor download`: a model from the Hugging Face Hub, or only the files some layers need."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExoError
from .progress import progress_bar

if TYPE_CHECKING:
    from .flags import Subparsers


def add_parser(sub: Subparsers) -> None:
    """Register `download` and its flags."""
    dl = sub.add_parser(
        "download",
        help="download a model from the Hugging Face Hub (only the files some layers need, with --layers)",
    )
    dl.add_argument("model", help="registry name or Hugging Face repo id (ORG/NAME)")
    dl.add_argument(
        "--layers", help="A-B: only the weights files holding layers A..B (plus embedding/head at the ends)"
    )
    dl.add_argument("--dir", help="where to put it (default: $EXO_HOME/models/NAME)")
    dl.add_argument("--revision", default="main", help="branch, tag or commit (main)")
    dl.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Download into --dir (or $EXO_HOME/models/NAME) and print where it went."""
    from ..storage.downloads import download
    from ..storage.model_store import is_repo_id
    from ..storage.registry import exo_home, load_registry

    entry = load_registry().get(args.model)
    repo = entry.hf_repo if entry else args.model
    if entry is None and not is_repo_id(repo):
        raise ExoError(f"{args.model!r} is neither a registry name nor a Hugging Face repo id (ORG/NAME)")
    dest = Path(args.dir) if args.dir else exo_home() / "models" / (entry.name if entry else repo.replace("/", "--"))
    layers = _layer_range(args.layers) if args.layers else None
    with progress_bar() as progress:
        path = download(repo, dest, layers, revision=args.revision, progress=progress)
    print(path)
    return 0


def _layer_range(text: str) -> tuple[int, int]:
    """--layers A-B as the half-open range (A, B + 1)."""
    first, sep, last = text.partition("-")
    if not (sep and first.isdigit() and last.isdigit() and int(first) <= int(last)):
        raise ExoError(f"--layers {text}: expected A-B with A <= B (e.g. 0-15)")
    return int(first), int(last) + 1
