"""Quantized products and engines on weights as stored: the torch engine (int4 kernels, bfloat16
activations) and MLX (quantized_matmul) against numpy on the dequantized weights.

Stated tolerances. A product y = x @ W.T is compared with the usual rounding bound of a dot product:
|y - y_ref| <= tol * (|x| @ |W|.T) per element, tol = 1e-2 on torch (its kernels take bfloat16 activations
and scales: an 8-bit mantissa, 0.4% per rounding) and 1e-5 on MLX (float32; every block format maps
exactly). A whole tiny model's logits: max |error| <= 3e-2 x max |logit| on torch (measured ~1%), 1e-4
on MLX. Batched decode rows on torch equal the same rows run alone within 1e-2 of the logits' range.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo_actor.engines import get_engine, resolve_engine
from exo_actor.engines.base import Pass
from exo_actor.errors import ContextLengthError
from exo_actor.weights import open_model
from exo_actor.weights.quant import _BLOCKS, CONVERTED_TYPES, KEPT_TYPES, from_gguf_blocks, quantize
from tests.conftest import require
from tests.tiny import TinySpec, write_gguf
from tests.weights.test_quant import random_blocks

TORCH_TOL, MLX_TOL = 1e-2, 1e-5
TORCH_MODEL_RTOL = 3e-2


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def bound_err(got: np.ndarray, want: np.ndarray, x: np.ndarray, w: np.ndarray) -> float:
    """Largest error as a fraction of the dot products' magnitude bound |x| @ |W|.T."""
    return float((np.abs(got - want) / np.maximum(np.abs(x) @ np.abs(w).T, 1e-30)).max())


@pytest.mark.parametrize("kind", KEPT_TYPES + CONVERTED_TYPES)
@settings(max_examples=12, deadline=None)
@given(
    rows=st.integers(1, 70),
    blocks=st.integers(1, 3),
    batch=st.integers(1, 9),
    seed=st.integers(0, 2**31),
)
def test_every_format_multiplies_like_numpy_on_the_dequantized_weights(kind, rows, blocks, batch, seed):
    require("torch")
    require("mlx.core")
    import mlx.core as mx
    import torch

    from exo_actor.engines.mlx_engine import _Linear
    from exo_actor.engines.torch_linear import QLinear

    cols = blocks * _BLOCKS[kind][1]
    qt = from_gguf_blocks(kind, random_blocks(kind, rows, cols, seed % 1000), (rows, cols))
    x = np.random.default_rng(seed).standard_normal((batch, cols)).astype(np.float32)
    w = qt.dequantize()
    want = x @ w.T
    lin = QLinear(qt)
    got = lin(torch.from_numpy(x).bfloat16())
    assert got.shape == (batch, rows) and got.dtype == torch.bfloat16
    assert bound_err(got.float().numpy(), want, x, w) <= TORCH_TOL
    # the kernel path for every format it can take (groups of 16 run dense)
    assert lin.kind == ("bf16" if qt.group == 16 else f"int4x{1 if qt.bits == 4 else 2}")
    assert bound_err(np.array(_Linear(mx, qt)(mx.array(x))), want, x, w) <= MLX_TOL


def test_quantized_weights_take_their_stored_bytes_not_float32():
    require("torch")
    from exo_actor.engines.torch_linear import QLinear

    w = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    q4, q8 = QLinear(quantize(w, 4)), QLinear(quantize(w, 8))
    assert q4.nbytes == 256 * 512 // 2 + 256 * 16 * 2 * 2  # nibbles + bf16 scale and zero per group
    assert q8.nbytes == 2 * q4.nbytes  # two 4-bit planes
    assert q4.nbytes * 6 < w.nbytes


@pytest.fixture(scope="module", params=["Q8_0", "Q4_0"])
def tiny_q(request, tmp_path_factory):
    from gguf import GGMLQuantizationType as Q

    path = tmp_path_factory.mktemp("quantized") / f"tiny-{request.param}.gguf"
    write_gguf(path, TinySpec(context=64, tied=True, intermediate=96), qtype=Q[request.param])
    files = open_model(path)
    return files, get_engine("numpy").load_shard(files, 0, 4)


