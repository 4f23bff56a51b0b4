"""Quantized weights as stored: GGUF block formats decoded to one engine-neutral form, never to float32.

Every GGUF block format the loaders keep is an *affine group* format: a weight matrix [rows, cols] is cut
into groups of `group` consecutive columns, and each value is `scale * q + offset` with a small integer q
and one scale (and offset) per group. So one form covers them all:

| GGUF type | bits | group | q | scale | offset |
|---|---|---|---|---|---|
| Q4_0 | 4 | 32 | 0..15 | d | -8 d |
| Q4_1 | 4 | 32 | 0..15 | d | m |
| Q4_K | 4 | 32 | 0..15 | d * sc_j | -dmin * m_j |
| Q8_0 | 8 | 32 | -128..127 | d | none |
| Q5_0 / Q5_1 | 8 | 32 | -16..15 / 0..31 | d | none / m |
| Q5_K | 8 | 32 | 0..31 | d * sc_j | -dmin * m_j |
| Q6_K | 8 | 16 | -32..31 | d * sc_j | none |
| Q2_K / Q3_K | 8 | 16 | small ints | d * sc_j | -dmin * m_j / none |

(Block layouts: ggml's `ggml-common.h`; the K-quant 6-bit scale packing is read with the `gguf`
package's own helper.) Scales and offsets are float32: the products of an fp16 super-scale and a 6-bit
sub-scale are exact in float32, so `dequantize` reproduces llama.cpp's values to float32 rounding.
Engines turn this form into their kernels' layouts (torch int4 packs, MLX quantized arrays); the numpy
reference dequantizes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedModelError, WeightsError

log = logging.getLogger(__name__)

F32 = np.float32
QK_K = 256  # values per K-quant super-block


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A weight [rows, cols] ([out, in]) as groups along the columns: value = scale * q + offset.

    q: [rows, cols] uint8 (bits=4, values 0..15) or int8 (bits=8); scale, offset: float32
    [rows, cols // group] (offset None when the format is symmetric). `source` names the stored format
    (e.g. "Q4_1") for logs and status.
    """

    bits: int
    group: int
    q: np.ndarray
    scale: np.ndarray
    offset: np.ndarray | None
    source: str

    def __post_init__(self) -> None:
        rows, cols = self.q.shape
        if self.bits not in (4, 8) or cols % self.group:
            raise WeightsError(f"bad quantized tensor: {self.bits} bits, {cols} columns in groups of {self.group}")
        groups = (rows, cols // self.group)
        if self.scale.shape != groups or (self.offset is not None and self.offset.shape != groups):
            raise WeightsError(f"bad quantized tensor: scales {self.scale.shape} for {groups} groups")

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        """Bytes held in memory by this form (values one per byte, float32 scales and offsets)."""
        return self.q.nbytes + self.scale.nbytes + (0 if self.offset is None else self.offset.nbytes)

    @property
    def stored_bytes(self) -> int:
        """Bytes this tensor takes in its packed form (4-bit values two per byte) with its scales."""
        values = self.q.size * self.bits // 8
        scales = self.scale.size * 2 * (1 if self.offset is None else 2)  # fp16 as GGUF stores them
        return values + scales

    def dequantize(self) -> np.ndarray:
        """float32 [rows, cols]."""
        return self.rows_float(slice(None))

    def rows_float(self, rows: slice | np.ndarray) -> np.ndarray:
        """float32 values of some rows (an embedding lookup reads just those)."""
        q = self.q[rows]
        n = q.shape[0]
        g = q.reshape(n, -1, self.group).astype(F32)
        g *= self.scale[rows][:, :, None]
        if self.offset is not None:
            g += self.offset[rows][:, :, None]
        return g.reshape(n, -1)

    def take_rows(self, index: np.ndarray | slice) -> QuantizedTensor:
        """The same tensor with its rows reordered or selected (llama.cpp's q/k row permutation)."""
        off = None if self.offset is None else np.ascontiguousarray(self.offset[index])
        return QuantizedTensor(
            self.bits,
            self.group,
            np.ascontiguousarray(self.q[index]),
            np.ascontiguousarray(self.scale[index]),
            off,
            self.source,
        )

    def scaled(self, factor: float) -> QuantizedTensor:
        """The same values times `factor` (exact when factor is a power of two)."""
        f = np.float32(factor)
        off = None if self.offset is None else self.offset * f
        return QuantizedTensor(self.bits, self.group, self.q, self.scale * f, off, self.source)

    def with_offset(self) -> QuantizedTensor:
        """An explicit zero offset for a symmetric tensor (so it can be fused with affine ones)."""
        if self.offset is not None:
            return self
        return QuantizedTensor(self.bits, self.group, self.q, self.scale, np.zeros_like(self.scale), self.source)


def concat_rows(parts: list[QuantizedTensor]) -> QuantizedTensor:
    """Stack tensors of one format along the rows (q, k, v -> one fused projection)."""
    first = parts[0]
    if any(p.bits != first.bits or p.group != first.group or p.shape[1] != first.shape[1] for p in parts):
        raise ValueError("only tensors of the same bits, group size and width can be fused")
    affine = any(p.offset is not None for p in parts)
    parts = [p.with_offset() if affine else p for p in parts]
    offset = np.concatenate([p.offset for p in parts]) if affine else None  # type: ignore[misc]
    sources = sorted({p.source for p in parts})
    return QuantizedTensor(
        first.bits,
        first.group,
        np.concatenate([p.q for p in parts]),
        np.concatenate([p.scale for p in parts]),
        offset,
        "+".join(sources),
    )


def same_format(parts: list[QuantizedTensor]) -> bool:
    return all(p.bits == parts[0].bits and p.group == parts[0].group for p in parts)


# ---------------------------------------------------------------------------------------------------
# GGUF blocks -> QuantizedTensor

# bytes per block and values per block of each type decoded here
_BLOCKS = {
    "Q4_0": (18, 32),
    "Q4_1": (20, 32),
    "Q5_0": (22, 32),
    "Q5_1": (24, 32),
    "Q8_0": (34, 32),
    "Q2_K": (84, QK_K),
    "Q3_K": (110, QK_K),
    "Q4_K": (144, QK_K),
    "Q5_K": (176, QK_K),
    "Q6_K": (210, QK_K),
}
# stored as they are (the formats the issue and the docs promise); the others convert exactly to an
# 8-bit group form, which this module logs once per type.
KEPT_TYPES = ("Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
CONVERTED_TYPES = ("Q5_0", "Q5_1", "Q2_K", "Q3_K")
FLOAT_TYPES = ("F32", "F16", "BF16")
_logged: set[str] = set()


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(F32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., n] bytes -> [..., 2n] values: the low nibbles first, then the high ones (ggml's order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from gguf.quants import Q4_K

    sc, m = Q4_K.get_scale_min(np.ascontiguousarray(scales))
    return sc.astype(F32), m.astype(F32)


def _decode(kind: str, b: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray | None]:
    """Blocks [n, bytes] -> (bits, group, q [n, values], scale [n, groups], offset or None)."""
    n = b.shape[0]
    q: np.ndarray
    high: np.ndarray
    if kind == "Q8_0":
        return 8, 32, b[:, 2:].view(np.int8), _f16(b[:, :2]), None
    if kind in ("Q4_0", "Q4_1"):
        d = _f16(b[:, :2])
        if kind == "Q4_0":
            return 4, 32, _nibbles(b[:, 2:]), d, -8 * d
        return 4, 32, _nibbles(b[:, 4:]), d, _f16(b[:, 2:4])
    if kind in ("Q5_0", "Q5_1"):
        d = _f16(b[:, :2])
        at = 2 if kind == "Q5_0" else 4
        qh = np.ascontiguousarray(b[:, at : at + 4]).view("<u4")  # bit j: 5th bit of value j
        high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        q = (_nibbles(b[:, at + 4 :]) | (high << 4)).astype(np.int16)
        if kind == "Q5_0":
            return 8, 32, (q - 16).astype(np.int8), d, None
        return 8, 32, q.astype(np.int8), d, _f16(b[:, 2:4])
    if kind in ("Q4_K", "Q5_K"):
        d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
        sc, m = _k_scales(b[:, 4:16])  # [n, 8] sub-block scales and mins (6 bits each)
        scale, offset = d * sc, -(dmin * m)
        if kind == "Q4_K":  # 4 chunks of 32 bytes: low nibbles are sub-block 2j, high ones 2j + 1
            q = _nibbles(b[:, 16:].reshape(n, 4, 32)).reshape(n, QK_K)
            return 4, 32, q, scale, offset
        qh, ql = b[:, 16:48], b[:, 48:].reshape(n, 4, 32)
        low = _nibbles(ql).reshape(n, 8, 32)
        high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # bit j of qh -> sub-block j
        q = (low | (high << 4)).reshape(n, QK_K).astype(np.int8)
        return 8, 32, q, scale, offset
    if kind == "Q6_K":
        ql, qh = b[:, :128].reshape(n, 2, 64), b[:, 128:192].reshape(n, 2, 32)
        sc = b[:, 192:208].view(np.int8).astype(F32)  # [n, 16] sub-blocks of 16
        d = _f16(b[:, 208:210])
        low = _nibbles(ql)  # [n, 2, 128]: per half, 4 runs of 32 values
        shifts = np.array([0, 2, 4, 6], dtype=np.uint8)
        high = ((qh[:, :, None, :] >> shifts[None, None, :, None]) & 3).reshape(n, 2, 128)
        q = ((low | (high << 4)).astype(np.int16) - 32).astype(np.int8).reshape(n, QK_K)
        return 8, 16, q, d * sc, None
    if kind == "Q2_K":
        scales, qs = b[:, :16], b[:, 16:80].reshape(n, 2, 32)
        d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
        shifts = np.array([0, 2, 4, 6], dtype=np.uint8)
        q = ((qs[:, :, None, :] >> shifts[None, None, :, None]) & 3).reshape(n, QK_K).astype(np.int8)
        return 8, 16, q, d * (scales & 0x0F).astype(F32), -(dmin * (scales >> 4).astype(F32))
    if kind == "Q3_K":
        hmask, qs, raw = b[:, :32], b[:, 32:96].reshape(n, 2, 32), b[:, 96:108]
        d = _f16(b[:, 108:110])
        shifts = np.array([0, 2, 4, 6], dtype=np.uint8)
        low = ((qs[:, :, None, :] >> shifts[None, None, :, None]) & 3).reshape(n, 8, 32)
        hbit = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # [n, 8, 32]
        q = (low.astype(np.int16) - np.where(hbit == 1, 0, 4)).reshape(n, QK_K).astype(np.int8)
        sc = _q3k_scales(raw)
        return 8, 16, q, d * (sc - 32).astype(F32), None
    raise UnsupportedModelError(f"quantization {kind} is not decoded by this loader")


def _q3k_scales(raw: np.ndarray) -> np.ndarray:
    """Q3_K's 16 6-bit scales from their 12 packed bytes ([n, 12] -> [n, 16], 0..63)."""
    r = raw.astype(np.uint32)
    lo = np.concatenate([r[:, 0:8] & 0x0F, r[:, 0:8] >> 4], axis=1)  # [n, 16]
    hi = (r[:, 8:12, None] >> np.array([0, 2, 4, 6], dtype=np.uint32)) & 3  # [n, byte, shift]
    hi = hi.transpose(0, 2, 1).reshape(-1, 16)  # scale j takes bits 2*(j // 4) of byte 8 + j % 4
    return (lo | (hi << 4)).astype(np.int16)


def from_gguf_blocks(kind: str, data: np.ndarray, shape: tuple[int, int]) -> QuantizedTensor:
    """A GGUF tensor's raw blocks (uint8, rows of blocks) -> QuantizedTensor of `shape` [rows, cols]."""
    if kind not in _BLOCKS:
        raise UnsupportedModelError(f"quantization {kind} is not decoded by this loader")
    nbytes, per = _BLOCKS[kind]
    rows, cols = shape
    if cols % per:
        raise WeightsError(f"a {kind} tensor of width {cols} is not a whole number of {per}-value blocks")
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, nbytes)
    if blocks.shape[0] != rows * cols // per:
        raise WeightsError(f"{kind} tensor: {blocks.shape[0]} blocks for a {rows}x{cols} shape")
    bits, group, q, scale, offset = _decode(kind, blocks)
    if kind in CONVERTED_TYPES and kind not in _logged:
        _logged.add(kind)
        log.info("%s weights are held as exact %d-bit groups of %d (the nearest kept form)", kind, bits, group)
    return QuantizedTensor(
        bits,
        group,
        np.ascontiguousarray(q.reshape(rows, cols)),
        np.ascontiguousarray(scale.reshape(rows, cols // group), dtype=F32),
        None if offset is None else np.ascontiguousarray(offset.reshape(rows, cols // group), dtype=F32),
        kind,
    )


# ---------------------------------------------------------------------------------------------------
# float -> QuantizedTensor (`--quantize q4|q8` for 16-bit checkpoints, and GGUF types without a decoder)


def quantize(w: np.ndarray, bits: int, group: int = 32, source: str | None = None) -> QuantizedTensor:
    """Round-to-nearest group quantization of a float [rows, cols] weight.

    bits=4: affine (min/max per group, q = 0..15, as Q4_1); bits=8: symmetric (absmax / 127, as Q8_0).
    """
    w = np.asarray(w, dtype=F32)
    rows, cols = w.shape
    if cols % group:
        raise WeightsError(f"cannot quantize a width of {cols} in groups of {group}")
    g = w.reshape(rows, cols // group, group)
    if bits == 8:
        amax = np.abs(g).max(axis=-1)
        scale = amax / F32(127)
        inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)
        q = np.clip(np.rint(g * inv[..., None]), -127, 127).astype(np.int8)
        return QuantizedTensor(8, group, q.reshape(rows, cols), scale, None, source or "q8")
    if bits == 4:
        lo, hi = g.min(axis=-1), g.max(axis=-1)
        scale = (hi - lo) / F32(15)
        inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)
        q = np.clip(np.rint((g - lo[..., None]) * inv[..., None]), 0, 15).astype(np.uint8)
        return QuantizedTensor(4, group, q.reshape(rows, cols), scale, lo.astype(F32), source or "q4")
    raise ValueError(f"bits must be 4 or 8, not {bits}")


def convert_unkept(kind: str, values: np.ndarray) -> QuantizedTensor:
    """A GGUF type without a block decoder here (IQ*, TQ*, MXFP4, ...), dequantized by the gguf package:
    re-quantized to 8-bit groups of 32 (the nearest kept form), logged once per type."""
    if kind not in _logged:
        _logged.add(kind)
        log.warning("%s weights have no kept form here: converted to 8-bit groups of 32 (Q8_0-like) at load", kind)
    return quantize(values, 8, 32, source=f"{kind}->q8")
