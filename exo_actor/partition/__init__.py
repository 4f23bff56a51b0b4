"""Partitioning: pure functions from a topology to a layer plan."""

from .draft import place_draft
from .even import even_ranges
from .placement import placement_problem, plan_placed, shard_capacities
from .ring import Assignment, NodeCapacity, PartitionError, manual, memory_weighted, ring_order, split_rings

__all__ = [
    "Assignment",
    "NodeCapacity",
    "PartitionError",
    "even_ranges",
    "manual",
    "memory_weighted",
    "place_draft",
    "plan_placed",
    "placement_problem",
    "ring_order",
    "shard_capacities",
    "split_rings",
]