@pytest.mark.parametrize("name", ["torch", "mlx"])
def test_tiny_quantized_model_matches_numpy_over_two_shards(tiny_q, name):
    require({"torch": "torch", "mlx": "mlx.core"}[name])
    files, ref = tiny_q
    eng = get_engine(name)
    first, last = eng.load_shard(files, 0, 1), eng.load_shard(files, 1, 4)
    assert first.weight_bytes < ref.weight_bytes / 2  # the blocks stay quantized on the engine
    tol = TORCH_MODEL_RTOL if name == "torch" else 1e-4
    prompt = np.array([5, 9, 13, 2, 7])
    want = ref.forward("r", prompt, 0, 5)
    assert rel_err(last.forward("r", first.forward("r", prompt, 0), 0, 5), want) <= tol
    for pos, tok in enumerate([3, 8, 1], start=5):
        want = ref.forward("r", np.array([tok]), pos)
        assert rel_err(last.forward("r", first.forward("r", np.array([tok]), pos), pos), want) <= tol


def test_torch_batched_rows_equal_lone_rows_and_caches_roll_back(tiny_q):
    require("torch")
    files, _ = tiny_q
    runner = get_engine("torch").load_shard(files, 0, 4)
    lone = get_engine("torch").load_shard(files, 0, 4)
    prompts = {"a": [3, 4, 5], "b": [9, 1], "c": [7, 7, 7, 7]}
    for rid, p in prompts.items():
        runner.forward(rid, np.array(p), 0), lone.forward(rid, np.array(p), 0)
    passes = [Pass(rid, np.array([11 + i]), len(p)) for i, (rid, p) in enumerate(prompts.items())]
    passes.append(Pass("a", np.array([2, 6]), 3, num_logits=2))  # a longer pass in the same batch runs alone
    out = runner.forward_batch(passes[:3])
    for p, got in zip(passes, out):
        want = lone.forward(p.request_id, p.tokens, p.start_pos)
        assert isinstance(got, np.ndarray) and rel_err(got, want) <= 1e-2
    # rollback: writing below the cached length overwrites, as on every engine
    again = runner.forward("a", np.array([11]), 3)
    assert runner.cached_length("a") == 4
    assert rel_err(again, out[0]) <= 1e-6
    with pytest.raises(ContextLengthError, match="context window"):
        runner.forward("a", np.arange(70) % 50, 0)
    with pytest.raises(ValueError, match="skips past"):
        runner.forward("b", np.array([1]), 10)


def test_quantize_flag_on_a_float_model(tmp_path):
    """--quantize q4 on float weights: the torch engine and the numpy reference compute on the same
    4-bit values (numpy dequantizes them), and the weights shrink ~6x."""
    require("torch")
    path = tmp_path / "f32.gguf"
    write_gguf(path, TinySpec(context=64, tied=False))
    files = open_model(path)
    ref = get_engine("numpy", quantize="q4").load_shard(files, 0, 4)
    fp32 = get_engine("numpy").load_shard(files, 0, 4)
    runner = get_engine("torch", quantize="q4").load_shard(files, 0, 4)
    prompt = np.array([5, 9, 13, 2, 7])
    want = ref.forward("r", prompt, 0, 5)
    assert rel_err(runner.forward("r", prompt, 0, 5), want) <= TORCH_MODEL_RTOL
    assert rel_err(fp32.forward("r", prompt, 0, 5), want) > 1e-3  # q4 really changed the weights
    assert runner.weight_bytes * 4 < fp32.weight_bytes


def test_auto_picks_the_torch_engine_when_installed_and_numpy_without(monkeypatch):
    require("torch")
    import exo_actor.engines as engines

    assert resolve_engine("auto") == "torch"
    real = importlib.util.find_spec
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda m: None if m == "torch" else real(m))
    assert resolve_engine("auto") == "numpy"


def test_device_flags_are_checked():
    from exo_actor.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="needs the torch engine"):
        get_engine("numpy", device="cuda")
    with pytest.raises(InvalidRequestError, match="unknown device 'tpu'"):
        get_engine("torch", device="tpu")


def test_torchscript_and_eager_modules_compute_the_same(tiny_q, monkeypatch):
    """The torch engine's shard runs under TorchScript; where that is unavailable the same module runs
    eagerly (torch_model.script falls back): both give the same numbers."""
    require("torch")
    from exo_actor.engines import torch_model

    files, _ = tiny_q
    scripted = get_engine("torch").load_shard(files, 0, 4)
    assert scripted.model.__class__.__name__ == "RecursiveScriptModule"
    monkeypatch.setattr(torch_model.torch.jit, "script", lambda m: (_ for _ in ()).throw(RuntimeError("no jit")))
    eager = get_engine("torch").load_shard(files, 0, 4)
    assert isinstance(eager.model, torch_model.Shard)
    prompt = np.array([5, 9, 13, 2, 7])
    np.testing.assert_allclose(eager.forward("r", prompt, 0, 5), scripted.forward("r", prompt, 0, 5), rtol=0, atol=1e-5)
    out = [r.forward_batch([Pass("r", np.array([3]), 5)])[0] for r in (eager, scripted)]
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=1e-5)


