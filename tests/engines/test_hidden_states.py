"""The last shard's hidden-states answer (num_logits == HIDDEN_STATES, for embeddings) on every engine:
the final-normed hidden states [T, D] of every position, equal to the numpy engine's layers run by hand,
in one pass or in chunks over a growing KV cache, alone or beside decode steps in a batch.

Tolerances: numpy, MLX and tinygrad compute in float32 and differ only in summation order (measured
max 1.7e-6 on values up to 3.2; allowed 1e-4, as the logits in test_engines.py); the torch engine runs
the weight products in bfloat16 (8 bits of mantissa), measured max 1.7e-2 here: allowed 3e-2.
"""

from __future__ import annotations

import numpy as np
import pytest

from exo_actor.engines import HIDDEN_STATES, Pass, get_engine
from exo_actor.models.llama import rms_norm
from exo_actor.weights import open_model
from tests.conftest import require
from tests.tiny import TinySpec, write_gguf

ATOL = {"numpy": 1e-5, "mlx": 1e-4, "tinygrad": 1e-4, "torch": 3e-2}
MODULES = {"numpy": "numpy", "mlx": "mlx.core", "tinygrad": "tinygrad", "torch": "torch"}
IDS = np.array([5, 9, 13, 2, 7, 40, 41, 3, 99, 12, 6])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("hidden") / "tiny.gguf"
    write_gguf(path, TinySpec(context=64, tied=False))
    return open_model(path)


def reference(files, ids: np.ndarray) -> np.ndarray:
    """The numpy engine's layers run by hand, the final norm applied: [T, D]."""
    shard = get_engine("numpy").load_shard(files, 0, files.args.num_hidden_layers).shard
    cache = shard.new_cache()
    h = shard.embed(ids)
    cache.begin(0, len(ids))
    from exo_actor.models.attention import attention
    from exo_actor.models.llama import matmul

    def attend(i, q, k, v):
        keys, values = cache.write(i, 0, k, v)
        return attention(q, keys, values, 0)

    ropes = shard._rope_tables(np.arange(len(ids)))
    for i, layer in enumerate(shard.w.layers):
        h = shard._layer(h, layer, i, ropes[shard.rope_of[i]], rms_norm, matmul, attend)
    return rms_norm(h, shard.w.final_norm, shard.eps)


def shards(files, name: str):
    require(MODULES[name])
    eng = get_engine(name)
    return eng.load_shard(files, 0, 2), eng.load_shard(files, 2, 4)


@pytest.mark.parametrize("name", list(ATOL))
def test_hidden_states_of_every_position(tiny, name):
    first, last = shards(tiny, name)
    out = last.forward("r", first.forward("r", IDS, 0), 0, HIDDEN_STATES)
    assert out.shape == (len(IDS), tiny.args.hidden_size) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(tiny, IDS), atol=ATOL[name])
    # a later pass of the same request asks for logits again, over the cache the hidden pass wrote
    logits = last.forward("r", first.forward("r", IDS[:1], len(IDS)), len(IDS))
    assert logits.shape == (1, tiny.args.vocab_size)


@pytest.mark.parametrize("name", list(ATOL))
def test_chunks_over_a_growing_cache_equal_one_pass(tiny, name):
    first, last = shards(tiny, name)
    parts = []
    for start, n in ((0, 4), (4, 1), (5, 6)):  # a one-token chunk too: not a decode step
        chunk = IDS[start : start + n]
        parts.append(last.forward("c", first.forward("c", chunk, start), start, HIDDEN_STATES))
    np.testing.assert_allclose(np.concatenate(parts), reference(tiny, IDS), atol=ATOL[name])
    for runner in (first, last):
        runner.free("c")
        assert runner.cached_length("c") == 0


@pytest.mark.parametrize("name", list(ATOL))
def test_beside_decode_steps_in_a_batch(tiny, name):
    first, last = shards(tiny, name)
    for rid in ("a", "b"):  # two requests decoding
        last.forward(rid, first.forward(rid, IDS[:3], 0), 0)
    passes = [Pass("a", np.array([8]), 3), Pass("e", IDS, 0, HIDDEN_STATES), Pass("b", np.array([9]), 3)]
    mid = first.forward_batch(passes)
    outs = last.forward_batch([Pass(p.request_id, x, p.start_pos, p.num_logits) for p, x in zip(passes, mid)])
    assert [np.shape(o) for o in outs] == [(1, tiny.args.vocab_size), (len(IDS), 64), (1, tiny.args.vocab_size)]
    np.testing.assert_allclose(outs[1], reference(tiny, IDS), atol=ATOL[name])
