"""The numpy Llama/Qwen2 shard against transformers, on tiny random models of every variant."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import require
from tests.models.helpers import ATOL
from tests.models.helpers import all_logits as _all_logits
from tests.models.helpers import pipeline as _pipeline
from tests.tiny import TinySpec, write_hf_folder

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
VARIANTS = {
    "llama-tied-gqa2": TinySpec(),
    "llama-untied-mha": TinySpec(tied=False, kv_heads=4),
    "llama-gqa4": TinySpec(heads=8, kv_heads=2, hidden_size=64),
    "llama-mqa": TinySpec(kv_heads=1),
    "llama3-rope-scaling": TinySpec(rope_scaling=LLAMA3, rope_theta=500000.0),
    "linear-rope-scaling": TinySpec(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "qwen2-bias": TinySpec(architecture="qwen2", tied=False, rope_theta=1e6),
    "qwen2-tied": TinySpec(architecture="qwen2", tied=True, kv_heads=1),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_transformers(tmp_path, name):
    require("transformers")
    from tests.reference import hf_logits

    spec = VARIANTS[name]
    write_hf_folder(tmp_path, spec)
    ids = [int(i) for i in np.random.default_rng(1).integers(3, 300, size=40)]
    expected = hf_logits(tmp_path, ids)
    _, pipe = _pipeline(tmp_path)
    got = _all_logits(pipe, ids, prefill=25)  # 25 > 16: rope scaling's long wavelengths matter
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=1e-3)


def test_long_prefill_in_attention_blocks_matches_transformers(tmp_path):
    """A prefill longer than one attention block (several blocks, causal mask on each diagonal)."""
    require("transformers")
    from tests.reference import hf_logits

    write_hf_folder(tmp_path, TinySpec(architecture="qwen2", tied=False, context=256))
    ids = [int(i) for i in np.random.default_rng(4).integers(3, 300, size=150)]
    _, pipe = _pipeline(tmp_path)
    np.testing.assert_allclose(_all_logits(pipe, ids, prefill=140), hf_logits(tmp_path, ids), atol=ATOL, rtol=1e-3)


@pytest.mark.parametrize("shards", [2, 3, 4])
def test_shards_chain_to_the_same_logits(tmp_path, shards):
    write_hf_folder(tmp_path, TinySpec(tied=False))
    ids = list(range(3, 33))
    _, one = _pipeline(tmp_path, 1)
    _, many = _pipeline(tmp_path, shards)
    np.testing.assert_allclose(_all_logits(many, ids, 20), _all_logits(one, ids, 20), atol=1e-5)


def test_middle_shard_maps_hidden_to_hidden(tmp_path):
    write_hf_folder(tmp_path, TinySpec())
    files, pipe = _pipeline(tmp_path, 3)
    first, middle, last = pipe.shards
    h = first.forward("r", np.array([5, 6, 7]), 0)
    assert h.shape == (3, 64) and h.dtype == np.float32
    h2 = middle.forward("r", h, 0)
    assert h2.shape == (3, 64) and h2.dtype == np.float32
    assert last.forward("r", h2, 0).shape == (1, files.args.vocab_size)
    assert middle.shard.w.embed is None and middle.shard.w.lm_head_t is None


def test_rollback_by_position_equals_fresh_computation(tmp_path):
    """Writing at a position below the cached length discards the rest (speculative rollback)."""
    write_hf_folder(tmp_path, TinySpec())
    _, pipe = _pipeline(tmp_path, 2)
    pipe.forward("a", np.arange(3, 13), 0)  # 10 positions cached
    pipe.forward("a", np.array([99, 98, 97]), 10)  # 3 "rejected" positions
    rolled = pipe.forward("a", np.array([40, 41]), 10, num_logits=2)
    fresh = pipe.forward("b", np.concatenate([np.arange(3, 13), [40, 41]]), 0, num_logits=2)
    np.testing.assert_allclose(rolled, fresh, atol=1e-5)
    assert pipe.shards[0].cached_length("a") == 12
    pipe.shards[0].truncate("a", 4)
    assert pipe.shards[0].cached_length("a") == 4
    pipe.free("a")
    assert pipe.shards[0].cached_length("a") == 0 and "a" not in pipe.shards[0].caches


def test_cache_grows_past_its_initial_capacity(tmp_path):
    write_hf_folder(tmp_path, TinySpec(context=600))
    _, pipe = _pipeline(tmp_path)
    ids = [int(i) for i in np.random.default_rng(2).integers(3, 300, size=300)]
    chunked = _all_logits(pipe, ids, prefill=250)[-1]  # crosses the 256-position growth step
    whole = pipe.forward("w", np.array(ids), 0)[-1]
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_float64_inputs_do_not_leak_into_compute(tmp_path):
    write_hf_folder(tmp_path, TinySpec())
    _, pipe = _pipeline(tmp_path, 2)
    h = pipe.shards[0].forward("r", np.array([3, 4]), 0)
    out = pipe.shards[1].forward("r", h.astype(np.float64), 0)  # a careless caller
    assert out.dtype == np.float32
