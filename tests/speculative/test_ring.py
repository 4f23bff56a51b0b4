"""Speculative decoding through a ring of three ClusterNodes (real ZeroMQ sockets on loopback, in one
process so the test can look into every shard's KV cache): greedy output equals single-process plain
decoding for every draft source, and after each verification pass every shard of the ring holds
exactly the accepted positions (the Truncate message)."""

from __future__ import annotations

import time

import pytest

from exo_actor.config import NodeConfig
from exo_actor.runtime.generation import generate
from exo_actor.sampling import SamplingParams
from exo_actor.speculative import Speculation
from exo_actor.speculative.drafts import load_drafter
from exo_actor.tokenizer import chat_prompt_ids
from exo_actor.transport import Draft
from tests.cluster.harness import in_process_cluster
from tests.speculative.test_smollm2 import GROUNDED, OPEN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with in_process_cluster("smollm2-135m", 3, memories_gib=[8, 4, 4], timeout=10.0) as c:
        yield c.nodes


class CheckedRing:
    """The RemoteRing of node0, checking before each pass that every shard caches exactly the
    positions before it (the Truncate of the previous pass has been applied)."""

    def __init__(self, ring, nodes) -> None:
        self.ring, self.nodes, self.truncations = ring, nodes, 0

    def lengths(self, rid):
        return [n.shard.role.runner.cached_length(rid) for n in self.nodes]

    def forward(self, rid, tokens, start_pos, num_logits=1):
        if start_pos > 0:
            deadline = time.monotonic() + 2.0  # Truncate is fire-and-forget: allow it to arrive
            while self.lengths(rid) != [start_pos] * 3:
                assert time.monotonic() < deadline, (self.lengths(rid), start_pos)
                time.sleep(0.001)
        return self.ring.forward(rid, tokens, start_pos, num_logits)

    def truncate(self, rid, length):
        self.truncations += 1
        self.ring.truncate(rid, length)

    def free(self, rid):
        self.ring.free(rid)


@pytest.fixture(scope="module")
def single(smollm2_local):
    """SmolLM2 in one process (the session's: load_local's default numpy engine, one shard)."""
    return smollm2_local


