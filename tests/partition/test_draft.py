"""place_draft: the router's own node when the draft fits there, else the roomiest node."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from exo_actor.partition import place_draft


def test_the_router_drafts_locally_when_it_has_room():
    assert place_draft({"a": 500, "b": 900}, "a", 400) == "a"


def test_otherwise_the_node_with_most_free_memory():
    assert place_draft({"a": 100, "b": 900, "c": 950}, "a", 400) == "c"
    assert place_draft({"a": 100, "b": 900, "c": 900}, "a", 400) == "b"  # ties: smallest id


def test_nowhere_to_put_it():
    assert place_draft({"a": 100, "b": 200}, "a", 400) is None
    assert place_draft({}, "a", 1) is None


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(-10, 1000), min_size=1), st.integers(0, 1000))
def test_the_host_always_has_room_and_placement_is_deterministic(free, size):
    for router in free:
        host = place_draft(free, router, size)
        assert host is None or free[host] >= size
        assert host == place_draft(dict(reversed(list(free.items()))), router, size)
        if host is None:
            assert all(v < size for v in free.values())
