"""Continuous batching: the turn planner, the batched decode step, and the RouterActor running many
requests as one pass per turn — with every request's greedy tokens equal to running it alone."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from exo_actor.actors.router import RouterActor
from exo_actor.engines import Pass
from exo_actor.engines.numpy_engine import NumpyEngine
from exo_actor.errors import ContextLengthError
from exo_actor.runtime.batching import PREFILL_BUSY, PREFILL_IDLE, Pending, plan_turn
from exo_actor.runtime.generation import generate
from exo_actor.sampling import SamplingParams
from exo_actor.tokenizer import chat_prompt_ids
from exo_actor.weights import open_model
from tests.tiny import TinySpec, write_gguf


def _pass(rid, n, start=0, logits=1):
    return Pass(rid, np.arange(n, dtype=np.int64), start, logits)


# ---- the turn planner ----------------------------------------------------------------------------
def test_every_decode_step_runs_and_a_prompt_gets_the_busy_budget():
    pending = [Pending(_pass("a", 1, 10)), Pending(_pass("long", 1000)), Pending(_pass("b", 3, 7, 3))]
    pieces = plan_turn(pending)
    assert [p.index for p in pieces] == [0, 1, 2]
    assert pieces[0].last and pieces[2].last and len(pieces[2].run.tokens) == 3  # verification: whole
    piece = pieces[1]
    assert not piece.last and len(piece.run.tokens) == PREFILL_BUSY and piece.run.start_pos == 0
    assert piece.run.num_logits == 1


def test_a_prompt_runs_in_pieces_that_resume_where_the_last_ended():
    p = Pending(_pass("long", 300, start=40))
    seen = []
    while True:
        piece = plan_turn([p, Pending(_pass("d", 1, 5))])[0]
        seen.append((piece.run.start_pos, len(piece.run.tokens)))
        assert np.array_equal(piece.run.tokens, p.todo.tokens[p.done : p.done + len(piece.run.tokens)])
        if piece.last:
            break
        p.done += len(piece.run.tokens)
    assert seen == [(40, 128), (168, 128), (296, 44)]


def test_alone_a_prompt_gets_the_idle_budget_shared_first_come_first_served():
    pieces = plan_turn([Pending(_pass("x", 400)), Pending(_pass("y", 400)), Pending(_pass("z", 400))])
    assert [(p.index, len(p.run.tokens), p.last) for p in pieces] == [(0, 400, True), (1, PREFILL_IDLE - 400, False)]


def test_the_last_piece_holds_every_wanted_logit():
    p = Pending(_pass("v", 130, logits=5))  # 130 tokens, the last 5 positions' logits wanted
    (_, piece) = plan_turn([Pending(_pass("d", 1)), p])
    assert len(piece.run.tokens) == 125 and not piece.last  # leaves 5 for the last piece
    p.done = 125
    (_, piece) = plan_turn([Pending(_pass("d", 1)), p])
    assert len(piece.run.tokens) == 5 and piece.last and piece.run.num_logits == 5


def test_rows_are_capped():
    pending = [Pending(_pass(f"r{i}", 1)) for i in range(10)]
    assert [p.index for p in plan_turn(pending, max_rows=4)] == [0, 1, 2, 3]


# ---- the batched decode step on the numpy engine -------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "m.gguf"
    write_gguf(path, TinySpec(context=256))
    return open_model(path)


def _prefilled(files, prompts):
    runner = NumpyEngine().load_shard(files, 0, files.args.num_hidden_layers)
    for rid, prompt in prompts.items():
        runner.forward(rid, np.asarray(prompt), 0)
    return runner


@pytest.mark.parametrize("rows", [2, 4, 8])
def test_batched_decode_rows_match_one_request_at_a_time(tiny, rows):
    """Each row of the batch sees its own cache and position; up to 4 rows the numbers are bitwise
    those of running alone (one matrix-vector product per row), beyond that matrix-matrix products
    round differently in the last bits only."""
    rng = np.random.default_rng(rows)
    prompts = {f"r{i}": rng.integers(0, 200, 3 + 5 * i) for i in range(rows)}
    alone, batched = _prefilled(tiny, prompts), _prefilled(tiny, prompts)
    nxt = {rid: rng.integers(0, 200, 1) for rid in prompts}
    want = [alone.forward(rid, nxt[rid], len(p)) for rid, p in prompts.items()]
    got = batched.forward_batch([Pass(rid, nxt[rid], len(p)) for rid, p in prompts.items()])
    for w, g, rid in zip(want, got, prompts):
        assert g.shape == w.shape == (1, tiny.args.vocab_size)
        if rows <= 4:
            assert np.array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
        assert batched.cached_length(rid) == alone.cached_length(rid) == len(prompts[rid]) + 1


def test_a_batch_mixes_prompts_decode_rows_and_a_failing_request(tiny):
    runner = _prefilled(tiny, {"a": [1, 2, 3], "b": [4, 5]})
    window = tiny.args.max_position_embeddings
    results = runner.forward_batch(
        [
            Pass("a", np.array([7]), 3),
            Pass("new", np.arange(10), 0),  # a prompt piece, run on its own
            Pass("b", np.array([8]), 2),
            Pass("far", np.array([9]), 5),  # skips positions: fails alone
            Pass("huge", np.zeros(window + 1, dtype=np.int64), 0),  # over the window: fails alone
        ]
    )
    assert results[0].shape == results[2].shape == (1, tiny.args.vocab_size)
    assert results[1].shape == (1, tiny.args.vocab_size)
    assert "skips past" in str(results[3]) and isinstance(results[4], ContextLengthError)
    assert runner.cached_length("new") == 10 and runner.cached_length("a") == 4


# ---- the RouterActor on SmolLM2-135M -------------------------------------------------------------
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "What is 12 times 12?",
    "Who wrote Romeo and Juliet?",
    "Give me a word that rhymes with cat.",
    "What is the boiling point of water in Celsius?",
    "List two planets of the solar system.",
]


class CountingPipeline:
    """A pipeline that records the passes of every batched call."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []
        self.lock = threading.Lock()

    def forward(self, *a, **k):
        return self.pipe.forward(*a, **k)

    def forward_batch(self, passes):
        with self.lock:
            self.calls.append([(p.request_id, len(p.tokens), p.num_logits) for p in passes])
        return self.pipe.forward_batch(passes)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


