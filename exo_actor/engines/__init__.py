"""Engines behind one protocol; numpy is the reference."""

from __future__ import annotations

from ..errors import InvalidRequestError
from .base import Engine, ShardRunner

ENGINES = ("numpy",)


def get_engine(name: str) -> Engine:
    """The engine called `name` ("auto" picks the best available one)."""
    if name in ("numpy", "auto"):
        from .numpy_engine import NumpyEngine

        return NumpyEngine()
    raise InvalidRequestError(f"unknown engine {name!r} (available: {', '.join(ENGINES)}, auto)")


__all__ = ["ENGINES", "Engine", "ShardRunner", "get_engine"]
