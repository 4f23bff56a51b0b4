"""The memory-weighted partitioner: exact cases and properties (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo_actor.partition import NodeCapacity, PartitionError, manual, memory_weighted, split_rings

GB = 2**30


def test_memory_8_4_4_is_2_1_1():
    nodes = [NodeCapacity("c", 4 * GB), NodeCapacity("a", 8 * GB), NodeCapacity("b", 4 * GB)]
    plan = memory_weighted(nodes, 30)
    assert [(a.node_id, a.layers) for a in plan] == [("a", 15), ("b", 8), ("c", 7)]
    assert memory_weighted(list(reversed(nodes)), 30) == plan  # the same topology, the same plan


def test_small_nodes_still_get_a_layer_and_surplus_nodes_are_left_out():
    plan = memory_weighted([NodeCapacity("big", 1000 * GB), NodeCapacity("tiny", 1)], 10)
    assert [a.layers for a in plan] == [9, 1]
    plan = memory_weighted([NodeCapacity(f"n{i}", GB) for i in range(5)], 3)
    assert [a.node_id for a in plan] == ["n0", "n1", "n2"]


def test_nodes_that_cannot_hold_their_share_are_left_out():
    nodes = [NodeCapacity("a", 10 * GB), NodeCapacity("b", 10 * GB), NodeCapacity("c", 1 * GB)]
    plan = memory_weighted(nodes, 20, bytes_per_layer=GB)
    assert sum(a.layers for a in plan) == 20
    for a in plan:
        assert a.layers * GB <= next(n.memory_bytes for n in nodes if n.node_id == a.node_id)
    with pytest.raises(PartitionError, match="does not fit"):
        memory_weighted(nodes, 40, bytes_per_layer=GB)
    with pytest.raises(PartitionError):
        memory_weighted([], 4)


def test_manual_plans_are_checked():
    assert [a.layers for a in manual({"x": (0, 3), "y": (3, 4)}, 4)] == [3, 1]
    for bad in ({"x": (0, 2), "y": (3, 4)}, {"x": (0, 2)}, {"x": (0, 3), "y": (2, 4)}, {"x": (1, 4)}):
        with pytest.raises(PartitionError):
            manual(bad, 4)


nodes_strategy = st.lists(
    st.tuples(st.text("abcdef", min_size=1, max_size=4), st.integers(1, 64 * GB)),
    min_size=1,
    max_size=8,
    unique_by=lambda t: t[0],
).map(lambda xs: [NodeCapacity(i, m) for i, m in xs])


@settings(max_examples=300, deadline=None)
@given(nodes_strategy, st.integers(1, 120))
def test_plans_are_contiguous_complete_and_proportional(nodes, n_layers):
    plan = memory_weighted(nodes, n_layers)
    assert plan[0].start == 0 and plan[-1].end == n_layers
    assert all(a.end == b.start for a, b in zip(plan, plan[1:]))  # contiguous, no overlap
    assert all(a.layers >= 1 for a in plan)
    assert len(plan) == min(len(nodes), n_layers)
    members = {a.node_id: a for a in plan}
    total = sum(n.memory_bytes for n in nodes if n.node_id in members)
    quotas = {n.node_id: n_layers * n.memory_bytes / total for n in nodes if n.node_id in members}
    if all(q >= 1 for q in quotas.values()):  # no minimum-one adjustments: within rounding
        assert all(abs(members[k].layers - q) < 1 for k, q in quotas.items())
    assert memory_weighted(list(reversed(nodes)), n_layers) == plan


def test_split_rings_balances_memory():
    nodes = [NodeCapacity(n, m * GB) for n, m in (("a", 8), ("b", 4), ("c", 4), ("d", 2), ("e", 2))]
    groups = split_rings(nodes, 2)
    assert [[n.node_id for n in g] for g in groups] == [["a", "d"], ["b", "c", "e"]]
    with pytest.raises(PartitionError):
        split_rings(nodes, 6)
    with pytest.raises(PartitionError):
        split_rings(nodes, 0)


@settings(max_examples=200, deadline=None)
@given(nodes_strategy, st.integers(1, 4))
def test_split_rings_partitions_every_node_once(nodes, rings):
    if rings > len(nodes):
        return
    groups = split_rings(nodes, rings)
    assert sorted(n.node_id for g in groups for n in g) == sorted(n.node_id for n in nodes)
    assert all(groups) and split_rings(list(reversed(nodes)), rings) == groups
    totals = [sum(n.memory_bytes for n in g) for g in groups]
    assert max(totals) - min(totals) <= max(n.memory_bytes for n in nodes)  # LPT bound
