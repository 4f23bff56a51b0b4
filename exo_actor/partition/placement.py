"""Shards of a ring placed by a scheduler (Ray): how much memory each shard may plan with.

On a LAN every device is one node of the ring and advertises its memory. On a Ray cluster the user
asks for K shards and Ray places them; the plan must still give bigger machines more layers when
there is one shard per machine, and split evenly when shards outnumber machines (several shards then
share a machine, and which one gets which shard is Ray's choice).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from .ring import Assignment, NodeCapacity, PartitionError, memory_weighted


def shard_capacities(node_memory: Sequence[int], shards: int) -> list[NodeCapacity]:
    """Capacities of `shards` shards named s00, s01, ... in ring order, from the memory of the
    scheduler's machines: the largest machines' memory when each shard can have a machine of its
    own, else an equal share of the total."""
    memory = sorted((m for m in node_memory if m > 0), reverse=True)
    if shards < 1:
        raise PartitionError(f"a ring needs at least one shard, got {shards}")
    if not memory:
        raise PartitionError("the cluster reports no memory to place shards in")
    if shards <= len(memory):
        sizes = memory[:shards]
    else:
        sizes = [max(1, sum(memory) // shards)] * shards
    return [NodeCapacity(f"s{i:02d}", m) for i, m in enumerate(sizes)]


def _fits(bundle: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in bundle.items())


def _show(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{v / 2**30:.2f} GiB {k}" if k == "memory" else f"{v:g} {k}" for k, v in resources.items())


def placement_problem(
    bundles: Sequence[Mapping[str, float]], nodes: Sequence[Mapping[str, float]], strategy: str
) -> str | None:
    """Why `bundles` can never be placed on machines with `nodes` total resources under `strategy`
    (a Ray placement group would otherwise wait forever for an autoscaler); None when they can."""
    if not bundles:
        return "no shards to place"
    if strategy == "STRICT_PACK":
        total = {k: sum(b.get(k, 0.0) for b in bundles) for b in bundles for k in b}
        if not any(_fits(total, n) for n in nodes):
            return f"STRICT_PACK needs one machine with {_show(total)}; no machine has that much"
        return None
    for b in bundles:
        if not any(_fits(b, n) for n in nodes):
            return f"a shard needs {_show(b)} and no machine has that much"
    if strategy == "STRICT_SPREAD":
        biggest = max(bundles, key=lambda b: tuple(sorted(b.items())))
        room = sum(_fits(biggest, n) for n in nodes)
        if room < len(bundles):
            return (
                f"STRICT_SPREAD puts each of {len(bundles)} shards on its own machine; {room} machine(s) can take one"
            )
    total = {k: sum(b.get(k, 0.0) for b in bundles) for b in bundles for k in b}
    have = {k: sum(n.get(k, 0.0) for n in nodes) for k in total}
    if not _fits(total, have):
        return f"the shards need {_show(total)} in all; the cluster has {_show(have)}"
    return None


def plan_placed(
    bundle_nodes: Sequence[str], node_memory: Mapping[str, int], n_layers: int, layer_bytes: int | None = None
) -> list[Assignment]:
    """The ring once the scheduler has placed the bundles: bundle i (named s{i:02d}) weighted by the
    memory of the machine it landed on, shared equally with the other bundles there; ring order as
    memory_weighted makes it (so the biggest machine's bundle takes the most layers)."""
    share = Counter(bundle_nodes)
    caps = [NodeCapacity(f"s{i:02d}", node_memory.get(n, 0) // share[n]) for i, n in enumerate(bundle_nodes)]
    return memory_weighted(caps, n_layers, layer_bytes)
