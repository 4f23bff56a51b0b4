"""Embeddings (runtime/embedding.py): mean or last pooling of the final-normed hidden states, equal to
transformers' LlamaModel; chunked over a growing KV cache, caches always freed; scheduled by the
RouterActor beside generation traffic; the same vector on a ring of three nodes as in one process."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from exo_actor.actors.router import OverloadedError, RouterActor
from exo_actor.engines import HIDDEN_STATES, Pass, get_engine
from exo_actor.errors import ContextLengthError
from exo_actor.runtime.batching import Pending, plan_turn
from exo_actor.runtime.embedding import embed, embedding
from exo_actor.runtime.generation import PREFILL_CHUNK, LocalPipeline, generate
from exo_actor.sampling import SamplingParams
from exo_actor.weights import open_model
from tests.conftest import require
from tests.tiny import TinySpec, write_gguf, write_hf_folder

CONTEXT = 1024
LONG = 700  # > PREFILL_CHUNK: two chunks


class Recording:
    """A pipeline that records every pass it runs (request, tokens, start, num_logits) and every free."""

    def __init__(self, pipe: LocalPipeline) -> None:
        self.pipe, self.passes, self.freed = pipe, [], []

    def forward(self, rid, tokens, start, num_logits=1):
        self.passes.append((rid, len(tokens), start, num_logits))
        return self.pipe.forward(rid, tokens, start, num_logits)

    def forward_batch(self, passes):
        self.passes += [(p.request_id, len(p.tokens), p.start_pos, p.num_logits) for p in passes]
        return self.pipe.forward_batch(passes)

    def free(self, rid):
        self.freed.append(rid)
        self.pipe.free(rid)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


def cached(pipe: LocalPipeline) -> list[int]:
    return [len(s.caches) for s in pipe.shards]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A tiny model as a Hugging Face folder, loaded as two numpy shards."""
    folder = tmp_path_factory.mktemp("embed-hf")
    write_hf_folder(folder, TinySpec(context=CONTEXT))
    files = open_model(folder)
    eng = get_engine("numpy")
    return folder, files, LocalPipeline([eng.load_shard(files, 0, 2), eng.load_shard(files, 2, 4)])


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("embed-gguf") / "tiny.gguf"
    write_gguf(path, TinySpec(context=CONTEXT))
    return path


def ids(n: int, seed: int = 0) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).integers(3, 300, size=n)]


def hf_states(folder, tokens: list[int]) -> np.ndarray:
    """transformers' LlamaModel last_hidden_state (after the final norm) [T, D], float32."""
    require("transformers")
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).last_hidden_state[0].numpy()


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_mean_and_last_pooling_equal_transformers_over_two_chunks(hf):
    folder, _, pipe = hf
    tokens = ids(LONG)
    states = hf_states(folder, tokens).astype(np.float64)
    mean = embed(pipe, tokens, CONTEXT, "mean")
    last = embed(pipe, tokens, CONTEXT, "last")
    assert mean.tokens == last.tokens == LONG
    assert mean.vector.dtype == np.float32 and mean.vector.shape == (states.shape[1],)
    np.testing.assert_allclose(mean.vector, unit(states.mean(0)), atol=1e-5)
    np.testing.assert_allclose(last.vector, unit(states[-1]), atol=1e-5)
    assert abs(np.linalg.norm(mean.vector) - 1) < 1e-6
    assert float(mean.vector @ last.vector) < 0.999  # the two poolings do differ
    assert cached(pipe) == [0, 0]


def test_passes_are_chunks_asking_for_hidden_states_and_caches_are_freed(hf):
    _, _, pipe = hf
    rec = Recording(pipe)
    embed(rec, ids(LONG), CONTEXT, request_id="e1")
    assert rec.passes == [("e1", PREFILL_CHUNK, 0, HIDDEN_STATES), ("e1", LONG - PREFILL_CHUNK, 512, HIDDEN_STATES)]
    assert rec.freed == ["e1"] and cached(pipe) == [0, 0]


def test_closing_it_half_way_frees_the_caches(hf):
    _, _, pipe = hf
    steps = embedding(pipe, ids(LONG), CONTEXT, request_id="half")
    p = next(steps)
    steps.send(pipe.forward(p.request_id, p.tokens, p.start_pos, p.num_logits))  # the second chunk waits
    assert cached(pipe) == [1, 1]
    steps.close()
    assert cached(pipe) == [0, 0]


def test_a_wrong_answer_fails_and_frees(hf):
    _, _, pipe = hf
    steps = embedding(pipe, ids(10), CONTEXT, request_id="bad")
    p = next(steps)
    pipe.forward(p.request_id, p.tokens, p.start_pos, 1)  # builds a cache
    with pytest.raises(Exception, match="answered with"):
        steps.send(np.zeros((1, 320), np.float32))  # logits, not [10, D] hidden states
    assert cached(pipe) == [0, 0]


def test_empty_and_too_long_inputs_are_refused(hf):
    _, _, pipe = hf
    with pytest.raises(ContextLengthError, match="empty"):
        embed(pipe, [], CONTEXT)
    with pytest.raises(ContextLengthError, match="context window"):
        embed(pipe, ids(CONTEXT + 1), CONTEXT)
    assert embed(pipe, ids(CONTEXT), CONTEXT).tokens == CONTEXT  # the whole window is usable
    assert cached(pipe) == [0, 0]


