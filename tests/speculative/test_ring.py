"""Speculative decoding through a ring of three ClusterNodes (real ZeroMQ sockets on loopback, in one
process so the test can look into every shard's KV cache): greedy output equals single-process plain
decoding for every draft source, and after each verification pass every shard of the ring holds
exactly the accepted positions (the Truncate message)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from exo_actor.cluster import ClusterConfig, ClusterNode
from exo_actor.generation import generate
from exo_actor.local import load_local
from exo_actor.node import NodeConfig
from exo_actor.sampling import SamplingParams
from exo_actor.speculative import Speculation
from exo_actor.speculative.drafts import load_drafter
from exo_actor.tokenizer import chat_prompt_ids
from tests.api.servers import free_port
from tests.speculative.test_smollm2 import GROUNDED, OPEN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ports = [free_port() for _ in range(3)]
    nodes = []
    for i, mem in enumerate((8, 4, 4)):
        cfg = ClusterConfig(
            host="127.0.0.1",
            port=ports[i],
            advertise="127.0.0.1",
            peers=[f"127.0.0.1:{p}" for p in ports],
            memory=mem << 30,
            wait_for_peers=2,
        )
        nodes.append(ClusterNode(NodeConfig(model="smollm2-135m"), cfg, node_id=f"node{i}"))
    for n in nodes:
        asyncio.run_coroutine_threadsafe(n.start_async(), loop).result(60)
    deadline = time.monotonic() + 120
    while not all(n.state == "ready" for n in nodes):
        assert time.monotonic() < deadline, [(n.node_id, n.state, n.error) for n in nodes]
        time.sleep(0.2)
    yield nodes
    for n in nodes:
        asyncio.run_coroutine_threadsafe(n.stop_async(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)


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
def single():
    return load_local("smollm2-135m")


@pytest.mark.parametrize("draft", ["ngram", "smollm2-135m", "smollm2-135m:layers=8"])
def test_ring_speculation_equals_plain_decoding(cluster, single, draft):
    files, pipe = single
    ids = chat_prompt_ids(files.tokenizer, GROUNDED if draft == "ngram" else OPEN)
    params = SamplingParams(max_tokens=32)
    expected = [t for d in generate(pipe, files.tokenizer, ids, params, 2048) for t in d.token_ids]
    ring = CheckedRing(cluster[0].rings[0][0], cluster)
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
