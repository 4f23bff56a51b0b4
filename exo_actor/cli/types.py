"""argparse `type=` functions: text in, a checked value out, or an ArgumentTypeError argparse shows as one line."""

from __future__ import annotations

import argparse
import math

from ..sampling.params import MAX_DRAFT_TOKENS


def port(text: str) -> int:
    """A TCP/UDP port, 0-65535 (0: any free one, where that makes sense)."""
    value = positive_int(text) if text != "0" else 0
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (seconds, GiB, CPUs)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def int_at_least(text: str, minimum: int) -> int:
    """An integer >= minimum."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return int_at_least(text, 0)


def draft_tokens(text: str) -> int:
    """The longest speculative draft: 1 to MAX_DRAFT_TOKENS."""
    value = positive_int(text)
    if value > MAX_DRAFT_TOKENS:
        raise argparse.ArgumentTypeError(f"at most {MAX_DRAFT_TOKENS}, got {value}")
    return value
