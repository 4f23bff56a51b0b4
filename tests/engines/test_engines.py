"""One test suite every engine passes: shapes, KV cache and truncation, logits against numpy (tiny
random models and SmolLM2-135M), greedy tokens identical to numpy.

Tolerances: engines differ from numpy only in summation order (all compute in float32). On tiny
models the logits agree within 1e-4; on SmolLM2 within 2e-3 (measured max: MLX 8e-5, tinygrad 1e-4,
on logits up to ~40).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from exo_actor.engines import EngineUnavailableError, get_engine, resolve_engine
from exo_actor.engines.base import require_module
from exo_actor.errors import InvalidRequestError
from exo_actor.runtime.generation import LocalPipeline, generate
from exo_actor.sampling import SamplingParams
from exo_actor.tokenizer import chat_prompt_ids
from exo_actor.weights import open_model
from tests.conftest import require
from tests.tiny import TinySpec, write_gguf

ENGINES = ["numpy", "mlx", "tinygrad"]
TINY_ATOL, SMOLLM2_ATOL = 1e-4, 2e-3


def engine(name: str):
    """The engine, its package required (fails in CI when missing, see tests.conftest.require)."""
    require({"numpy": "numpy", "mlx": "mlx.core", "tinygrad": "tinygrad"}[name])
    return get_engine(name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("engines") / "tiny.gguf"
    write_gguf(path, TinySpec(context=64, tied=False))
    files = open_model(path)
    ref = [get_engine("numpy").load_shard(files, 0, 2), get_engine("numpy").load_shard(files, 2, 4)]
    return files, ref


@pytest.mark.parametrize("name", ENGINES)
def test_shapes_and_values_match_numpy(tiny, name):
    files, (ref0, ref1) = tiny
    eng = engine(name)
    first, last = eng.load_shard(files, 0, 2), eng.load_shard(files, 2, 4)
    assert (first.is_first, first.is_last, last.is_first, last.is_last) == (True, False, False, True)
    assert first.weight_bytes > 0
    prompt = np.array([5, 9, 13, 2, 7])
    h = first.forward("r", prompt, 0)
    assert h.shape == (5, files.args.hidden_size) and h.dtype == np.float32
    np.testing.assert_allclose(h, ref0.forward("r", prompt, 0), atol=TINY_ATOL)
    logits = last.forward("r", h, 0, num_logits=2)
    assert logits.shape == (2, files.args.vocab_size) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, ref1.forward("q", ref0.forward("q", prompt, 0), 0, 2), atol=TINY_ATOL)
    for pos, tok in enumerate([3, 8, 1], start=5):  # cached decode, one position at a time
        out = last.forward("r", first.forward("r", np.array([tok]), pos), pos)
        want = ref1.forward("q", ref0.forward("q", np.array([tok]), pos), pos)
        np.testing.assert_allclose(out, want, atol=TINY_ATOL)
    for r in (first, last, ref0, ref1):
        r.free("r"), r.free("q")


@pytest.mark.parametrize("name", ENGINES)
def test_cache_truncation_and_rollback(tiny, name):
    files, _ = tiny
    runner = engine(name).load_shard(files, 0, 4)
    seq = np.array([4, 8, 15, 16, 23, 42])
    runner.forward("a", seq, 0)
    assert runner.cached_length("a") == 6 and runner.cached_length("other") == 0
    runner.truncate("a", 3)
    assert runner.cached_length("a") == 3
    resumed = runner.forward("a", np.array([7, 7]), 3, 2)
    fresh = runner.forward("b", np.array([4, 8, 15, 7, 7]), 0, 2)
    np.testing.assert_allclose(resumed, fresh, atol=TINY_ATOL)
    rolled = runner.forward("a", np.array([9]), 2)  # writing below the cached length rolls back
    assert runner.cached_length("a") == 3
    np.testing.assert_allclose(rolled, runner.forward("c", np.array([4, 8, 9]), 0), atol=TINY_ATOL)
    with pytest.raises(ValueError, match="skips past"):
        runner.forward("a", np.array([1]), 10)
    runner.free("a")
    assert runner.cached_length("a") == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ENGINES)
def test_smollm2_logits_and_greedy_tokens_match_numpy(smollm2_local, name):
    files, ref = smollm2_local  # the numpy reference, loaded once per run
    pipe = LocalPipeline([engine(name).load_shard(files, 0, 30)])
    ids = chat_prompt_ids(files.tokenizer, [{"role": "user", "content": "Write a poem about the sea."}])
    np.testing.assert_allclose(
        pipe.forward("p", np.array(ids), 0, 4), ref.forward("p", np.array(ids), 0, 4), atol=SMOLLM2_ATOL
    )
    ref.free("p")  # the shared reference keeps no cache of this test's
    params = SamplingParams(max_tokens=16)
    want = [t for d in generate(ref, files.tokenizer, ids, params, 2048) for t in d.token_ids]
    got = [t for d in generate(pipe, files.tokenizer, ids, params, 2048) for t in d.token_ids]
    assert len(got) == 16 and got == want


def test_auto_picks_numpy_on_a_cpu_machine_without_torch(monkeypatch):
    import exo_actor.engines as engines

    real = importlib.util.find_spec
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda m: None if m == "torch" else real(m))
    assert resolve_engine("auto") == "numpy"
    assert resolve_engine("mlx") == "mlx"
    with pytest.raises(InvalidRequestError, match="unknown engine 'cuda'"):
        resolve_engine("cuda")


def test_a_missing_engine_package_names_the_extra():
    with pytest.raises(EngineUnavailableError, match=r"pip install 'exo-actor\[mlx\]'"):
        require_module("mlx_not_installed_here.core", "mlx")


def test_tinygrad_on_a_cpu_without_clang_says_so(monkeypatch):
    import exo_actor.engines as engines

    monkeypatch.setattr(engines, "_tinygrad_has_gpu", lambda: False)
    monkeypatch.setattr(engines.shutil, "which", lambda cmd: None)
    with pytest.raises(EngineUnavailableError, match="apt-get install clang"):
        engines.check_tinygrad_compiler()


@pytest.mark.parametrize("name", ENGINES)
def test_interleaved_requests_keep_their_own_caches(tiny, name):
    """Decode steps of two requests alternate (tinygrad replays one compiled step for both, with
    each request's cache as its input): each matches numpy run on its own."""
    files, _ = tiny
    runner, ref = engine(name).load_shard(files, 0, 4), get_engine("numpy").load_shard(files, 0, 4)
    for rid, prompt in (("x", [3, 4, 5]), ("y", [9, 1])):
        runner.forward(rid, np.array(prompt), 0), ref.forward(rid, np.array(prompt), 0)
    for step in range(6):
        for rid, base in (("x", 3), ("y", 2)):
            tok = np.array([(step * 5 + base) % 50 + 3])
            np.testing.assert_allclose(
                runner.forward(rid, tok, base + step), ref.forward(rid, tok, base + step), atol=TINY_ATOL
            )
