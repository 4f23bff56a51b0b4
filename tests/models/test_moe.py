"""Mixtures of experts: Qwen3-MoE and Mixtral against transformers, from Hugging Face folders (per-expert
tensors, as on the Hub) and from GGUF files as llama.cpp's converter writes them (experts stacked into
`ffn_{gate,up,down}_exps`, the router `ffn_gate_inp`; Mixtral as `llama` with `llama.expert_count`).

The tiny models have 4 experts, 2 per token, with a router strong enough that neighbouring tokens pick
different experts. Tolerance: numpy logits within ATOL (2e-4) of transformers' float32; greedy tokens
identical; batched decode rows give the lone rows' tokens. The torch engine runs them too, within its stated
tolerance of numpy."""

from __future__ import annotations

import dataclasses

import httpx
import numpy as np
import pytest

from exo_actor.engines import get_engine
from exo_actor.engines.base import Pass
from exo_actor.errors import UnsupportedModelError
from exo_actor.models.config import ModelArgs
from exo_actor.weights import open_model
from exo_actor.weights.sizes import shard_bytes
from tests.conftest import require
from tests.models.helpers import (
    ATOL,
    all_logits,
    check_torch_engine,
    greedy,
    hf_greedy,
    pipeline,
    rel_err,
    write_quantized,
)
from tests.tiny import TinySpec, write_gguf, write_hf_folder

MOE = {
    "qwen3moe": TinySpec(architecture="qwen3moe", tied=False),
    "mixtral": TinySpec(architecture="mixtral", tied=False),
}
IDS = [int(i) for i in np.random.default_rng(1).integers(3, 300, size=40)]


def _write(tmp_path, spec: TinySpec, source: str):
    ref = tmp_path / "hf"
    write_hf_folder(ref, spec)
    if source == "hf":
        return ref, ref
    write_gguf(tmp_path / "m.gguf", spec)
    return tmp_path / "m.gguf", ref


@pytest.mark.parametrize("source", ["hf", "gguf"])
@pytest.mark.parametrize("family", list(MOE))
def test_logits_match_transformers(tmp_path, family, source):
    require("transformers")
    from tests.reference import hf_logits

    path, ref = _write(tmp_path, MOE[family], source)
    files, pipe = pipeline(path)
    assert (files.args.num_experts, files.args.num_experts_per_tok) == (4, 2)
    np.testing.assert_allclose(all_logits(pipe, IDS, prefill=25), hf_logits(ref, IDS), atol=ATOL, rtol=1e-3)


def test_dense_layers_among_expert_layers(tmp_path):
    """Qwen3-MoE's mlp_only_layers keep a dense MLP of intermediate_size (config.json only: llama.cpp's
    qwen3moe has experts in every layer)."""
    require("transformers")
    from tests.reference import hf_logits

    path, ref = _write(tmp_path, dataclasses.replace(MOE["qwen3moe"], mlp_only_layers=(1,)), "hf")
    files, pipe = pipeline(path)
    assert [files.args.layer_is_moe(i) for i in range(4)] == [True, False, True, True]
    assert pipe.shards[0].shard.w.layers[1].experts is None
    np.testing.assert_allclose(all_logits(pipe, IDS, prefill=25), hf_logits(ref, IDS), atol=ATOL, rtol=1e-3)


@pytest.mark.parametrize("source", ["hf", "gguf"])
@pytest.mark.parametrize("family", list(MOE))
def test_greedy_tokens_match_transformers(tmp_path, family, source):
    require("transformers")
    path, ref = _write(tmp_path, MOE[family], source)
    prompt = IDS[:12]
    want = hf_greedy(ref, prompt, 40)
    assert len(set(want)) > 3
    assert greedy(pipeline(path)[1], prompt, 40) == want


def _routes(files, prompts: dict[str, list[int]]) -> set[tuple[int, int]]:
    """The (expert, expert) pairs layer 0's router picks for each prompt's last token."""
    shard = get_engine("numpy").load_shard(files, 0, 1).shard
    w = shard.w.layers[0]
    out = set()
    for p in prompts.values():
        x = shard.embed(np.array(p[-1:]))
        x = x * (w.attn_norm / np.sqrt((x * x).mean() + shard.eps))  # the layer's input norm, no attention
        out.add(tuple(sorted(np.argsort(-(x[0] @ w.router))[:2].tolist())))
    return out


