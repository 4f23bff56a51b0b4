"""Llama-family decoder shard in numpy (Llama 2/3.x, SmolLM, Qwen2 with q/k/v bias, Qwen3 with q/k norms).

A shard is the contiguous layer range [start, end) of a model. The first shard owns the token
embedding and takes token ids; the last owns the final norm and LM head and returns logits; any
other shard maps hidden states to hidden states. Everything is float32: numpy 2 promotes float32
arrays combined with float64 scalars, so every constant here is a np.float32.

Weights are [in, out] operands ("x @ W"; the loader stores each in the memory order OpenBLAS streams
fastest, see weights.base.as_in_out), and q/k/v and gate/up are fused, so a layer makes four matrix
products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .config import ModelArgs
from .kv_cache import KVCache
from .rope import apply_rope, inv_frequencies, rope_tables

F32 = np.float32
# num_logits of a pass on the last shard that asks for the final-normed hidden states [T, D] of every
# position instead of logits (embeddings: runtime/embedding.py)
HIDDEN_STATES = 0


@dataclass
class LayerWeights:
    """Weights of one decoder layer, fused, as [in, out] operands."""

    attn_norm: np.ndarray  # [D]
    wqkv: np.ndarray  # [D, (H + 2*KV) * hd]
    bqkv: np.ndarray | None  # [(H + 2*KV) * hd] (Qwen2)
    wo: np.ndarray  # [H * hd, D]
    ffn_norm: np.ndarray  # [D]
    w_gate_up: np.ndarray  # [D, 2F]
    w_down: np.ndarray  # [F, D]
    q_norm: np.ndarray | None = None  # [hd] (Qwen3): RMSNorm of each q head before RoPE
    k_norm: np.ndarray | None = None  # [hd]

    @property
    def nbytes(self) -> int:
        arrays = (self.attn_norm, self.wqkv, self.bqkv, self.wo, self.ffn_norm, self.w_gate_up, self.w_down)
        return sum(a.nbytes for a in arrays + (self.q_norm, self.k_norm) if a is not None)


@dataclass
class ShardWeights:
    """What one shard holds: its layers plus, at the ends of the model, embedding / norm / head."""

    layers: list[LayerWeights]
    embed: np.ndarray | None = None  # [V, D]; first shard (unless lm_head_t can serve lookups)
    final_norm: np.ndarray | None = None  # [D]; last shard
    lm_head_t: np.ndarray | None = None  # [D, V]; last shard

    @property
    def nbytes(self) -> int:
        extras = (self.embed, self.final_norm, self.lm_head_t)
        return sum(l.nbytes for l in self.layers) + sum(a.nbytes for a in extras if a is not None)


def _row_scale(v: np.ndarray, eps: np.float32) -> np.float32:
    return F32(1.0 / math.sqrt(float(v @ v) / v.size + float(eps)))


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: np.float32) -> np.ndarray:
    """RMSNorm over the last axis, in float32."""
    if x.shape[0] == 1:  # decode: three small ops instead of six
        return x * (weight * _row_scale(x[0], eps))
    ms = np.einsum("td,td->t", x, x)[:, None]  # one pass, no temporary of x's size
    ms *= F32(1.0 / x.shape[-1])
    ms += eps
    np.sqrt(ms, out=ms)
    y = x / ms
    y *= weight
    return y


def rms_norm_rows(x: np.ndarray, weight: np.ndarray, eps: np.float32) -> np.ndarray:
    """RMSNorm of a batch of decode rows [B, D], each computed exactly as rms_norm computes one row
    (so a request's numbers do not depend on what it is batched with)."""
    scales = np.array([_row_scale(v, eps) for v in x], dtype=F32)
    return x * (weight[None, :] * scales[:, None])


def head_norm(heads: np.ndarray, w: LayerWeights, n_q: int, eps: np.float32) -> np.ndarray:
    """q and k heads [n_q + KV, T, hd] RMS-normalized each over hd, times q_norm / k_norm (Qwen3); a new
    array. Each (head, position) is reduced on its own, so a row's numbers do not depend on its batch."""
    assert w.q_norm is not None and w.k_norm is not None
    ms = np.einsum("ntd,ntd->nt", heads, heads)[..., None]
    ms *= F32(1.0 / heads.shape[-1])
    ms += eps
    np.sqrt(ms, out=ms)
    out = heads / ms
    out[:n_q] *= w.q_norm
    out[n_q:] *= w.k_norm
    return out


def swiglu(gate_up: np.ndarray) -> np.ndarray:
    """silu(gate) * up for the fused [T, 2F] projection, with as few temporaries as possible."""
    F = gate_up.shape[1] // 2
    gate, up = gate_up[:, :F], gate_up[:, F:]
    t = np.negative(gate)
    np.exp(t, out=t)
    t += F32(1.0)
    np.divide(gate, t, out=t)
    t *= up
    return t


# OpenBLAS's matrix-matrix path is slow for a few rows (measured on SmolLM2's shapes: 2-8 rows cost
# 4-6x one matrix-vector product), which is exactly what verifying a speculative draft or a small
# batch needs. Up to these row counts, one matrix-vector product per row is faster: the layer
# weights are still in cache for the next row, and the head (too big for any cache) costs T reads.
_ROW_LOOP = 4
_HEAD_ROW_LOOP = 5


def matmul(x: np.ndarray, w: np.ndarray, row_loop: int = _ROW_LOOP) -> np.ndarray:
    """x [T, in] @ w [in, out], as T matrix-vector products when 1 < T <= row_loop."""
    T = x.shape[0]
    if T == 1 or T > row_loop:
        return x @ w
    out = np.empty((T, w.shape[1]), dtype=F32)
    for r in range(T):
        np.matmul(x[r], w, out=out[r])
    return out


def matmul_rows(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """matmul() for a batch of decode rows: beyond the row loop, computed as (w.T @ x.T).T, which
    OpenBLAS runs 10-40% faster than x @ w on these thin weight matrices at 8-16 rows (measured on
    SmolLM2's shapes)."""
    if x.shape[0] <= _ROW_LOOP:
        return matmul(x, w)
    return np.ascontiguousarray((w.T @ x.T).T)


class LlamaShard:
    """Layers [start, end) of a Llama-family model; pure compute over a caller-owned KVCache."""

    def __init__(self, args: ModelArgs, start: int, end: int, weights: ShardWeights) -> None:
        if not 0 <= start < end <= args.num_hidden_layers:
            raise ValueError(f"invalid layer range [{start}, {end}) for {args.num_hidden_layers} layers")
        if len(weights.layers) != end - start:
            raise ValueError(f"shard [{start}, {end}) got {len(weights.layers)} layers of weights")
        self.args, self.start, self.end, self.w = args, start, end, weights
        self.is_first, self.is_last = start == 0, end == args.num_hidden_layers
        if self.is_first and weights.embed is None and weights.lm_head_t is None:
            raise ValueError("the first shard needs the token embedding")
        if self.is_last and (weights.final_norm is None or weights.lm_head_t is None):
            raise ValueError("the last shard needs the final norm and the LM head")
        self.n_heads, self.n_kv = args.num_attention_heads, args.num_key_value_heads
        self.hd = args.dim_head
        self.eps = F32(args.rms_norm_eps)
        self.scale = F32(1.0 / np.sqrt(self.hd))
        self.inv_freq = inv_frequencies(self.hd, args.rope_theta, args.rope_scaling, args.rope_freq_factors)

    @property
    def n_layers(self) -> int:
        return self.end - self.start

    def new_cache(self) -> KVCache:
        """An empty KV cache sized for this shard's layers."""
        return KVCache(self.n_layers, self.n_kv, self.hd, self.args.max_position_embeddings)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids [T] -> embeddings [T, D]."""
        if self.w.embed is not None:
            return self.w.embed[tokens]
        assert self.w.lm_head_t is not None  # tied embeddings: look up columns of the head
        return np.ascontiguousarray(self.w.lm_head_t[:, tokens].T)

    def forward(self, x: np.ndarray, cache: KVCache, start_pos: int, num_logits: int = 1) -> np.ndarray:
        """Run the shard over positions [start_pos, start_pos + T).

        x is token ids [T] (first shard) or hidden states [T, D]. Returns hidden states [T, D], or
        for the last shard logits [num_logits, V] of the last num_logits positions (num_logits ==
        HIDDEN_STATES: the final-normed hidden states [T, D] of every position).
        """
        h = self.embed(np.asarray(x, dtype=np.int64)) if self.is_first else np.asarray(x, dtype=F32)
        T = h.shape[0]
        cache.begin(start_pos, T)
        cos, sin = rope_tables(self.inv_freq, np.arange(start_pos, start_pos + T))
        for i, layer in enumerate(self.w.layers):
            h = self._layer(h, layer, cache, i, start_pos, cos, sin)
        cache.commit(start_pos + T)
        if not self.is_last:
            assert h.dtype == F32, h.dtype
            return h
        assert self.w.final_norm is not None and self.w.lm_head_t is not None
        if num_logits == HIDDEN_STATES:
            return rms_norm(h, self.w.final_norm, self.eps)
        h = rms_norm(h[T - num_logits :], self.w.final_norm, self.eps)
        logits = matmul(h, self.w.lm_head_t, _HEAD_ROW_LOOP)
        assert logits.dtype == F32, logits.dtype  # a float64 here means a silent 2x slowdown
        return logits

    def forward_rows(self, x: np.ndarray, caches: list[KVCache], positions: list[int]) -> np.ndarray:
        """One decode step for B requests at once (continuous batching).

        Row b of x (a token id [B] on the first shard, hidden states [B, D] elsewhere) is request b
        at position positions[b] over caches[b]. The weight products run over all rows together (one
        pass over the weights for the whole batch); attention runs per row over its own cache.
        Returns hidden states [B, D], or on the last shard logits [B, V].
        """
        h = self.embed(np.asarray(x, dtype=np.int64)) if self.is_first else np.array(x, dtype=F32)
        B = h.shape[0]
        if B != len(caches) or B != len(positions):
            raise ValueError(f"{B} rows for {len(caches)} caches and {len(positions)} positions")
        for cache, pos in zip(caches, positions):
            cache.begin(pos, 1)
        cos, sin = rope_tables(self.inv_freq, np.asarray(positions))
        H, KV, hd = self.n_heads, self.n_kv, self.hd
        for i, w in enumerate(self.w.layers):
            qkv = matmul_rows(rms_norm_rows(h, w.attn_norm, self.eps), w.wqkv)  # [B, (H + 2KV) * hd]
            if w.bqkv is not None:
                qkv += w.bqkv
            heads = qkv.reshape(B, H + 2 * KV, hd).transpose(1, 0, 2)  # [H + 2KV, B, hd]
            qk = apply_rope(self._qk(heads, w), cos, sin)
            qk[:H] *= self.scale
            attn = np.empty((B, H * hd), dtype=F32)
            for b, (cache, pos) in enumerate(zip(caches, positions)):
                keys, values = cache.write(i, pos, qk[H:, b : b + 1], heads[H + KV :, b : b + 1])
                attn[b] = _attention(qk[:H, b : b + 1], keys, values, pos)[0]
            h = h + matmul_rows(attn, w.wo)
            gate_up = matmul_rows(rms_norm_rows(h, w.ffn_norm, self.eps), w.w_gate_up)
            h += matmul_rows(swiglu(gate_up), w.w_down)
        for cache, pos in zip(caches, positions):
            cache.commit(pos + 1)
        if not self.is_last:
            return h
        assert self.w.final_norm is not None and self.w.lm_head_t is not None
        return matmul(rms_norm_rows(h, self.w.final_norm, self.eps), self.w.lm_head_t, _HEAD_ROW_LOOP)

    def _qk(self, heads: np.ndarray, w: LayerWeights) -> np.ndarray:
        """The q and k heads of [H + 2KV, T, hd], normalized when the layer has q/k norms (Qwen3)."""
        qk = heads[: self.n_heads + self.n_kv]
        return qk if w.q_norm is None else head_norm(qk, w, self.n_heads, self.eps)

    def _layer(
        self, h: np.ndarray, w: LayerWeights, cache: KVCache, i: int, start: int, cos: np.ndarray, sin: np.ndarray
    ) -> np.ndarray:
        T, H, KV, hd = h.shape[0], self.n_heads, self.n_kv, self.hd
        qkv = matmul(rms_norm(h, w.attn_norm, self.eps), w.wqkv)  # [T, (H + 2KV) * hd]
        if w.bqkv is not None:
            qkv += w.bqkv
        heads = qkv.reshape(T, H + 2 * KV, hd).transpose(1, 0, 2)  # [H + 2KV, T, hd]
        qk = apply_rope(self._qk(heads, w), cos, sin)  # q and k rotate together: one pass
        qk[:H] *= self.scale
        keys, values = cache.write(i, start, qk[H:], heads[H + KV :])  # [KV, L, hd]
        attn = _attention(qk[:H], keys, values, start)  # [T, H * hd]
        h = h + matmul(attn, w.wo)
        gate_up = matmul(rms_norm(h, w.ffn_norm, self.eps), w.w_gate_up)  # [T, 2F]
        h += matmul(swiglu(gate_up), w.w_down)
        return h


_ATTN_BLOCK = 64  # query rows per block: bounds the score matrix and skips masked-out keys


@lru_cache(maxsize=8)
def _triangle(b: int) -> np.ndarray:
    """Additive causal mask for a block of b queries over its own b keys: [b, b]."""
    return np.triu(np.full((b, b), -np.inf, dtype=F32), 1)


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
    """Causal grouped-query attention -> [T, H * hd].

    q [H, T, hd] (pre-scaled by 1/sqrt(hd)) for positions start + row; k, v [KV, start + T, hd].
    Scores are kept transposed, [keys, queries], so the softmax reductions run across rows
    (vectorized) rather than along many short rows. Each block of queries looks only at the keys it
    may see, and only the block's own diagonal needs a mask.
    """
    H, T, hd = q.shape
    KV = k.shape[0]
    G = H // KV
    if T == 1:  # decode: [KV, G, L] scores, reductions along the keys
        scores = np.matmul(q.reshape(KV, G, hd), k.transpose(0, 2, 1))
        scores -= np.maximum.reduce(scores, axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= np.add.reduce(scores, axis=-1, keepdims=True)
        return np.matmul(scores, v).reshape(1, H * hd)
    qg = q.reshape(KV, G, T, hd)  # the G heads of a kv group share its keys
    out = np.empty((T, H * hd), dtype=F32)
    for t0 in range(0, T, _ATTN_BLOCK):
        t1 = min(T, t0 + _ATTN_BLOCK)
        b, n = t1 - t0, start + t1
        qb = qg[:, :, t0:t1].reshape(KV, G * b, hd)
        scores = np.matmul(k[:, :n], qb.transpose(0, 2, 1))  # [KV, n, G*b]
        if b > 1:
            scores.reshape(KV, n, G, b)[:, n - b :] += _triangle(b).T[:, None, :]
        scores -= np.maximum.reduce(scores, axis=1, keepdims=True)
        np.exp(scores, out=scores)
        o = np.matmul(v[:, :n].transpose(0, 2, 1), scores)  # [KV, hd, G*b]
        o /= np.add.reduce(scores, axis=1, keepdims=True)
        out[t0:t1] = o.reshape(KV, hd, G, b).transpose(3, 0, 2, 1).reshape(b, H * hd)
    return out
