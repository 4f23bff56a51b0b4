"""`exo-actor keygen`: a new random cluster key."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .flags import Subparsers


def add_parser(sub: Subparsers) -> None:
    """Register `keygen`."""
    keygen = sub.add_parser("keygen", help="print a new random cluster key (for EXO_ACTOR_CLUSTER_KEY)")
    keygen.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Print a key for EXO_ACTOR_CLUSTER_KEY."""
    from ..transport.security import new_key

    print(new_key())
    return 0