@pytest.mark.parametrize("family", list(MOE))
def test_eight_batched_requests_routed_to_different_experts_give_their_lone_tokens(tmp_path, family):
    """8 requests decode together (one batched pass per step over the ring's weights) and each gets the
    tokens it gets alone, though their tokens go to different experts. Logits agree within 1e-4 (beyond 4 rows
    the attention and dense products run as one matrix product, which rounds otherwise than row by row; each
    row's experts always run as matrix-vector products)."""
    path, _ = _write(tmp_path, MOE[family], "gguf")
    files = open_model(path)
    rng = np.random.default_rng(7)
    prompts = {f"r{i}": [int(t) for t in rng.integers(3, 300, size=3 + i)] for i in range(8)}
    assert len(_routes(files, prompts)) >= 3  # the rows' first tokens already use several expert pairs
    batched = [get_engine("numpy").load_shard(files, a, b) for a, b in ((0, 2), (2, 4))]
    lone = [get_engine("numpy").load_shard(files, a, b) for a, b in ((0, 2), (2, 4))]

    def run(shards, passes):
        x = [p.tokens for p in passes]
        for s in shards:
            outs = s.forward_batch([dataclasses.replace(p, tokens=t) for p, t in zip(passes, x)])
            assert all(isinstance(o, np.ndarray) for o in outs), outs
            x = outs
        return x

    nxt = {}
    for rid, p in prompts.items():  # prompts one by one, then decode steps batched
        for shards in (batched, lone):
            nxt[rid] = int(np.argmax(run(shards, [Pass(rid, np.array(p), 0)])[0][-1]))
    tokens = {rid: [t] for rid, t in nxt.items()}
    for step in range(6):
        passes = [Pass(rid, np.array(tokens[rid][-1:]), len(p) + step) for rid, p in prompts.items()]
        together = run(batched, passes)
        for p, got in zip(passes, together):
            alone = run(lone, [p])[0]
            np.testing.assert_allclose(got, alone, atol=1e-4)
            assert int(np.argmax(got[-1])) == int(np.argmax(alone[-1]))
            tokens[p.request_id].append(int(np.argmax(got[-1])))
    assert len({tuple(t) for t in tokens.values()}) > 4  # different continuations


@pytest.mark.parametrize("shards", [2, 3])
@pytest.mark.parametrize("family", list(MOE))
def test_shards_give_identical_tokens_and_logits(tmp_path, family, shards):
    path, _ = _write(tmp_path, MOE[family], "gguf")
    _, one = pipeline(path, 1)
    _, many = pipeline(path, shards)
    np.testing.assert_array_equal(all_logits(many, IDS, 20), all_logits(one, IDS, 20))
    assert greedy(many, IDS[:12], 32) == greedy(one, IDS[:12], 32)


def test_the_router_matters(tmp_path):
    """Routing every token to the same experts changes the logits: the comparisons above can fail."""
    path, _ = _write(tmp_path, MOE["qwen3moe"], "hf")
    _, pipe = pipeline(path)
    want = pipe.forward("a", np.array(IDS), 0)
    for layer in pipe.shards[0].shard.w.layers:
        layer.router = np.zeros_like(layer.router)
        layer.router[:, 0] = 1.0
    assert np.abs(pipe.forward("b", np.array(IDS), 0) - want).max() > 100 * ATOL


def test_memory_accounting_counts_every_expert(tmp_path):
    path, _ = _write(tmp_path, MOE["qwen3moe"], "gguf")
    files = open_model(path)
    runner = get_engine("numpy").load_shard(files, 1, 3)
    assert shard_bytes(files.args, files.kinds, 1, 3, "numpy") == runner.weight_bytes
    assert files.args.shard_bytes(1, 3) == runner.weight_bytes
    dense = ModelArgs(**{**vars(files.args), "num_experts": 0, "num_experts_per_tok": 0})
    E, D, Fe = 4, files.args.hidden_size, files.args.expert_size
    assert files.args.layer_bytes - dense.layer_bytes == 4 * (E * (3 * D * Fe + D) - 3 * D * dense.intermediate_size)


