"""GGUF loading: metadata, q/k un-permutation, every quantization type, bad files, shard-only reads."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from exo_actor.engines.numpy_engine import NumpyEngine
from exo_actor.errors import UnsupportedModelError, WeightsError
from exo_actor.runtime.generation import LocalPipeline
from exo_actor.weights import open_model
from exo_actor.weights.gguf_source import GGUFSource
from tests.models.test_llama import VARIANTS
from tests.tiny import TinySpec, write_gguf, write_hf_folder


def _logits(path, ids):
    files = open_model(path)
    n = files.args.num_hidden_layers
    pipe = LocalPipeline([NumpyEngine().load_shard(files, 0, n)])
    return pipe.forward("r", np.array(ids), 0, num_logits=len(ids))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_gguf_and_hf_folder_give_the_same_logits(tmp_path, name):
    spec = VARIANTS[name]
    write_hf_folder(tmp_path / "hf", spec)
    write_gguf(tmp_path / "m.gguf", spec)
    ids = list(range(3, 40))
    np.testing.assert_allclose(_logits(tmp_path / "m.gguf", ids), _logits(tmp_path / "hf", ids), atol=1e-5)


@pytest.mark.parametrize("qtype", [Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.BF16])
def test_quantized_tensors_decode_to_what_was_written(tmp_path, qtype):
    spec = TinySpec(hidden_size=64, intermediate=128)
    expected = write_gguf(tmp_path / "q.gguf", spec, qtype=qtype)
    src = GGUFSource(tmp_path / "q.gguf")
    for name, want in expected.items():
        np.testing.assert_allclose(src.get(name), want, atol=1e-6, err_msg=name)


# Independent scalar decoders for the K-quant formats, from the block layouts in ggml-quants.c.
def _f16(b: bytes) -> float:
    return float(np.frombuffer(b, dtype=np.float16)[0])


def _ref_q4_k(block: bytes) -> list[float]:
    d, dmin, scales, qs = _f16(block[0:2]), _f16(block[2:4]), block[4:16], block[16:144]

    def scale_min(j: int) -> tuple[int, int]:
        if j < 4:
            return scales[j] & 63, scales[j + 4] & 63
        return (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4)

    out = []
    for g in range(4):  # 4 groups of 64 values: low nibbles then high nibbles of 32 bytes
        (s1, m1), (s2, m2) = scale_min(2 * g), scale_min(2 * g + 1)
        q = qs[32 * g : 32 * g + 32]
        out += [d * s1 * (b & 0xF) - dmin * m1 for b in q]
        out += [d * s2 * (b >> 4) - dmin * m2 for b in q]
    return out


def _ref_q6_k(block: bytes) -> list[float]:
    ql, qh, sc, d = block[0:128], block[128:192], np.frombuffer(block[192:208], np.int8), _f16(block[208:210])
    y = [0.0] * 256
    for half in range(2):
        L, H, S, base = ql[64 * half :], qh[32 * half :], sc[8 * half :], 128 * half
        for i in range(32):
            s = i // 16
            q1 = ((L[i] & 0xF) | (((H[i] >> 0) & 3) << 4)) - 32
            q2 = ((L[i + 32] & 0xF) | (((H[i] >> 2) & 3) << 4)) - 32
            q3 = ((L[i] >> 4) | (((H[i] >> 4) & 3) << 4)) - 32
            q4 = ((L[i + 32] >> 4) | (((H[i] >> 6) & 3) << 4)) - 32
            y[base + i] = d * S[s] * q1
            y[base + i + 32] = d * S[s + 2] * q2
            y[base + i + 64] = d * S[s + 4] * q3
            y[base + i + 96] = d * S[s + 6] * q4
    return y


@pytest.mark.parametrize(
    ("qtype", "block_bytes", "ref", "d_offsets"),
    [
        (Q.Q4_K, 144, _ref_q4_k, (0, 2)),
        (Q.Q6_K, 210, _ref_q6_k, (208,)),
    ],
)
def test_k_quants_match_an_independent_decoder(tmp_path, qtype, block_bytes, ref, d_offsets):
    spec = TinySpec(hidden_size=256, heads=4, kv_heads=2, intermediate=256, layers=1)
    rng = np.random.default_rng(3)
    rows = spec.intermediate  # gate_proj is [F, D] = 256 rows of one 256-value block
    raw = rng.integers(0, 256, size=(rows, block_bytes), dtype=np.uint8)
    for off in d_offsets:  # keep the f16 scales finite and modest
        raw[:, off : off + 2] = np.frombuffer(
            rng.uniform(0.001, 0.05, rows).astype(np.float16).tobytes(), np.uint8
        ).reshape(rows, 2)
    write_gguf(tmp_path / "k.gguf", spec, raw_override={"blk.0.ffn_gate.weight": (raw, qtype)})
    got = GGUFSource(tmp_path / "k.gguf").get("model.layers.0.mlp.gate_proj.weight")
    want = np.array([ref(bytes(raw[r])) for r in range(rows)], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unsupported_quantization_is_a_clear_error(tmp_path):
    spec = TinySpec()
    block, size = GGML_QUANT_SIZES[Q.Q8_1]
    raw = np.zeros((spec.intermediate, spec.hidden_size // block * size), dtype=np.uint8)
    write_gguf(tmp_path / "u.gguf", spec, raw_override={"blk.1.ffn_up.weight": (raw, Q.Q8_1)})
    files = open_model(tmp_path / "u.gguf")
    with pytest.raises(UnsupportedModelError, match="Q8_1"):
        NumpyEngine().load_shard(files, 0, 4)
    NumpyEngine().load_shard(files, 2, 4)  # a shard without that layer does not care


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.9])
def test_truncated_gguf_is_a_weights_error(tmp_path, keep):
    write_gguf(tmp_path / "m.gguf", TinySpec())
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "t.gguf").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError):
        files = open_model(tmp_path / "t.gguf")
        NumpyEngine().load_shard(files, 0, 4)


def test_garbage_gguf_is_a_weights_error(tmp_path):
    (tmp_path / "g.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 10)
    with pytest.raises(WeightsError):
        open_model(tmp_path / "g.gguf")


def test_a_shard_reads_only_its_own_tensors(tmp_path):
    write_gguf(tmp_path / "m.gguf", TinySpec(layers=6, tied=False))
    files = open_model(tmp_path / "m.gguf")
    src = files.open_source()
    read: list[str] = []
    original = src.get
    src.get = lambda name: (read.append(name), original(name))[1]  # type: ignore[method-assign]
    sizes = {}
    for a, b in [(2, 3), (2, 5)]:
        read.clear()
        sizes[b - a] = NumpyEngine().load_shard(files, a, b).weight_bytes
        layers = {int(n.split(".")[2]) for n in read if n.startswith("model.layers.")}
        assert layers == set(range(a, b))
        assert not any(n.startswith(("model.embed", "lm_head", "model.norm")) for n in read)
    assert sizes[3] == 3 * sizes[1]  # memory grows with the layer count
    first = NumpyEngine().load_shard(files, 0, 1)
    last = NumpyEngine().load_shard(files, 5, 6)
    assert first.shard.w.embed is not None and first.shard.w.lm_head_t is None
    assert last.shard.w.lm_head_t is not None and last.shard.w.embed is None


def test_a_model_of_random_q4_1_blocks_loads_and_runs(tmp_path):
    """tests/tiny.py's random_blocks writer (the memory benchmark's real-sized models): every matrix is Q4_1
    blocks decoding into [-0.075, 0.075] (only the float32 vectors are returned), and the model runs to finite
    logits."""
    import gguf

    spec = TinySpec(hidden_size=128, layers=2, heads=4, kv_heads=2, intermediate=256)
    returned = write_gguf(tmp_path / "r.gguf", spec, qtype=Q.Q4_1, random_blocks=True)
    assert returned and all(v.ndim == 1 for v in returned.values())
    tensors = {t.name: t for t in gguf.GGUFReader(tmp_path / "r.gguf").tensors}
    q = tensors["blk.0.attn_q.weight"]
    assert q.tensor_type == Q.Q4_1
    values = gguf.quants.dequantize(q.data, Q.Q4_1)
    assert values.shape == (128, 128) and 0.07 < float(np.abs(values).max()) <= 0.0751
    logits = _logits(tmp_path / "r.gguf", list(range(3, 20)))
    assert logits.shape[0] == 17 and np.isfinite(logits).all()
