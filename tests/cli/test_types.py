"""The argparse `type=` functions: what each accepts, and the one-line reason it gives for the rest."""

from __future__ import annotations

import argparse

import pytest

from exo_actor.cli import types
from exo_actor.sampling.params import MAX_DRAFT_TOKENS


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (types.port, "0", 0),
        (types.port, "52415", 52415),
        (types.port, "65535", 65535),
        (types.positive_float, "0.25", 0.25),
        (types.positive_float, "3", 3.0),
        (types.positive_int, "1", 1),
        (types.non_negative_int, "0", 0),
        (types.draft_tokens, "1", 1),
        (types.draft_tokens, str(MAX_DRAFT_TOKENS), MAX_DRAFT_TOKENS),
    ],
)
def test_accepted(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize(
    ("parse", "text", "reason"),
    [
        (types.port, "65536", "a port is 0-65535, got 65536"),
        (types.port, "-1", "must be >= 1, got -1"),
        (types.port, "http", "expected an integer, got 'http'"),
        (types.positive_float, "0", "must be a positive number, got 0"),
        (types.positive_float, "-0.5", "must be a positive number, got -0.5"),
        (types.positive_float, "nan", "must be a positive number, got nan"),
        (types.positive_float, "inf", "must be a positive number, got inf"),
        (types.positive_float, "soon", "expected a number, got 'soon'"),
        (types.positive_int, "0", "must be >= 1, got 0"),
        (types.positive_int, "1.5", "expected an integer, got '1.5'"),
        (types.non_negative_int, "-1", "must be >= 0, got -1"),
        (types.draft_tokens, "0", "must be >= 1, got 0"),
        (types.draft_tokens, str(MAX_DRAFT_TOKENS + 1), f"at most {MAX_DRAFT_TOKENS}, got {MAX_DRAFT_TOKENS + 1}"),
    ],
)
def test_refused(parse, text, reason):
    with pytest.raises(argparse.ArgumentTypeError) as exc:
        parse(text)
    assert str(exc.value) == reason


def test_int_at_least_takes_its_minimum():
    assert types.int_at_least("5", 5) == 5
    with pytest.raises(argparse.ArgumentTypeError, match="must be >= 5, got 4"):
        types.int_at_least("4", 5)
