"""Quantized matrix products on torch's native CPU kernels, from exo-actor's QuantizedTensor form.

torch ships an int4 weight-only kernel for CPUs (`aten._weight_int4pack_mm_for_cpu`, AVX-512/AVX2,
threads over the output): 4-bit values packed by `aten._convert_weight_to_int4pack_for_cpu`, one scale
and one zero point per group of 32-256 inputs, computing `(q - 8) * scale + zero` with bfloat16
activations. Measured on the project's machine (docs/quantized.md) it reads SmolLM2's weights ~4x faster
than OpenBLAS reads them in float32, and its float32-activation path is ~30x slower than its bfloat16
one, so products here take bfloat16 inputs and give bfloat16 outputs.

How each stored form maps onto it, exactly up to bfloat16 scales:
- 4-bit affine groups (Q4_0, Q4_1, Q4_K): value = s*q + o = (q - 8)*s + (o + 8s): one packed matrix.
- 8-bit groups of 32 (Q8_0, Q5_K, Q5_0/1): q = 16*hi + lo with hi in -8..7 and lo in 0..15, so
  value = (hi + 8 - 8)*(16s) + (lo - 8)*s + (o + 8s): two packed 4-bit "planes" whose products add up.
  That reads ~1 byte per weight, like Q8_0 itself, on the fast kernel.
- anything else (groups of 16: Q6_K, Q2_K, Q3_K; float checkpoints): a dense bfloat16 matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..weights.base import Weight
from ..weights.quant import QuantizedTensor

KERNEL_GROUPS = (32, 64, 128, 256)


def _torch() -> Any:
    import torch

    return torch


@dataclass
class _Plane:
    packed: Any  # the kernel's packed int4 weights
    scales_zeros: Any  # [in / group, out, 2] bfloat16


class QLinear:
    """y = x @ W.T for one [out, in] weight, in the fastest form torch offers for how it is stored."""

    def __init__(self, w: Weight, device: str = "cpu") -> None:
        torch = _torch()
        self.out_features, self.in_features = w.shape
        self.device = device
        self.planes: list[_Plane] = []
        self.group = 0
        self.dense: Any = None
        self.kind = "bf16"
        self.padded = self.out_features
        self._module: Any = None
        on_cpu = device == "cpu"
        if isinstance(w, QuantizedTensor) and on_cpu and w.group in KERNEL_GROUPS:
            self.group = w.group
            self.kind = f"int4x{1 if w.bits == 4 else 2}"
            self.padded = -(-self.out_features // 16) * 16  # the packing wants whole tiles of 16 outputs
            for q, scale, zero in _planes(w):
                q, scale, zero = (_pad_rows(a, self.padded) for a in (q, scale, zero))
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.from_numpy(q).to(torch.int32), 1)
                sz = torch.from_numpy(np.stack([scale.T, zero.T], axis=-1)).to(torch.bfloat16).contiguous()
                self.planes.append(_Plane(packed, sz))
        else:
            dense = w.dequantize() if isinstance(w, QuantizedTensor) else np.asarray(w, dtype=np.float32)
            self.dense = torch.from_numpy(dense).to(device=device, dtype=torch.bfloat16).contiguous()

    def state(self) -> dict[str, Any]:
        """Everything the product needs, as tensors and numbers (the packed-weights cache saves it)."""
        return {
            "packed": [p.packed for p in self.planes],
            "scales_zeros": [p.scales_zeros for p in self.planes],
            "group": self.group,
            "dense": self.dense,
            "shape": [self.out_features, self.in_features],
            "padded": self.padded,
            "kind": self.kind,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str = "cpu") -> QLinear:
        """A product rebuilt from state() without packing anything."""
        self = cls.__new__(cls)
        self.out_features, self.in_features = (int(x) for x in state["shape"])
        self.device, self.kind = device, state["kind"]
        self.group, self.padded = int(state["group"]), int(state["padded"])
        self.dense = state["dense"]
        self._module = None
        self.planes = [_Plane(p, sz) for p, sz in zip(state["packed"], state["scales_zeros"])]
        return self

    @property
    def nbytes(self) -> int:
        if self.dense is not None:
            return int(self.dense.numel() * self.dense.element_size())
        return sum(int(p.packed.numel() * p.packed.element_size() + p.scales_zeros.numel() * 2) for p in self.planes)

    def module(self) -> Any:
        """The same product as a TorchScript-able module (torch_model.QLinear)."""
        from .torch_model import QLinear as Module

        return Module(
            [p.packed for p in self.planes],
            [p.scales_zeros for p in self.planes],
            self.group,
            self.dense,
            self.out_features,
        )

    def __call__(self, x: Any) -> Any:
        """x: [T, in] bfloat16 -> [T, out] bfloat16 (the head's product, and tests)."""
        if self._module is None:
            self._module = self.module()
        return self._module(x)


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    if a.shape[0] == rows:
        return a
    return np.concatenate([a, np.zeros((rows - a.shape[0], *a.shape[1:]), dtype=a.dtype)])


def _planes(w: QuantizedTensor) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(q 0..15 [out, in], scale [out, groups], zero [out, groups]) per 4-bit plane: sum of (q-8)*s+z."""
    offset = w.offset if w.offset is not None else np.zeros_like(w.scale)
    if w.bits == 4:
        return [(w.q, w.scale, offset + 8 * w.scale)]
    q = w.q.astype(np.int16)
    hi = q >> 4  # floor division by 16: -8..7 for int8 values
    lo = (q - 16 * hi).astype(np.uint8)
    return [((hi + 8).astype(np.uint8), 16 * w.scale, np.zeros_like(w.scale)), (lo, w.scale, offset + 8 * w.scale)]
