"""Micro-batches in flight on a ring (actors/router.py): several batches of requests travel the ring at
once, each request still gets exactly its single-process tokens, and a node lost with several batches in
flight fails all of them over."""

from __future__ import annotations

import pytest

from exo_actor.config import NodeConfig
from exo_actor.runtime.generation import generate
from exo_actor.runtime.local import load_local
from exo_actor.sampling import SamplingParams
from tests.cluster.harness import in_process_cluster
from tests.cluster.test_node import slowed
from tests.tiny import TinySpec, write_gguf

PROMPTS = [[5 + i, 17, 42 + 3 * i, 8, 99 - i, 3] for i in range(8)]
PARAMS = [{} if i % 2 == 0 else {"temperature": 0.8, "seed": 100 + i} for i in range(8)]  # greedy and seeded


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("micro") / "tiny.gguf"
    write_gguf(path, TinySpec(layers=6, context=96))
    return path


@pytest.fixture(scope="module")
def expected(tiny) -> list[list[int]]:
    """Each request alone, in one process."""
    files, pipeline = load_local(str(tiny))
    context = files.args.max_position_embeddings
    out = []
    for prompt, params in zip(PROMPTS, PARAMS):
        deltas = generate(pipeline, files.tokenizer, prompt, SamplingParams(max_tokens=30, **params), context)
        out.append([t for d in deltas for t in d.token_ids])
    return out


def node_config(tiny, micro_batches: int):
    def make(i: int) -> NodeConfig:
        return NodeConfig(model=str(tiny), engine="numpy", prefix_cache_mb=0, micro_batches=micro_batches)

    return make


def test_eight_requests_travel_the_ring_in_several_micro_batches_with_unchanged_tokens(tiny, expected):
    with in_process_cluster(tiny, 3) as c:
        for node in c.nodes:
            slowed(node, 0.005)  # each shard takes a moment, as a real one does: the batches overlap
        router = c.nodes[0].router
        assert router.micro_batches == 3  # the default: one per ring node
        running = [c.start(c.nodes[0], p, 30, **params) for p, params in zip(PROMPTS, PARAMS)]
        assert [r.result(120) for r in running] == expected
        info = router.batching_info()
        assert info["most_micro_batches_in_flight"] > 1, info
        assert info["micro_batches_in_flight"] == 0  # all landed


def test_one_micro_batch_when_asked_and_the_same_tokens(tiny, expected):
    with in_process_cluster(tiny, 3, node_config=node_config(tiny, 1)) as c:
        router = c.nodes[0].router
        running = [c.start(c.nodes[0], p, 30, **params) for p, params in zip(PROMPTS, PARAMS)]
        assert [r.result(120) for r in running] == expected
        info = router.batching_info()
        assert info["micro_batches"] == 1 and info["most_micro_batches_in_flight"] == 0, info  # run in place
        assert info["mean_rows_per_turn"] > 1  # still one batch of several requests


def test_a_node_lost_with_several_micro_batches_in_flight_fails_every_one_over(tiny, expected):
    with in_process_cluster(tiny, 3, heartbeat=0.2, timeout=1.5, wait_for_peers=2) as c:
        node0, _, node2 = c.nodes
        # a short peer timeout: on a loaded machine a node may be re-planned around once at the start
        c.wait(lambda: all(n.shard.role is not None for n in c.nodes), "every node to hold its layers")
        c.wait_ready()
        for node in c.nodes:
            slowed(node, 0.01)
        running = [c.start(node0, p, 30, **params) for p, params in zip(PROMPTS, PARAMS)]
        c.wait(lambda: node0.router.tokens_generated >= 40, "the requests to be under way")
        assert node0.router.batching_info()["most_micro_batches_in_flight"] > 1
        c.run(node2.stop_async())  # silent from now on: every batch in flight fails over
        assert [r.result(120) for r in running] == expected
        assert node0.rings.replays() >= 1
        assert node0.router.in_flight == 0
