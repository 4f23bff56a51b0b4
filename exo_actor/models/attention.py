"""Causal grouped-query attention in numpy, with the families' variants: a sliding window and soft-capped
scores (softcap serves the final logits too)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

F32 = np.float32


def softcap(x: np.ndarray, cap: np.float32) -> np.ndarray:
    """cap * tanh(x / cap), in place (Gemma 2's attention scores and logits)."""
    x /= cap
    np.tanh(x, out=x)
    x *= cap
    return x


_ATTN_BLOCK = 64  # query rows per block: bounds the score matrix and skips masked-out keys


@lru_cache(maxsize=8)
def _triangle(b: int) -> np.ndarray:
    """Additive causal mask for a block of b queries over its own b keys: [b, b]."""
    return np.triu(np.full((b, b), -np.inf, dtype=F32), 1)


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    start: int,
    window: int | None = None,
    cap: np.float32 | None = None,
) -> np.ndarray:
    """Causal grouped-query attention -> [T, H * hd].

    q [H, T, hd] (pre-scaled) for positions start + row; k, v [KV, start + T, hd]. With a window, the
    query at position p sees the keys (p - window, p]; with a cap, scores become cap * tanh(score / cap)
    before the mask. Scores are kept transposed, [keys, queries], so the softmax reductions run across
    rows (vectorized) rather than along many short rows. Each block of queries looks only at the keys
    it may see, and only the block's own diagonal (and a window's far edge) needs a mask.
    """
    H, T, hd = q.shape
    KV = k.shape[0]
    G = H // KV
    if T == 1:  # decode: [KV, G, L] scores, reductions along the keys
        lo = 0 if window is None else max(0, start + 1 - window)
        scores = np.matmul(q.reshape(KV, G, hd), k[:, lo:].transpose(0, 2, 1))
        if cap is not None:
            softcap(scores, cap)
        scores -= np.maximum.reduce(scores, axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= np.add.reduce(scores, axis=-1, keepdims=True)
        return np.matmul(scores, v[:, lo:]).reshape(1, H * hd)
    qg = q.reshape(KV, G, T, hd)  # the G heads of a kv group share its keys
    out = np.empty((T, H * hd), dtype=F32)
    for t0 in range(0, T, _ATTN_BLOCK):
        t1 = min(T, t0 + _ATTN_BLOCK)
        b, n = t1 - t0, start + t1
        lo = 0 if window is None else max(0, start + t0 + 1 - window)
        qb = qg[:, :, t0:t1].reshape(KV, G * b, hd)
        scores = np.matmul(k[:, lo:n], qb.transpose(0, 2, 1))  # [KV, n - lo, G*b]
        if cap is not None:
            softcap(scores, cap)
        if window is not None:
            scores.reshape(KV, n - lo, G, b)[:] += _window_mask(lo, n, start + t0, b, window)[:, None, :]
        elif b > 1:
            scores.reshape(KV, n, G, b)[:, n - b :] += _triangle(b).T[:, None, :]
        scores -= np.maximum.reduce(scores, axis=1, keepdims=True)
        np.exp(scores, out=scores)
        o = np.matmul(v[:, lo:n].transpose(0, 2, 1), scores)  # [KV, hd, G*b]
        o /= np.add.reduce(scores, axis=1, keepdims=True)
        out[t0:t1] = o.reshape(KV, hd, G, b).transpose(3, 0, 2, 1).reshape(b, H * hd)
    return out


def _window_mask(lo: int, n: int, q0: int, b: int, window: int) -> np.ndarray:
    """Additive mask [n - lo, b] of keys lo..n-1 for queries q0..q0+b-1: -inf where the key is in the
    query's future or window or more positions behind it."""
    kv = np.arange(lo, n)[:, None]
    qs = np.arange(q0, q0 + b)[None, :]
    return np.where((kv > qs) | (kv <= qs - window), F32(-np.inf), F32(0.0)).astype(F32)