def test_packed_weights_are_cached_on_disk_and_reused(tiny_q, tmp_path, monkeypatch, caplog):
    require("torch")
    from exo_actor.engines import torch_linear

    files, _ = tiny_q
    monkeypatch.setenv("EXO_ACTOR_CACHE", str(tmp_path / "cache"))
    first = get_engine("torch").load_shard(files, 1, 4)
    cached = list((tmp_path / "cache").glob("*.pt"))
    assert len(cached) == 1
    prompt = np.random.default_rng(0).standard_normal((3, files.args.hidden_size)).astype(np.float32)
    want = first.forward("r", prompt, 0, 3)

    def no_packing(*args, **kwargs):
        raise AssertionError("packed again although the cache holds this shard")

    with monkeypatch.context() as m:
        m.setattr(torch_linear.QLinear, "__init__", no_packing)
        again = get_engine("torch").load_shard(files, 1, 4)
    np.testing.assert_array_equal(again.forward("r", prompt, 0, 3), want)
    assert again.weight_bytes == first.weight_bytes
    get_engine("torch").load_shard(files, 0, 2)  # another layer range: its own entry
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2

    cached[0].write_bytes(b"not a torch file")  # damaged: packed again, with a warning
    np.testing.assert_array_equal(get_engine("torch").load_shard(files, 1, 4).forward("r", prompt, 0, 3), want)
    assert "unreadable" in caplog.text
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("EXO_ACTOR_CACHE", str(blocker / "sub"))  # cannot be created: a warning, no failure
    np.testing.assert_array_equal(get_engine("torch").load_shard(files, 1, 4).forward("r", prompt, 0, 3), want)
    assert "cannot cache packed weights" in caplog.text


@pytest.mark.parametrize("source", ["hf-bf16", "qwen2-gguf-q8", "mixed-blocks"])
def test_torch_engine_on_other_layouts_matches_numpy(tmp_path, source):
    """A bf16 Hugging Face folder (float weights: dense bf16 on torch, and --quantize q8), a Qwen2 GGUF
    (q/k/v biases, interleaved with the q/k rows), and a layer whose v projection is stored in another
    block type than q and k (unfused products, concatenated)."""
    require("torch")
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize as gguf_quantize

    from tests.tiny import write_hf_folder

    if source == "hf-bf16":
        path = tmp_path / "hf"
        write_hf_folder(path, TinySpec(tied=False), dtype="BF16")
    elif source == "qwen2-gguf-q8":
        path = tmp_path / "qwen2.gguf"
        write_gguf(path, TinySpec(architecture="qwen2", tied=False), qtype=Q.Q8_0)
    else:
        path = tmp_path / "mixed.gguf"
        spec = TinySpec(tied=False)
        v = np.random.default_rng(7).standard_normal((spec.kv_heads * spec.head_dim, spec.hidden_size))
        raw = gguf_quantize(v.astype(np.float32), Q.Q8_0)
        write_gguf(path, spec, qtype=Q.Q4_0, raw_override={"blk.1.attn_v.weight": (raw, Q.Q8_0)})
    files = open_model(path)
    prompt = np.array([5, 9, 13, 2, 7])
    runner = get_engine("torch").load_shard(files, 0, 4)
    want = get_engine("numpy").load_shard(files, 0, 4).forward("r", prompt, 0, 5)
    assert rel_err(runner.forward("r", prompt, 0, 5), want) <= TORCH_MODEL_RTOL
    if source == "mixed-blocks":
        assert len(runner._layers[1].qkv) == 3 and len(runner._layers[0].qkv) == 1  # v on its own in layer 1
    if source == "hf-bf16":
        ref = get_engine("numpy", quantize="q8").load_shard(files, 0, 4).forward("r", prompt, 0, 5)
        q8 = get_engine("torch", quantize="q8").load_shard(files, 0, 4)
        assert rel_err(q8.forward("r", prompt, 0, 5), ref) <= TORCH_MODEL_RTOL
        assert q8.weight_bytes < runner.weight_bytes  # 8-bit groups hold less than bf16
