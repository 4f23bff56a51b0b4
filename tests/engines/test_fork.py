"""Forking a request's KV cache on every engine (the choices of an n > 1 request share their prompt's
prefill): the copy continues exactly as a request that prefilled the prompt itself, and the source and
the copy then grow apart without touching each other's positions."""

from __future__ import annotations

import numpy as np
import pytest

from exo_actor.engines import get_engine
from exo_actor.runtime.generation import LocalPipeline
from exo_actor.weights import open_model
from tests.conftest import require
from tests.tiny import TinySpec, write_gguf

MODULES = {"numpy": "numpy", "mlx": "mlx.core", "tinygrad": "tinygrad", "torch": "torch"}
# A position computed in a one-token pass differs from the same position inside a longer pass in the
# order of its sums only (float32), or in bfloat16 rounding on the torch engine (as in test_engines.py).
ATOL = {"numpy": 1e-4, "mlx": 1e-4, "tinygrad": 1e-4, "torch": 3e-2}
PROMPT = np.array([5, 9, 13, 2, 7, 40, 41, 3, 99, 12, 6])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("fork") / "tiny.gguf"
    write_gguf(path, TinySpec(context=64))
    return open_model(path)


@pytest.mark.parametrize("name", list(MODULES))
def test_a_fork_continues_like_its_own_prefill_and_stays_apart(tiny, name):
    require(MODULES[name])
    eng = get_engine(name)
    pipe = LocalPipeline([eng.load_shard(tiny, 0, 2), eng.load_shard(tiny, 2, 4)])
    n = len(PROMPT)
    pipe.forward("a", PROMPT, 0)
    assert pipe.fork("a", "b", n - 1) == n - 1
    assert all(s.cached_length("a") == n and s.cached_length("b") == n - 1 for s in pipe.shards)
    # b recomputes the last prompt token over the copied positions: the logits a prefill gives
    pipe.forward("alone", PROMPT, 0)
    want = pipe.forward("alone", np.array([21]), n)
    got_b = pipe.forward("b", PROMPT[-1:], n - 1)
    np.testing.assert_allclose(got_b, pipe.forward("alone2", PROMPT, 0), atol=ATOL[name])
    # a and b write different tokens at position n: each continues as if alone
    b_next = pipe.forward("b", np.array([33]), n)
    a_next = pipe.forward("a", np.array([21]), n)
    np.testing.assert_array_equal(a_next, want)  # a's own positions are untouched by the fork
    pipe.forward("alone3", PROMPT, 0)
    np.testing.assert_allclose(b_next, pipe.forward("alone3", np.array([33]), n), atol=ATOL[name])
    for rid in ("a", "b", "alone", "alone2", "alone3"):
        pipe.free(rid)
    assert all(not s.caches for s in pipe.shards)


def test_forking_an_unknown_request_starts_from_nothing(tiny):
    pipe = LocalPipeline([get_engine("numpy").load_shard(tiny, 0, 4)])
    assert pipe.fork("nobody", "b", 5) == 0
    pipe.forward("short", PROMPT[:3], 0)
    assert pipe.fork("short", "b", 5) == 0  # holds 3 of the 5 positions asked for: not a usable copy
    assert "b" not in pipe.shards[0].caches
