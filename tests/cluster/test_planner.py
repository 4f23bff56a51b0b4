"""The cluster planner: pure functions, the same answer on every node."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from exo_actor.cluster.planner import (
    NO_SHARE,
    agreed_members,
    blas_threads_for,
    plan_cluster,
    plan_memory,
    plan_version,
    ring_order,
)
from exo_actor.partition import Assignment, NodeCapacity

GIB = 2**30


def nodes(*memories_gib: float) -> list[NodeCapacity]:
    return [NodeCapacity(f"n{i}", int(m * GIB)) for i, m in enumerate(memories_gib)]


def test_one_ring_memory_weighted_in_ring_order():
    plan = plan_cluster(nodes(1, 3, 2), 12, GIB // 100)
    assert [(a.node_id, a.start, a.end) for a in plan.rings[0]] == [("n1", 0, 6), ("n2", 6, 10), ("n0", 10, 12)]
    assert plan.version == plan_version(plan.assignments, 12) != 0
    assert plan.next_node("n1") == "n2" and plan.next_node("n0") is None
    assert plan.assignment("n2") == Assignment("n2", 6, 10) and plan.assignment("nobody") is None
    assert plan.idle == {}


@given(st.permutations(range(5)))
def test_every_node_reaches_the_same_plan_whatever_order_it_heard_of_the_others(order):
    group = nodes(1, 2, 2, 4, 0.5)
    first = plan_cluster(group, 30, GIB // 100, rings=2)
    again = plan_cluster([group[i] for i in order], 30, GIB // 100, rings=2)
    assert again == first and again.version == first.version


def test_two_rings_and_the_idle_nodes_say_why():
    plan = plan_cluster(nodes(4, 4, 4, 4), 8, GIB, rings=2)  # each ring needs 8 GiB: two nodes each
    assert len(plan.rings) == 2 and all(sum(a.layers for a in ring) == 8 for ring in plan.rings)
    crowd = plan_cluster(nodes(3, 2, 1, 1, 1), 3, 1)  # more nodes than layers: the smallest hold none
    assert [a.node_id for a in crowd.assignments] == ["n0", "n1", "n2"]
    assert crowd.idle == {"n3": NO_SHARE, "n4": NO_SHARE}


def test_no_plan_when_nothing_can_hold_the_model():
    plan = plan_cluster(nodes(1, 1), 8, GIB)
    assert plan.version == 0 and plan.rings == ()
    assert set(plan.idle) == {"n0", "n1"} and all("cannot hold the model" in why for why in plan.idle.values())
    assert plan_cluster([], 8, GIB).version == 0


def test_an_epoch_gives_the_same_ranges_a_new_version():
    ring = [Assignment("a", 0, 4), Assignment("b", 4, 8)]
    assert plan_version(ring, 8) != plan_version(ring, 8, epoch=1) != plan_version(ring, 8, epoch=2)
    assert plan_version(ring, 8) != plan_version(list(reversed(ring)), 8)


def test_plan_memory_scales_by_what_the_engine_holds_per_layer():
    assert plan_memory(8 * GIB, held_bytes=4, unit_bytes=1) == 2 * GIB  # a float32 engine holds 4x
    assert plan_memory(8 * GIB, held_bytes=1, unit_bytes=1) == 8 * GIB
    assert plan_memory(8 * GIB, held_bytes=0, unit_bytes=1) == 8 * GIB  # never divides by zero


def test_blas_threads_share_the_cores():
    assert [blas_threads_for(k, cores=8) for k in (0, 1, 2, 3, 8, 16)] == [8, 8, 4, 2, 1, 1]
    assert blas_threads_for(random.randint(1, 4)) >= 1


def test_a_cut_link_leaves_out_the_same_node_whoever_computes_it():
    group = nodes(4, 4, 4)  # ring order n0, n1, n2
    # n1 and n2 lost each other; n0 hears both. Each node knows its own report; the other side's report
    # may be stale or missing: one side's report alone decides.
    at_n0 = {"n0": set(), "n1": {"n2"}, "n2": {"n1"}}
    at_n1 = {"n0": set(), "n1": {"n2"}, "n2": set()}  # a stale report from n2
    at_n2 = {"n0": set(), "n2": {"n1"}}  # nothing from n1 any more
    for lost in (at_n0, at_n1, at_n2):
        assert [n.node_id for n in agreed_members(group, lost)] == ["n0", "n1"]


def test_a_forming_cluster_does_not_split():
    """Nodes not heard of yet are not lost: without reports, or with empty ones, everyone may join."""
    everyone = sorted(nodes(1, 2, 3), key=lambda n: -n.memory_bytes)
    assert agreed_members(nodes(1, 2, 3), {}) == everyone
    assert agreed_members(nodes(1, 2, 3), {"n0": set(), "n1": set()}) == everyone


NODE_IDS = ["n0", "n1", "n2", "n3"]


@given(st.dictionaries(st.sampled_from(NODE_IDS), st.sets(st.sampled_from(NODE_IDS))))
def test_agreed_members_never_lost_each_other_and_do_not_depend_on_order(lost):
    group = nodes(2, 1, 2, 1)
    kept = agreed_members(group, lost)
    ids = [n.node_id for n in kept]
    for a in ids:
        for b in ids:
            assert a == b or (b not in lost.get(a, ()) and a not in lost.get(b, ()))
    assert agreed_members(list(reversed(group)), lost) == kept
    assert kept  # never empty
    ranked = [n.node_id for n in ring_order(group)]
    if not any(n in lost.get(r, ()) for r in lost if r in NODE_IDS for n in NODE_IDS):
        assert ids == ranked  # nobody lost anybody: everyone is kept


def test_a_node_every_survivor_reports_lost_is_left_out_even_when_it_heads_the_ring():
    """node0 died: n1 and n2 both lost it, while its last report (losing nobody) lingers. The survivors
    form the ring; node0 does not head a ring of itself alone."""
    group = nodes(4, 2, 2)  # ring order n0, n1, n2
    lost = {"n0": set(), "n1": {"n0"}, "n2": {"n0"}}
    assert [n.node_id for n in agreed_members(group, lost)] == ["n1", "n2"]
    # one survivor's report alone is a cut link, not a death: n0 stays (it still heads the ring)
    assert [n.node_id for n in agreed_members(group, {"n1": {"n0"}, "n2": set()})] == ["n0", "n2"]


def test_two_nodes_that_lost_each_other_keep_the_first_in_ring_order():
    group = nodes(4, 2)
    assert [n.node_id for n in agreed_members(group, {"n0": {"n1"}, "n1": {"n0"}})] == ["n0"]