async def _collect(router, prompts, params, delays=None):
    async def one(i, ids):
        await asyncio.sleep(delays[i] if delays else 0)
        tokens = []
        async for delta in router.submit(ids, params[i]):
            tokens += delta.token_ids
        return tokens

    return await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))


@pytest.fixture(scope="module")
def smollm2(smollm2_local):
    return smollm2_local


@pytest.mark.slow
def test_batched_and_unbatched_greedy_tokens_are_identical(smollm2):
    """Eight chat requests at once, of different lengths, some joining while others run, finishing
    at different steps: each gets exactly the tokens it gets alone, and the passes were shared."""
    files, pipe = smollm2
    prompts = [chat_prompt_ids(files.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    params = [SamplingParams(max_tokens=24 + 4 * i) for i in range(len(prompts))]
    alone = [
        [t for d in generate(pipe, files.tokenizer, ids, p, 8192) for t in d.token_ids]
        for ids, p in zip(prompts, params)
    ]
    counting = CountingPipeline(pipe)
    router = RouterActor(counting, files.tokenizer, 8192, max_concurrent=8)
    router.start()
    try:
        delays = [0, 0, 0, 0, 0.3, 0.3, 0.6, 0.6]  # some join mid-way
        together = asyncio.run(_collect(router, prompts, params, delays))
    finally:
        router.stop()
    for i, (a, t) in enumerate(zip(alone, together)):
        assert t == a, f"request {i}: {files.tokenizer.decode(t)!r} != {files.tokenizer.decode(a)!r}"
    rows = [sum(1 for _, n, _ in call if n == 1) for call in counting.calls]
    assert max(rows) == 8  # all eight decoding in one pass at some point
    assert router.batching_info()["mean_rows_per_turn"] > 3  # the passes were shared


@pytest.mark.slow
def test_a_long_prompt_does_not_stall_running_streams(smollm2):
    """While a 1,500-token prompt is prefilled, the streams already decoding get a token every turn:
    each turn carries their decode rows plus at most PREFILL_BUSY prompt tokens."""
    files, pipe = smollm2
    short = chat_prompt_ids(files.tokenizer, [{"role": "user", "content": "Write a story about a dragon."}])
    long_text = " ".join(f"Item {i} is on the list." for i in range(200))
    long = chat_prompt_ids(files.tokenizer, [{"role": "user", "content": long_text + " How many items?"}])
    assert len(long) > 1200
    counting = CountingPipeline(pipe)
    router = RouterActor(counting, files.tokenizer, 8192, max_concurrent=8)
    router.start()
    try:
        params = [SamplingParams(max_tokens=120), SamplingParams(max_tokens=120), SamplingParams(max_tokens=4)]
        out = asyncio.run(_collect(router, [short, short, long], params, [0, 0, 0.2]))
    finally:
        router.stop()
    assert out[0] == out[1] and len(out[0]) == 120 and len(out[2]) > 0
    prompt_turns = [c for c in counting.calls if any(n > 1 for _, n, _ in c)]
    mixed = [c for c in prompt_turns if sum(1 for _, n, _ in c if n == 1) == 2]
    assert len(mixed) >= len(long) // PREFILL_BUSY  # the prompt ran in pieces beside both streams
    for call in counting.calls:  # whenever a stream was decoding, at most PREFILL_BUSY prompt tokens ran
        if any(n == 1 for _, n, _ in call):
            assert sum(n for _, n, _ in call if n > 1) <= PREFILL_BUSY


@pytest.mark.slow
def test_a_ring_batches_decode_steps_with_the_same_tokens(smollm2):
    """Three ClusterNodes on loopback: concurrent requests through node0's router travel the ring as
    ForwardBatch messages, each with the tokens it gets alone on one process; afterwards every shard
    holds exactly the caches the router's prefix cache keeps for the next turns."""
    from exo_actor.config import NodeConfig
    from tests.cluster.harness import in_process_cluster

    files, pipe = smollm2
    prompts = [chat_prompt_ids(files.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS[:5]]
    params = [SamplingParams(max_tokens=16 + 3 * i) for i in range(len(prompts))]
    alone = [
        [t for d in generate(pipe, files.tokenizer, ids, p, 8192) for t in d.token_ids]
        for ids, p in zip(prompts, params)
    ]

    def node_config(i: int) -> NodeConfig:  # the router's prefix cache on (the harness turns it off); one batch
        return NodeConfig(model="smollm2-135m", engine="numpy", micro_batches=1)

    with in_process_cluster("smollm2-135m", 3, memories_gib=[8, 4, 4], node_config=node_config, timeout=10.0) as c:
        nodes = c.nodes
        ring, router = nodes[0].rings.ring(0), nodes[0].rings.router(0)
        seen = []
        original = ring.on_sampled  # the last shard sends back the tokens it chose
        ring.on_sampled = lambda msg: (seen.append(len(msg.rids)), original(msg))
        # submitted on the nodes' own loop, all in one go, so that they join the same turn (one answer ends at
        # its 14th token)
        together = c.run(_collect(router, prompts, params), 300)
        assert together == alone
        assert max(seen) == len(prompts)  # one message carried every request's decode step
        kept = set(router.prefix.entries)
        assert len(kept) == len(prompts)
        deadline = time.monotonic() + 5
        while any(set(n.shard.role.runner.caches) != kept for n in nodes):
            assert time.monotonic() < deadline, [list(n.shard.role.runner.caches) for n in nodes]
            time.sleep(0.05)
