"""Quantized weights as stored: each GGUF block format decodes to the affine group form exactly as the
gguf package (llama.cpp's reference layouts) dequantizes it, and the form's operations keep values.

Tolerance: the group form computes `scale * q + offset` where ggml computes e.g. `d * (q - 8)`; both in
float32, so values agree to float32 rounding: |a - b| <= 1e-6 * max |value| of the tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize
from hypothesis import given, settings
from hypothesis import strategies as st

from exo_actor.errors import UnsupportedModelError, WeightsError
from exo_actor.weights.quant import (
    _BLOCKS,
    CONVERTED_TYPES,
    KEPT_TYPES,
    QuantizedTensor,
    concat_rows,
    from_gguf_blocks,
    quantize,
)

# where each block keeps its fp16 fields (random bytes there could be NaN / inf)
_FP16_AT = {
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}


def random_blocks(kind: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Valid random blocks: random bytes, with finite fp16 scales."""
    nbytes, per = _BLOCKS[kind]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows * cols // per, nbytes), dtype=np.uint8)
    for at in _FP16_AT[kind]:
        d = rng.uniform(-0.5, 0.5, size=blocks.shape[0]).astype(np.float16)
        blocks[:, at : at + 2] = d.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def assert_same_values(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("kind", KEPT_TYPES + CONVERTED_TYPES)
@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 5), blocks_per_row=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_blocks_decode_to_llama_cpps_values(kind, rows, blocks_per_row, seed):
    cols = blocks_per_row * _BLOCKS[kind][1]
    raw = random_blocks(kind, rows, cols, seed)
    qt = from_gguf_blocks(kind, raw, (rows, cols))
    want = dequantize(raw, Q[kind]).reshape(rows, cols)
    assert_same_values(qt.dequantize(), want)
    assert qt.bits == (4 if kind in ("Q4_0", "Q4_1", "Q4_K") else 8)
    assert qt.source == kind
    rows_idx = np.array([rows - 1, 0])
    assert_same_values(qt.rows_float(rows_idx), want[rows_idx])  # an embedding lookup


def test_stored_bytes_are_the_files_bytes_for_4_bit_affine_blocks():
    raw = random_blocks("Q4_1", 8, 64, seed=1)
    qt = from_gguf_blocks("Q4_1", raw, (8, 64))
    assert qt.stored_bytes == raw.nbytes  # 16 bytes of nibbles + fp16 scale and min per 32 values


def test_malformed_blocks_are_one_clear_error():
    with pytest.raises(WeightsError, match="whole number of 32-value blocks"):
        from_gguf_blocks("Q8_0", np.zeros((2, 34), np.uint8), (2, 40))
    with pytest.raises(WeightsError, match="blocks for a"):
        from_gguf_blocks("Q8_0", np.zeros((3, 34), np.uint8), (2, 32))
    with pytest.raises(UnsupportedModelError, match="IQ4_XS"):
        from_gguf_blocks("IQ4_XS", np.zeros((1, 136), np.uint8), (1, 256))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), groups=st.integers(1, 4), bits=st.sampled_from([4, 8]), seed=st.integers(0, 1000))
def test_quantize_rounds_each_value_to_its_group_grid(rows, groups, bits, seed):
    w = np.random.default_rng(seed).standard_normal((rows, 32 * groups)).astype(np.float32)
    qt = quantize(w, bits)
    err = np.abs(qt.dequantize() - w).reshape(rows, groups, 32)
    assert (err <= qt.scale[..., None] * 0.5 + 1e-6).all()  # round to nearest: half a step at most
    if bits == 4:
        assert qt.q.max() <= 15 and qt.offset is not None
    else:
        assert np.abs(qt.q.astype(int)).max() <= 127 and qt.offset is None


def test_row_operations_keep_values():
    rng = np.random.default_rng(3)
    a, b = quantize(rng.standard_normal((4, 64)), 4), quantize(rng.standard_normal((2, 64)), 4)
    fused = concat_rows([a, b])
    np.testing.assert_array_equal(fused.dequantize(), np.concatenate([a.dequantize(), b.dequantize()]))
    idx = np.array([3, 1, 0, 2])
    np.testing.assert_array_equal(a.take_rows(idx).dequantize(), a.dequantize()[idx])
    np.testing.assert_array_equal(a.scaled(0.125).dequantize(), a.dequantize() * np.float32(0.125))
    sym, affine = quantize(rng.standard_normal((2, 64)), 8), quantize(rng.standard_normal((2, 64)), 4)
    with pytest.raises(ValueError, match="same bits"):
        concat_rows([sym, affine])
    s8 = concat_rows([sym, QuantizedTensor(8, 32, sym.q, sym.scale, np.ones_like(sym.scale), "x")])
    np.testing.assert_array_equal(s8.dequantize()[:2], sym.dequantize())  # a symmetric part gets offset 0