@pytest.mark.parametrize("source", ["hf-bf16", "gguf-q8"])
@pytest.mark.parametrize("family", list(MOE))
def test_torch_engine_within_its_tolerance_of_numpy(tmp_path, family, source):
    """The fast engine runs the experts packed like dense MLPs (a GGUF's Q8_0 stacks stay blocks, sliced per
    expert) with a float32 router, within its stated tolerance of numpy (8 batched rows on different experts
    included), its memory plan equal to what it holds."""
    require("torch")
    files = open_model(write_quantized(tmp_path, MOE[family], source))
    if source == "gguf-q8":
        held = get_engine("torch").load_shard(files, 0, 2).weight_bytes
        assert held == shard_bytes(files.args, files.kinds, 0, 2, "torch")
    check_torch_engine(files, IDS[:20], IDS[20:24], {f"r{i}": IDS[i : i + 3 + i] for i in range(8)})


def test_numpy_with_quantize_runs_the_experts_quantized(tmp_path):
    """--quantize q8 on a float checkpoint quantizes every expert like any matrix (numpy then computes on
    the dequantized values: within 2% of the float32 model)."""
    path, _ = _write(tmp_path, MOE["qwen3moe"], "hf")
    files = open_model(path)
    want = get_engine("numpy").load_shard(files, 0, 4).forward("r", np.array(IDS[:20]), 0, 20)
    got = get_engine("numpy", quantize="q8").load_shard(files, 0, 4).forward("r", np.array(IDS[:20]), 0, 20)
    assert 0 < rel_err(got, want) <= 2e-2


def test_bad_expert_configs_are_one_line():
    base = {"model_type": "qwen3_moe", "hidden_size": 8, "num_hidden_layers": 2, "intermediate_size": 8}
    base |= {"num_attention_heads": 2, "vocab_size": 10, "num_experts": 4}
    for bad, match in (
        ({"num_experts_per_tok": 5}, "num_experts_per_tok must be between 1 and num_experts"),
        ({"num_experts_per_tok": 0}, "num_experts_per_tok must be between 1 and num_experts"),
        ({"num_experts_per_tok": 2, "moe_intermediate_size": 0}, "moe_intermediate_size must be a positive"),
        ({"num_experts_per_tok": 2, "decoder_sparse_step": 0}, "decoder_sparse_step must be an integer >= 1"),
    ):
        with pytest.raises(UnsupportedModelError, match=match):
            ModelArgs.from_hf_dict({**base, **bad})


@pytest.mark.ring
def test_a_three_node_ring_gives_the_single_process_tokens(tmp_path):
    """A Qwen3-MoE split over three `exo-actor start` processes on loopback (each holding its layers' experts)
    answers with the single-process greedy tokens."""
    from tests.api.servers import loopback_ring

    spec = dataclasses.replace(MOE["qwen3moe"], layers=6)
    model = tmp_path / "moe.gguf"
    write_gguf(model, spec)
    files, pipe = pipeline(model)
    prompt = IDS[:10]
    want = greedy(pipe, prompt, 12)
    extra = ("--model", str(model), "--engine", "numpy")
    with loopback_ring(tmp_path, ["4", "4", "4"], extra=extra, ready_timeout=120) as r:
        url = r["urls"][0]
        plan = httpx.get(url + "/v1/cluster", timeout=10).json()["plan"]
        assert sorted(p["node"] for p in plan) == ["node0", "node1", "node2"]
        body = {"model": str(model), "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
        resp = httpx.post(url + "/v1/completions", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["text"] == files.tokenizer.decode(want)


@pytest.mark.parametrize("family", list(MOE))
def test_mlx_matches_numpy(tmp_path, family):
    """MLX runs the experts as quantized products (the GGUF's Q8_0 blocks) with a float32 router: within 1e-4
    of numpy on the same weights (a prompt and decode steps over two shards), its memory plan what it holds."""
    require("mlx.core")
    from gguf import GGMLQuantizationType as Q

    path = tmp_path / "m.gguf"
    write_gguf(path, MOE[family], qtype=Q.Q8_0)
    files = open_model(path)
    ref = get_engine("numpy").load_shard(files, 0, 4)
    first, last = get_engine("mlx").load_shard(files, 0, 2), get_engine("mlx").load_shard(files, 2, 4)
    assert first.weight_bytes == shard_bytes(files.args, files.kinds, 0, 2, "mlx")
    got = last.forward("r", first.forward("r", np.array(IDS[:20]), 0), 0, 20)
    np.testing.assert_allclose(got, ref.forward("r", np.array(IDS[:20]), 0, 20), atol=1e-4)
    for pos, tok in enumerate(IDS[20:24], start=20):
        got = last.forward("r", first.forward("r", np.array([tok]), pos), pos)
        np.testing.assert_allclose(got, ref.forward("r", np.array([tok]), pos), atol=1e-4)