def test_a_hidden_states_pass_is_never_split_by_the_scheduler():
    hidden = Pending(Pass("e", np.arange(400), 0, HIDDEN_STATES))
    prompt = Pending(Pass("p", np.arange(400), 0, 1))
    decode = Pending(Pass("d", np.arange(1), 9, 1))
    pieces = plan_turn([hidden, prompt, decode], prefill_busy=128)
    by_rid = {p.run.request_id: p for p in pieces}
    assert len(by_rid["e"].run.tokens) == 400 and by_rid["e"].last and by_rid["e"].run.num_logits == HIDDEN_STATES
    assert len(by_rid["p"].run.tokens) == 128 and not by_rid["p"].last  # a prompt still runs in pieces


async def _generate(router: RouterActor, prompt: list[int], n: int) -> list[int]:
    out: list[int] = []
    async for d in router.submit(prompt, SamplingParams(max_tokens=n)):
        out += d.token_ids
    return out


def test_the_router_embeds_batches_beside_generation(hf):
    _, files, pipe = hf
    inputs = [ids(5 + 60 * i, seed=i) for i in range(11)] + [ids(LONG, seed=99)]  # 12 > EMBED_WINDOW
    alone = [embed(pipe, x, CONTEXT).vector for x in inputs]
    deltas = generate(pipe, files.tokenizer, ids(20, 5), SamplingParams(max_tokens=30), CONTEXT)
    text_alone = [t for d in deltas for t in d.token_ids]
    rec = Recording(pipe)
    router = RouterActor(rec, files.tokenizer, CONTEXT, max_concurrent=2)
    router.start()

    async def both():
        return await asyncio.gather(router.embed(inputs), _generate(router, ids(20, 5), 30))

    try:
        got, text = asyncio.run(both())
    finally:
        router.stop()
    assert text == text_alone  # generation is untouched by the embeddings beside it
    assert [g.tokens for g in got] == [len(x) for x in inputs]
    for a, g in zip(alone, got):
        np.testing.assert_allclose(g.vector, a, atol=1e-6)
    assert router.in_flight == 0 and cached(pipe) == [0, 0]
    hidden = [p for p in rec.passes if p[3] == HIDDEN_STATES]
    assert sum(n for _, n, _, _ in hidden) == sum(len(x) for x in inputs)  # every position once, unsplit


def test_the_router_counts_an_embeddings_request_as_one_and_refuses_when_full(hf):
    _, files, pipe = hf
    router = RouterActor(pipe, files.tokenizer, CONTEXT, max_concurrent=1)
    router.start()

    async def full():
        stream = router.submit(ids(10), SamplingParams(max_tokens=200))
        try:
            with pytest.raises(OverloadedError):
                await router.embed([ids(4)])
        finally:
            stream.cancel()
        await asyncio.sleep(0.2)
        return await router.embed([ids(4), ids(6)])  # two inputs, one slot

    async def too_long():
        with pytest.raises(ContextLengthError):
            await router.embed([ids(4), ids(CONTEXT + 1)])

    try:
        assert len(asyncio.run(full())) == 2
        asyncio.run(too_long())
    finally:
        router.stop()
    assert router.in_flight == 0
    for _ in range(50):  # the worker frees the cancelled generation's caches at its next turn
        if cached(pipe) == [0, 0]:
            break
        time.sleep(0.05)
    assert cached(pipe) == [0, 0]


def test_a_ring_of_three_nodes_gives_the_vector_of_one_process(tiny_gguf):
    from tests.cluster.harness import in_process_cluster

    files = open_model(tiny_gguf)
    eng = get_engine("numpy")
    local = LocalPipeline([eng.load_shard(files, 0, files.args.num_hidden_layers)])
    inputs = [ids(9, 1), ids(LONG, 2)]
    expected = [embed(local, x, CONTEXT, pooling).vector for x in inputs for pooling in ("mean", "last")]
    with in_process_cluster(tiny_gguf, 3) as ring:
        router = ring.nodes[0].ready_router()[1]
        got = [ring.run(router.embed([x], pooling))[0].vector for x in inputs for pooling in ("mean", "last")]
        ring.wait(
            lambda: [len(n.shard.role.runner.caches) for n in ring.nodes if n.shard.role] == [0, 0, 0],
            "every shard to free the embeddings' caches",
        )
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-6)


def test_a_node_lost_mid_embedding_is_failed_over_with_the_same_vectors(tiny_gguf):
    """node2 goes silent while an embeddings request is on the ring: the FailoverRing replays the inputs'
    positions on the survivors' ring and the vectors are those of one process."""
    from tests.cluster.harness import in_process_cluster

    files = open_model(tiny_gguf)
    local = LocalPipeline([get_engine("numpy").load_shard(files, 0, files.args.num_hidden_layers)])
    inputs = [ids(LONG, 10 + i) for i in range(3)]
    expected = [embed(local, x, CONTEXT).vector for x in inputs]
    with in_process_cluster(tiny_gguf, 3, heartbeat=0.2, timeout=3.0, wait_for_peers=2) as c:
        node0, _, node2 = c.nodes
        runner = node2.shard.role.runner
        single = runner.forward

        def slow(rid, x, start_pos, *args):  # type: ignore[no-untyped-def]
            if start_pos > 0:  # the second chunks: the first ones' positions are then replayed
                time.sleep(0.5)
            return single(rid, x, start_pos, *args)

        runner.forward = slow
        router = node0.ready_router()[1]
        running = asyncio.run_coroutine_threadsafe(router.embed(inputs), c.loop)
        c.wait(lambda: any(p > 0 for p in node2.shard.last_pos.values()), "a second chunk to reach node2")
        c.run(node2.stop_async())
        got = running.result(60)
        assert node0.rings.replays() >= 1
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g.vector, e, atol=1e-6)
