"""The `exo-actor` command line: `main` runs one command and turns an ExoError into one line and exit code 1."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from ..errors import ExoError
from .flags import check_engine_env
from .parser import build_parser

__all__ = ["build_parser", "main"]

log = logging.getLogger("exo_actor")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse argv (default: sys.argv[1:]), run the command, return the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # its retry warnings would bury the one-line error a failed download ends with
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        check_engine_env(args)
        code: int = args.func(args)
        return code
    except ExoError as exc:
        if args.verbose:
            log.exception("failed")
        print(f"exo-actor: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("exo-actor: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("exo-actor: error: out of memory (try a smaller model or more shards across devices)", file=sys.stderr)
        return 1
