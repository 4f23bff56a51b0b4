"""Rotary position embeddings (RoPE), including Llama 3.x and linear frequency scaling.

Layout is Hugging Face's "rotate_half": the head dimension is split into two halves that rotate as
pairs (x[i], x[i + d/2]). GGUF files converted from Llama checkpoints store q/k weights permuted for
llama.cpp's interleaved layout; the GGUF loader undoes that, so this module has a single layout.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def inv_frequencies(
    head_dim: int,
    theta: float,
    scaling: dict[str, Any] | None = None,
    freq_factors: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Inverse rotation frequencies [head_dim // 2] (float64), after any scaling."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if freq_factors is not None:  # GGUF rope_freqs tensor: per-frequency divisors
        return inv / np.asarray(freq_factors, dtype=np.float64)
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(scaling["factor"])
    if kind == "llama3":
        return _llama3_scale(inv, scaling)
    if kind == "longrope":  # Phi-3: per-frequency divisors, chosen by ModelArgs (see resolve_longrope)
        factors = np.asarray(scaling["ext_factors"], dtype=np.float64)
        if factors.shape != inv.shape:
            from ..errors import UnsupportedModelError

            raise UnsupportedModelError(f"longrope factors: {factors.size} values for a head of {head_dim}")
        return inv / factors
    from ..errors import UnsupportedModelError

    raise UnsupportedModelError(f"rope scaling type {kind!r} is not supported (linear, llama3, longrope)")


def resolve_longrope(scaling: dict[str, Any], context: int) -> dict[str, Any]:
    """Phi-3's LongRoPE scaling made static: the long factors when the context we run exceeds the original
    one, else the short ones (llama.cpp's rule; transformers switches per sequence length, which a KV cache
    could not follow), and the factor on cos / sin, sqrt(1 + ln(s) / ln(original)) for s = context /
    original unless the config states it."""
    original = int(scaling.get("original_max_position_embeddings") or context)
    factor = float(scaling.get("factor") or context / original)
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    chosen = scaling["long_factor"] if context > original else scaling["short_factor"]
    return {
        **scaling,
        "rope_type": "longrope",
        "original_max_position_embeddings": original,
        "ext_factors": tuple(float(x) for x in chosen),
        "attention_factor": float(attention),
    }


def _llama3_scale(inv: np.ndarray, s: dict[str, Any]) -> np.ndarray:
    # Llama 3.1 rule: long wavelengths are slowed by `factor`, short ones kept, and the band in
    # between interpolated smoothly (Meta's reference implementation, llama3_1 "apply_scaling").
    factor = float(s["factor"])
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled)


def rope_tables(inv_freq: np.ndarray, positions: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables [T, head_dim] (float32) for the given absolute positions, times `scale` (LongRoPE's
    attention factor)."""
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # [T, d/2]
    angles = np.concatenate([angles, angles], axis=-1)  # [T, d]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    if scale != 1.0:
        cos *= np.float32(scale)
        sin *= np.float32(scale)
    return cos, sin


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate x [heads, T, head_dim] by the tables [T, head_dim]; returns a new float32 array."""
    half = x.shape[-1] // 2
    out = x * cos  # x * cos + rotate_half(x) * sin, where rotate_half(x) = [-x2, x1]
    out[..., :half] -= x[..., half:] * sin[:, :half]
    out[..., half:] += x[..., :half] * sin[:, half:]
    return out
