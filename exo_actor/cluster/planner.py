"""Planning a cluster: pure functions from the nodes that can serve a model to a versioned layer plan.

Every node runs the same function on the same inputs (the Hellos it has heard), so every node reaches
the same plan and the same version without a coordinator. The LAN cluster and the Ray driver share it.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from ..partition import (
    Assignment,
    NodeCapacity,
    PartitionError,
    memory_weighted,
    ring_order,
    shard_capacities,
    split_rings,
)

NO_SHARE = "holds no layers: too little memory for its share, or more nodes than layers"
CUT_OFF = "cannot reach every other ring node (a cut link); it rejoins when the link is back"


# Plans count layers in the bytes the torch engine holds (the stored, quantized form); a node on a float32
# engine advertises its memory scaled down by how much more it holds per layer (plan_memory).
PLAN_UNIT_ENGINE = "torch"


def plan_version(assignments: Iterable[Assignment], n_layers: int, epoch: int = 0) -> int:
    """A stable id of a plan, the same on every node (never 0). `epoch` tells apart two joins of the same
    layer ranges (the Ray driver rejoins restarted hosts under a new version)."""
    head = f"{n_layers}|{epoch}|" if epoch else f"{n_layers}|"
    text = head + ";".join(f"{a.node_id}:{a.start}-{a.end}" for a in assignments)
    return zlib.crc32(text.encode()) or 1


@dataclass(frozen=True)
class Plan:
    """Which node holds which layers of which ring, and why the others hold none."""

    version: int
    rings: tuple[tuple[Assignment, ...], ...]
    idle: Mapping[str, str] = field(default_factory=dict, hash=False)  # node id -> why it holds no layers

    @property
    def assignments(self) -> list[Assignment]:
        return [a for ring in self.rings for a in ring]

    def ring_of(self, node_id: str) -> tuple[Assignment, ...]:
        """The ring `node_id` belongs to (empty when it holds no layers)."""
        return next((ring for ring in self.rings if any(a.node_id == node_id for a in ring)), ())

    def assignment(self, node_id: str) -> Assignment | None:
        return next((a for a in self.ring_of(node_id) if a.node_id == node_id), None)

    def next_node(self, node_id: str) -> str | None:
        """The node after `node_id` in its ring (None for the last shard)."""
        ring = [a.node_id for a in self.ring_of(node_id)]
        i = ring.index(node_id)
        return ring[i + 1] if i + 1 < len(ring) else None

    def describe(self) -> str:
        return " | ".join(", ".join(f"{a.node_id}[{a.start},{a.end})" for a in ring) for ring in self.rings)


EMPTY_PLAN = Plan(0, ())


def agreed_members(nodes: Sequence[NodeCapacity], lost: Mapping[str, AbstractSet[str]]) -> list[NodeCapacity]:
    """The nodes that may share rings: no two of them may have lost each other, so one cut link never
    leaves a ring whose shards cannot reach one another.

    `lost` holds, per node, the nodes it reported it knew and has not heard from lately (a node that has
    not reported loses no one; a node not yet known is not lost, so a cluster forming does not split).
    First, a node that more of the reporting nodes have lost than still hear it (counting its own vote)
    is out: a dead node, which every survivor reports, never heads the ring while its last report lingers.
    Then the rest are taken in ring order (memory descending, then id) and each is kept if neither it nor
    any node kept so far reports the other lost: every node with the same reports keeps the same nodes.
    """
    ids = {n.node_id for n in nodes}

    def apart(a: str, b: str) -> bool:
        return b in lost.get(a, ()) or a in lost.get(b, ())

    def outvoted(node_id: str) -> bool:
        reporters = [r for r in lost if r in ids and r != node_id]
        losers = sum(node_id in lost[r] for r in reporters)
        return losers > 1 + len(reporters) - losers  # its own vote counts for it

    alive = [n for n in nodes if not outvoted(n.node_id)] or list(nodes)
    kept: list[NodeCapacity] = []
    for n in ring_order(alive):
        if not any(apart(n.node_id, k.node_id) for k in kept):
            kept.append(n)
    return kept


def plan_cluster(nodes: Sequence[NodeCapacity], n_layers: int, layer_bytes: int, rings: int = 1) -> Plan:
    """Split `nodes` into up to `rings` groups and give each group the whole model, memory-weighted.

    A group that cannot hold the model, and nodes left without layers, are recorded in `idle` with the
    reason; a plan with no ring at all has version 0.
    """
    plans: list[tuple[Assignment, ...]] = []
    idle: dict[str, str] = {}
    for group in split_rings(nodes, max(1, min(rings, len(nodes)))) if nodes else []:
        try:
            plans.append(tuple(memory_weighted(group, n_layers, layer_bytes)))
        except PartitionError as exc:
            idle.update({n.node_id: f"its ring cannot hold the model: {exc}" for n in group})
    placed = {a.node_id for ring in plans for a in ring}
    for n in nodes:
        if n.node_id not in placed and n.node_id not in idle:
            idle[n.node_id] = NO_SHARE
    if not plans:
        return Plan(0, (), idle)
    return Plan(plan_version([a for ring in plans for a in ring], n_layers), tuple(plans), idle)


def plan_shards(node_memory: Sequence[int], shards: int, n_layers: int, layer_bytes: int) -> list[Assignment]:
    """The Ray ring's layer ranges for `shards` shards on machines with `node_memory` bytes."""
    return memory_weighted(shard_capacities(node_memory, min(shards, n_layers)), n_layers, layer_bytes)


def plan_memory(memory: int, held_bytes: int, unit_bytes: int) -> int:
    """A node's memory in plan units: a node whose engine holds a layer in `held_bytes` (float32 engines
    hold more than the stored form) advertises proportionally less room for `unit_bytes` layers."""
    return int(memory * unit_bytes / max(1, held_bytes))


def blas_threads_for(local_processes: int, cores: int | None = None) -> int:
    """BLAS threads per process when `local_processes` shards share this machine's cores.

    Several shard processes on one machine, each with OpenBLAS's default thread count, starve each other
    (idle BLAS threads spin): measured 0.16x of one process with 3 processes on 2 cores.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_processes))
