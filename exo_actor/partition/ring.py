"""Memory-weighted ring partitioning: pure functions from (nodes, layer count) to a layer plan.

Every node computes the plan itself from the same topology, so the rules must be deterministic:

- ring order: advertised memory descending, then node id ascending;
- each node's layer count is proportional to its memory, rounded by largest remainder (Hamilton's
  method; ties go to the earlier node in ring order);
- every node in the plan gets at least one layer (taken from the node with the most layers) when
  there are at least as many layers as nodes; otherwise the smallest nodes are left out;
- with a per-layer size given, a node whose share does not fit its memory is left out and the rest
  re-planned; if no subset fits, PartitionError says how much memory is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ExoError


class PartitionError(ExoError):
    """No plan exists for this model on these nodes."""


@dataclass(frozen=True)
class NodeCapacity:
    node_id: str
    memory_bytes: int


@dataclass(frozen=True)
class Assignment:
    node_id: str
    start: int
    end: int  # exclusive

    @property
    def layers(self) -> int:
        return self.end - self.start


def ring_order(nodes: Sequence[NodeCapacity]) -> list[NodeCapacity]:
    """The order of the ring, the same on every node."""
    return sorted(nodes, key=lambda n: (-n.memory_bytes, n.node_id))


def _counts(nodes: list[NodeCapacity], n_layers: int) -> list[int]:
    total = sum(n.memory_bytes for n in nodes)
    quotas = [n_layers * n.memory_bytes / total for n in nodes]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(nodes)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: n_layers - sum(counts)]:
        counts[i] += 1
    for i, c in enumerate(counts):  # at least one layer each (the caller ensured enough layers)
        if c == 0:
            donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] = 1
    return counts


def memory_weighted(
    nodes: Sequence[NodeCapacity], n_layers: int, bytes_per_layer: int | None = None
) -> list[Assignment]:
    """Contiguous layer ranges covering [0, n_layers), in ring order; see the module docstring."""
    if n_layers < 1:
        raise PartitionError(f"a model needs at least one layer, got {n_layers}")
    if len({n.node_id for n in nodes}) != len(nodes):
        raise PartitionError("node ids must be unique")
    members = [n for n in ring_order(nodes) if n.memory_bytes > 0][:n_layers]
    while members:
        counts = _counts(members, n_layers)
        if bytes_per_layer:
            short = [i for i, (n, c) in enumerate(zip(members, counts)) if c * bytes_per_layer > n.memory_bytes]
            if short:  # drop the node that fits worst, re-plan the rest
                worst = max(short, key=lambda i: (counts[i] * bytes_per_layer - members[i].memory_bytes, i))
                members.pop(worst)
                continue
        plan, start = [], 0
        for n, c in zip(members, counts):
            plan.append(Assignment(n.node_id, start, start + c))
            start += c
        return plan
    need = n_layers * (bytes_per_layer or 0)
    have = sum(max(n.memory_bytes, 0) for n in nodes)
    raise PartitionError(
        f"the model does not fit: it needs about {need / 2**30:.1f} GiB for {n_layers} layers, "
        f"the nodes advertise {have / 2**30:.1f} GiB in all"
        if nodes
        else "there are no nodes to run the model on"
    )


def manual(ranges: dict[str, tuple[int, int]], n_layers: int) -> list[Assignment]:
    """An explicit plan from config ({node id: (start, end)}), checked for contiguity and coverage."""
    plan = sorted((Assignment(k, a, b) for k, (a, b) in ranges.items()), key=lambda x: x.start)
    expected = 0
    for a in plan:
        if a.start != expected or a.end <= a.start:
            raise PartitionError(
                f"manual plan: {a.node_id} has [{a.start}, {a.end}); expected a range starting at {expected}"
            )
        expected = a.end
    if expected != n_layers:
        raise PartitionError(f"manual plan covers layers [0, {expected}) but the model has {n_layers}")
    return plan


def split_rings(nodes: Sequence[NodeCapacity], rings: int) -> list[list[NodeCapacity]]:
    """Nodes split into `rings` groups of balanced total memory, deterministically.

    Greedy longest-processing-time: in ring order (memory descending, then id), each node joins the
    group with the least memory so far (ties: the lower group index). Every node computes the same
    groups from the same topology; each group is then planned with memory_weighted().
    """
    if rings < 1:
        raise PartitionError(f"--rings must be at least 1, got {rings}")
    if rings > len(nodes):
        raise PartitionError(f"{rings} rings need at least {rings} nodes; the cluster has {len(nodes)}")
    groups: list[list[NodeCapacity]] = [[] for _ in range(rings)]
    totals = [0] * rings
    for n in ring_order(nodes):
        i = min(range(rings), key=lambda g: (totals[g], g))
        groups[i].append(n)
        totals[i] += n.memory_bytes
    return groups