@pytest.mark.parametrize("draft", ["ngram", "smollm2-135m", "smollm2-135m:layers=8"])
def test_ring_speculation_equals_plain_decoding(cluster, single, draft):
    files, pipe = single
    ids = chat_prompt_ids(files.tokenizer, GROUNDED if draft == "ngram" else OPEN)
    params = SamplingParams(max_tokens=32)
    expected = [t for d in generate(pipe, files.tokenizer, ids, params, 2048) for t in d.token_ids]
    ring = CheckedRing(cluster[0].rings.ring(0), cluster)
    spec = Speculation(load_drafter(draft, files), max_draft=4, adaptive=False)
    deltas = list(generate(ring, files.tokenizer, ids, params, 2048, "req-" + draft, spec))
    assert [t for d in deltas for t in d.token_ids] == expected
    stats = deltas[-1].stats
    assert stats.draft_tokens > 0 and ring.truncations > 0
    if draft == "smollm2-135m":
        assert stats.acceptance_rate == 1.0
    else:
        assert stats.acceptance_rate < 1.0  # rejections happened, and the caches followed
    deadline = time.monotonic() + 2.0
    while any(n.shard.role.runner.caches for n in cluster):  # Free reached every shard
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_the_prefix_cache_through_the_ring(cluster, single):
    """A chat's next turn over the ring: each shard takes over the previous turn's KV cache when the
    request's first pass reaches it (Forward.adopt), prefills only the new tokens, and generates
    exactly what plain decoding of the whole conversation gives."""
    from exo_actor.runtime.prefix_cache import PrefixCache

    files, pipe = single
    params = SamplingParams(max_tokens=16)
    turn1 = chat_prompt_ids(files.tokenizer, OPEN)
    ring = cluster[0].rings.ring(0)
    cache = PrefixCache(10_000)
    first = [t for d in generate(ring, files.tokenizer, turn1, params, 2048, "turn1", None, cache) for t in d.token_ids]
    assert set(cache.entries) == {"turn1"}
    reply = files.tokenizer.decode(first[:-1] if first[-1] in files.tokenizer.stop_ids else first)
    messages = [*OPEN, {"role": "assistant", "content": reply}, {"role": "user", "content": "And a fourth?"}]
    turn2 = chat_prompt_ids(files.tokenizer, messages)
    expected = [t for d in generate(pipe, files.tokenizer, turn2, params, 2048) for t in d.token_ids]
    deltas = list(generate(ring, files.tokenizer, turn2, params, 2048, "turn2", None, cache))
    assert [t for d in deltas for t in d.token_ids] == expected
    assert deltas[-1].stats.cached_tokens >= len(turn1)
    assert set(cache.entries) == {"turn2"}
    for n in cluster:  # every shard holds exactly the kept entry
        assert set(n.shard.role.runner.caches) == {"turn2"}
    ring.free("turn2")
    deadline = time.monotonic() + 2.0
    while any(n.shard.role.runner.caches for n in cluster):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_node_without_room_for_the_draft_uses_a_remote_draft_actor(single):
    """node0 advertises 0.3 GiB: beside its layers the 8-layer self-draft (227 MB) does not fit, so
    its router asks the DraftActor on the node with the most free memory; nodes with room draft
    locally. Greedy output still equals plain decoding, and sampled drafts (probabilities on the
    wire) work too. A draft host that stops answering only turns speculation off."""
    files, pipe = single
    ids = chat_prompt_ids(files.tokenizer, OPEN)
    params = SamplingParams(max_tokens=24)
    expected = [t for d in generate(pipe, files.tokenizer, ids, params, 2048) for t in d.token_ids]

    def node_config(i: int) -> NodeConfig:
        return NodeConfig(
            model="smollm2-135m", draft_model="smollm2-135m:layers=8", draft_tokens=4, adaptive_draft=False
        )

    with in_process_cluster("smollm2-135m", 3, memories_gib=[0.3, 4, 4], node_config=node_config, timeout=10.0) as c:
        nodes = c.nodes
        info = nodes[0].cluster_info()
        host = info["draft"]["host"]
        assert host in ("node1", "node2") and not info["draft"]["hosted_here"]
        assert nodes[1].drafts.host == "node1" and nodes[2].drafts.host == "node2"  # room: local drafts
        ring, router = nodes[0].rings.ring(0), nodes[0].rings.router(0)
        spec = router.speculation
        deltas = list(generate(ring, files.tokenizer, ids, params, 2048, "remote-1", spec))
        assert [t for d in deltas for t in d.token_ids] == expected
        assert deltas[-1].stats.draft_tokens > 0
        host_node = next(n for n in nodes if n.node_id == host)
        served = host_node.drafts.actor.served
        assert served > 0
        sampled = SamplingParams(max_tokens=16, temperature=0.7, seed=3)
        deltas = list(generate(ring, files.tokenizer, ids, sampled, 2048, "remote-2", spec))
        assert deltas[-1].finish_reason and deltas[-1].stats.draft_tokens > 0
        assert host_node.drafts.actor.served > served
        deadline = time.monotonic() + 2.0
        while host_node.drafts.actor.drafter.seen:  # Free reached the draft host too
            assert time.monotonic() < deadline
            time.sleep(0.01)

        async def silent(msg):
            return None

        host_node.net.on(Draft, silent)
        spec.drafter.timeout = 0.5
        short = SamplingParams(max_tokens=6)
        deltas = list(generate(ring, files.tokenizer, ids, short, 2048, "remote-3", spec))
        assert [t for d in deltas for t in d.token_ids] == expected[:6]  # no drafts, same answer
        assert deltas[-1].stats.draft_tokens == 0
