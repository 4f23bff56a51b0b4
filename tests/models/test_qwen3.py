"""Qwen3 (Qwen2 without q/k/v biases, plus an RMSNorm of every q and k head before RoPE, and an explicit
head_dim) against transformers' Qwen3ForCausalLM, from Hugging Face folders and from GGUF files written as
llama.cpp's converter writes them (`blk.N.attn_q_norm` / `attn_k_norm`, q/k rows not permuted,
`qwen3.attention.key_length`).

Tolerances: numpy logits within ATOL (2e-4, float32 summed in another order) of transformers' and greedy
tokens identical; the torch engine within its stated tolerance of numpy (tests/engines/test_quantized.py:
3e-2 of the logits' range, batched rows within 1e-2 of lone rows); MLX and tinygrad within 1e-4 of numpy
(tests/engines/test_engines.py)."""

from __future__ import annotations

import numpy as np
import pytest

from exo_actor.engines import get_engine
from exo_actor.engines.base import Pass
from exo_actor.errors import UnsupportedModelError
from exo_actor.models.config import ModelArgs
from exo_actor.storage.registry import load_registry
from exo_actor.weights import open_model
from exo_actor.weights.sizes import shard_bytes
from tests.conftest import require
from tests.models.helpers import ATOL, all_logits, check_torch_engine, greedy, hf_greedy, pipeline, write_quantized
from tests.tiny import TinySpec, write_gguf, write_hf_folder

VARIANTS = {
    "tied-gqa2": TinySpec(architecture="qwen3", rope_theta=1e6),
    "untied-head-dim-32": TinySpec(architecture="qwen3", tied=False, explicit_head_dim=32),  # 32 != 64 / 4
    "mqa-head-dim-8": TinySpec(architecture="qwen3", heads=4, kv_heads=1, explicit_head_dim=8),
}
IDS = [int(i) for i in np.random.default_rng(1).integers(3, 300, size=40)]


def _write(tmp_path, spec, source):
    """The model as an HF folder (also the reference's) and, for source "gguf", as a GGUF file too."""
    write_hf_folder(tmp_path / "hf", spec)
    if source == "hf":
        return tmp_path / "hf"
    write_gguf(tmp_path / "m.gguf", spec)
    return tmp_path / "m.gguf"


@pytest.mark.parametrize("source", ["hf", "gguf"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers(tmp_path, name, source):
    require("transformers")
    from tests.reference import hf_logits

    spec = VARIANTS[name]
    path = _write(tmp_path, spec, source)
    files, pipe = pipeline(path)
    assert files.args.architecture == "qwen3" and files.args.dim_head == spec.head_dim
    expected = hf_logits(tmp_path / "hf", IDS)
    got = all_logits(pipe, IDS, prefill=25)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=1e-3)


@pytest.mark.parametrize("source", ["hf", "gguf"])
def test_greedy_tokens_match_transformers(tmp_path, source):
    require("transformers")
    spec = VARIANTS["untied-head-dim-32"]
    path = _write(tmp_path, spec, source)
    prompt = IDS[:8]
    want = hf_greedy(tmp_path / "hf", prompt, 40)
    assert len(set(want)) > 3  # a sequence that can tell implementations apart
    assert greedy(pipeline(path)[1], prompt, 40) == want


def test_the_head_norms_matter(tmp_path):
    """Without q/k norms the same weights give other logits: the comparisons above can fail."""
    path = _write(tmp_path, VARIANTS["tied-gqa2"], "hf")
    files, pipe = pipeline(path)
    normed = pipe.forward("a", np.array(IDS), 0)
    for layer in pipe.shards[0].shard.w.layers:
        layer.q_norm = np.ones_like(layer.q_norm)
        layer.k_norm = np.ones_like(layer.k_norm)
    assert np.abs(pipe.forward("b", np.array(IDS), 0) - normed).max() > 100 * ATOL


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_give_identical_tokens_and_logits(tmp_path, shards):
    path = _write(tmp_path, VARIANTS["untied-head-dim-32"], "gguf")
    _, one = pipeline(path, 1)
    _, many = pipeline(path, shards)
    np.testing.assert_array_equal(all_logits(many, IDS, 20), all_logits(one, IDS, 20))
    assert greedy(many, IDS[:5], 32) == greedy(one, IDS[:5], 32)


def test_batched_decode_rows_equal_lone_rows(tmp_path):
    """Continuous batching on numpy: each request's row is bitwise what it gets alone."""
    path = _write(tmp_path, VARIANTS["tied-gqa2"], "gguf")
    files = open_model(path)
    batched, lone = (get_engine("numpy").load_shard(files, 0, 4) for _ in range(2))
    prompts = {"a": [3, 4, 5], "b": [9, 1], "c": [7, 7, 7, 7]}
    for rid, p in prompts.items():
        batched.forward(rid, np.array(p), 0), lone.forward(rid, np.array(p), 0)
    passes = [Pass(rid, np.array([11 + i]), len(p)) for i, (rid, p) in enumerate(prompts.items())]
    for p, got in zip(passes, batched.forward_batch(passes)):
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, lone.forward(p.request_id, p.tokens, p.start_pos))


