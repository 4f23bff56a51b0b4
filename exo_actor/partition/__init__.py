"""Partitioning: pure functions from a topology to a layer plan."""

from .even import even_ranges

__all__ = ["even_ranges"]
