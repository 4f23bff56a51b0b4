"""Shards placed by a scheduler (Ray): capacities for the partitioner, and placements that can never happen."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exo_actor.partition import PartitionError, memory_weighted, placement_problem, plan_placed, shard_capacities

GB = 2**30


def test_one_shard_per_machine_takes_the_largest_machines():
    caps = shard_capacities([4 * GB, 16 * GB, 8 * GB, 2 * GB], 3)
    assert [(c.node_id, c.memory_bytes) for c in caps] == [("s00", 16 * GB), ("s01", 8 * GB), ("s02", 4 * GB)]
    assert [a.layers for a in memory_weighted(caps, 28)] == [16, 8, 4]


def test_more_shards_than_machines_split_evenly():
    caps = shard_capacities([16 * GB], 3)
    assert {c.memory_bytes for c in caps} == {16 * GB // 3}
    assert [(a.start, a.end) for a in memory_weighted(caps, 30)] == [(0, 10), (10, 20), (20, 30)]


def test_no_shards_or_no_memory_is_an_error():
    with pytest.raises(PartitionError, match="at least one shard"):
        shard_capacities([GB], 0)
    with pytest.raises(PartitionError, match="no memory"):
        shard_capacities([0, 0], 2)


@given(st.lists(st.integers(1, 64 * GB), min_size=1, max_size=8), st.integers(1, 12), st.integers(12, 80))
def test_capacities_always_give_a_covering_plan(memory, shards, layers):
    plan = memory_weighted(shard_capacities(memory, shards), layers)
    assert plan[0].start == 0 and plan[-1].end == layers
    assert all(a.end == b.start for a, b in zip(plan, plan[1:]))
    assert len(plan) == shards


NODE = {"CPU": 2.0, "memory": 16 * GB}


@pytest.mark.parametrize(
    ("bundles", "nodes", "strategy", "needle"),
    [
        ([{"CPU": 0.5, "memory": GB}] * 3, [NODE], "SPREAD", None),
        ([{"CPU": 0.5, "memory": GB}] * 3, [NODE], "PACK", None),
        ([{"CPU": 0.5, "memory": GB}] * 3, [NODE], "STRICT_PACK", None),
        ([{"CPU": 0.5, "memory": GB}] * 3, [NODE] * 3, "STRICT_SPREAD", None),
        ([{"CPU": 4.0, "memory": GB}], [NODE, NODE], "SPREAD", "a shard needs 4 CPU"),
        ([{"CPU": 1.0, "memory": 32 * GB}], [NODE], "PACK", "32.00 GiB memory"),
        ([{"CPU": 0.5, "memory": GB}] * 3, [NODE] * 2, "STRICT_SPREAD", "2 machine(s) can take one"),
        ([{"CPU": 1.5, "memory": GB}] * 2, [NODE] * 2, "STRICT_PACK", "STRICT_PACK needs one machine with 3 CPU"),
        ([{"CPU": 1.5, "memory": GB}] * 3, [NODE] * 2, "SPREAD", "the shards need 4.5 CPU"),
        ([], [NODE], "SPREAD", "no shards"),
    ],
)
def test_placements_that_can_never_happen_say_why(bundles, nodes, strategy, needle):
    problem = placement_problem(bundles, nodes, strategy)
    if needle is None:
        assert problem is None
    else:
        assert problem is not None and needle in problem, problem


def test_the_plan_after_placement_follows_the_machines_the_bundles_landed_on():
    memory = {"big": 16 * GB, "small": 4 * GB, "mid": 8 * GB}
    plan = plan_placed(["small", "big", "mid"], memory, 28)
    assert {a.node_id: a.layers for a in plan} == {"s01": 16, "s02": 8, "s00": 4}
    assert [a.node_id for a in plan] == ["s01", "s02", "s00"]  # ring order: memory descending
    # two bundles on one machine share it
    plan = plan_placed(["big", "big", "small"], {"big": 16 * GB, "small": 8 * GB}, 30)
    assert {a.node_id: a.layers for a in plan} == {"s00": 10, "s01": 10, "s02": 10}