@pytest.mark.parametrize("name", ["tied-gqa2", "untied-head-dim-32"])
@pytest.mark.parametrize("source", ["hf-bf16", "gguf-q8"])
def test_torch_engine_within_its_tolerance_of_numpy(tmp_path, name, source):
    """A prompt longer than the row-attention limit (the causal attention call too), decode steps, batched rows."""
    require("torch")
    files = open_model(write_quantized(tmp_path, VARIANTS[name], source))
    check_torch_engine(files, IDS[:20], IDS[20:26], {"a": IDS[:3], "b": IDS[:5]})


@pytest.mark.parametrize("engine", ["mlx", "tinygrad"])
def test_mlx_and_tinygrad_match_numpy(tmp_path, engine):
    """Both float32 engines normalize the heads too: within 1e-4 of numpy (tests/engines/test_engines.py's
    tolerance), prompt and cached decode steps (tinygrad's compiled decode step included)."""
    require({"mlx": "mlx.core", "tinygrad": "tinygrad"}[engine])
    files = open_model(_write(tmp_path, VARIANTS["untied-head-dim-32"], "gguf"))
    ref = get_engine("numpy").load_shard(files, 0, 4)
    eng = get_engine(engine)
    first, last = eng.load_shard(files, 0, 1), eng.load_shard(files, 1, 4)
    prompt = np.array(IDS[:20])
    np.testing.assert_allclose(
        last.forward("r", first.forward("r", prompt, 0), 0, 20), ref.forward("r", prompt, 0, 20), atol=1e-4
    )
    for pos, tok in enumerate(IDS[20:24], start=20):
        got = last.forward("r", first.forward("r", np.array([tok]), pos), pos)
        np.testing.assert_allclose(got, ref.forward("r", np.array([tok]), pos), atol=1e-4)


def test_memory_accounting_counts_the_head_norms(tmp_path):
    files = open_model(_write(tmp_path, VARIANTS["untied-head-dim-32"], "gguf"))
    args = files.args
    runner = get_engine("numpy").load_shard(files, 1, 3)
    assert shard_bytes(args, files.kinds, 1, 3, "numpy") == runner.weight_bytes
    assert args.qk_norm and args.shard_bytes(1, 3) == runner.weight_bytes
    without = ModelArgs(**{**vars(args), "architecture": "qwen2"})  # the same shape without head norms
    assert args.layer_bytes - without.layer_bytes == 2 * 4 * args.dim_head


def test_config_and_registry():
    args = ModelArgs.from_hf_dict(
        {
            "model_type": "qwen3",
            "hidden_size": 1024,
            "num_hidden_layers": 2,
            "intermediate_size": 64,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 10,
            "attention_bias": False,
        }  # fmt: skip
    )
    assert (args.architecture, args.dim_head, args.attention_bias, args.qk_norm) == ("qwen3", 128, False, True)
    with pytest.raises(UnsupportedModelError, match="model_type 'gemma3' is not supported.*qwen3"):
        ModelArgs.from_hf_dict({"model_type": "gemma3"})
    for refused in ({"attention_bias": True}, {"use_sliding_window": True}):  # o_proj bias, sliding window
        with pytest.raises(UnsupportedModelError, match="not supported"):
            ModelArgs.from_hf_dict({**vars(args), "model_type": "qwen3", "rope_scaling": None, **refused})
    registry = load_registry()
    assert registry["qwen3-8b"].draft == "qwen3-0.6b"
    for name, layers in (("qwen3-0.6b", 28), ("qwen3-8b", 36)):
        e = registry[name]
        assert (e.architecture, e.layers) == ("qwen3", layers) and e.hf_repo.startswith("Qwen/Qwen3-")
        shaped = ModelArgs(e.architecture, num_hidden_layers=e.layers, **(e.shape or {}))
        assert shaped.qk_norm and shaped.dim_head == 128
