"""Decoder shard in numpy: the Llama decoder and the families that vary it (Qwen2's q/k/v bias, q/k norms of
Qwen3 and Gemma 3, OLMo 2's projection norms and post-norms, Gemma's sandwich norms, GeGLU, scaled
embeddings, soft-capping and query scale, sliding-window layers of Mistral and Gemma with their own RoPE).

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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .attention import attention, softcap
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

    attn_norm: np.ndarray | None  # [D]; None: no norm before attention (OLMo 2)
    wqkv: np.ndarray  # [D, (H + 2*KV) * hd]
    bqkv: np.ndarray | None  # [(H + 2*KV) * hd] (Qwen2)
    wo: np.ndarray  # [H * hd, D]
    ffn_norm: np.ndarray | None  # [D]; None: no norm before the MLP (OLMo 2)
    w_gate_up: np.ndarray | None  # [D, 2F]; None in a mixture-of-experts layer
    w_down: np.ndarray | None  # [F, D]
    q_norm: np.ndarray | None = None  # [hd] RMSNorm of each q head before RoPE (Qwen3), or [H * hd] (OLMo 2)
    k_norm: np.ndarray | None = None  # [hd], or [KV * hd]
    post_attn_norm: np.ndarray | None = None  # [D] on the attention's output (Gemma, OLMo 2)
    post_ffn_norm: np.ndarray | None = None  # [D] on the MLP's output
    router: np.ndarray | None = None  # [D, E]: a mixture-of-experts layer's router (its MLP is the experts)
    experts: list[tuple[np.ndarray, np.ndarray]] | None = None  # per expert (gate_up [D, 2Fe], down [Fe, D])

    @property
    def nbytes(self) -> int:
        arrays = (self.attn_norm, self.wqkv, self.bqkv, self.wo, self.ffn_norm, self.w_gate_up, self.w_down)
        optional = (self.q_norm, self.k_norm, self.post_attn_norm, self.post_ffn_norm, self.router)
        experts = sum(g.nbytes + d.nbytes for g, d in self.experts or ())
        return sum(a.nbytes for a in arrays + optional if a is not None) + experts


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
    return rms_norm_each(x, weight, eps)


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


def rms_norm_each(x: np.ndarray, weight: np.ndarray, eps: np.float32) -> np.ndarray:
    """RMSNorm of each row of x [T, n] over n, times weight, whatever T (OLMo 2's norms of the whole q and k
    projections use it for decode rows too); each row reduced on its own, so a row's numbers do not depend
    on its batch."""
    ms = np.einsum("td,td->t", x, x)[:, None]  # one pass, no temporary of x's size
    ms *= F32(1.0 / x.shape[-1])
    ms += eps
    np.sqrt(ms, out=ms)
    out = x / ms
    out *= weight
    return out


_GELU_C = F32(math.sqrt(2.0 / math.pi))


def geglu(gate_up: np.ndarray) -> np.ndarray:
    """gelu_tanh(gate) * up for the fused [T, 2F] projection (Gemma's MLP)."""
    F = gate_up.shape[1] // 2
    gate, up = gate_up[:, :F], gate_up[:, F:]
    t = gate * gate
    t *= F32(0.044715)
    t += F32(1.0)
    t *= gate
    t *= _GELU_C
    np.tanh(t, out=t)
    t += F32(1.0)
    t *= gate
    t *= F32(0.5)
    t *= up
    return t


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
        self.scale = F32(1.0 / np.sqrt(self.hd)) if args.query_pre_attn_scalar is None else F32(args.attn_scale)
        self.inv_freq = inv_frequencies(self.hd, args.rope_theta, args.rope_scaling, args.rope_freq_factors)
        # each layer's RoPE (Gemma 3's sliding layers have their own base) and attention window
        self.windows = [args.layer_window(i) for i in range(start, end)]
        self.ropes: dict[tuple[float, str], tuple[np.ndarray, float]] = {}  # inverse frequencies, cos/sin factor
        self.rope_of: list[tuple[float, str]] = []
        for i in range(start, end):
            theta, scaling = args.layer_rope(i)
            key = (theta, repr(scaling))
            if key not in self.ropes:
                same = (theta, scaling) == (args.rope_theta, args.rope_scaling)
                inv = self.inv_freq if same else inv_frequencies(self.hd, theta, scaling)
                self.ropes[key] = (inv, (args.rope_attention_factor or 1.0) if same else 1.0)
            self.rope_of.append(key)
        self.act = geglu if args.hidden_act == "gelu_tanh" else swiglu
        self.attn_cap = None if args.attn_logit_softcapping is None else F32(args.attn_logit_softcapping)
        self.final_cap = None if args.final_logit_softcapping is None else F32(args.final_logit_softcapping)
        self.embed_scale = None if args.embed_scale is None else F32(args.embed_scale)

    @property
    def n_layers(self) -> int:
        return self.end - self.start

    def new_cache(self) -> KVCache:
        """An empty KV cache sized for this shard's layers."""
        return KVCache(self.n_layers, self.n_kv, self.hd, self.args.max_position_embeddings)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids [T] -> embeddings [T, D] (times sqrt(D) for Gemma)."""
        if self.w.embed is not None:
            h = self.w.embed[tokens]
        else:
            assert self.w.lm_head_t is not None  # tied embeddings: look up columns of the head
            h = np.ascontiguousarray(self.w.lm_head_t[:, tokens].T)
        if self.embed_scale is not None:
            h *= self.embed_scale
        return h

    def _rope_tables(self, positions: np.ndarray) -> dict[tuple[float, str], tuple[np.ndarray, np.ndarray]]:
        return {key: rope_tables(inv, positions, scale) for key, (inv, scale) in self.ropes.items()}

    def _logits(self, h: np.ndarray) -> np.ndarray:
        """Final-normed rows [n, D] -> logits [n, V] (soft-capped for Gemma 2)."""
        assert self.w.lm_head_t is not None
        logits = matmul(h, self.w.lm_head_t, _HEAD_ROW_LOOP)
        assert logits.dtype == F32, logits.dtype  # a float64 here means a silent 2x slowdown
        return logits if self.final_cap is None else softcap(logits, self.final_cap)

    def forward(self, x: np.ndarray, cache: KVCache, start_pos: int, num_logits: int = 1) -> np.ndarray:
        """Run the shard over positions [start_pos, start_pos + T).

        x is token ids [T] (first shard) or hidden states [T, D]. Returns hidden states [T, D], or
        for the last shard logits [num_logits, V] of the last num_logits positions (num_logits ==
        HIDDEN_STATES: the final-normed hidden states [T, D] of every position).
        """
        h = self.embed(np.asarray(x, dtype=np.int64)) if self.is_first else np.asarray(x, dtype=F32)
        T = h.shape[0]
        cache.begin(start_pos, T)
        ropes = self._rope_tables(np.arange(start_pos, start_pos + T))

        def attend(i: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
            keys, values = cache.write(i, start_pos, k, v)  # [KV, L, hd]
            return attention(q, keys, values, start_pos, self.windows[i], self.attn_cap)

        for i, layer in enumerate(self.w.layers):
            h = self._layer(h, layer, i, ropes[self.rope_of[i]], rms_norm, matmul, attend)
        cache.commit(start_pos + T)
        if not self.is_last:
            assert h.dtype == F32, h.dtype
            return h
        assert self.w.final_norm is not None and self.w.lm_head_t is not None
        if num_logits == HIDDEN_STATES:
            return rms_norm(h, self.w.final_norm, self.eps)
        return self._logits(rms_norm(h[T - num_logits :], self.w.final_norm, self.eps))

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
        ropes = self._rope_tables(np.asarray(positions))

        def attend(i: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
            attn = np.empty((B, q.shape[0] * q.shape[2]), dtype=F32)
            for b, (cache, pos) in enumerate(zip(caches, positions)):
                keys, values = cache.write(i, pos, k[:, b : b + 1], v[:, b : b + 1])
                attn[b] = attention(q[:, b : b + 1], keys, values, pos, self.windows[i], self.attn_cap)[0]
            return attn

        for i, w in enumerate(self.w.layers):
            h = self._layer(h, w, i, ropes[self.rope_of[i]], rms_norm_rows, matmul_rows, attend)
        for cache, pos in zip(caches, positions):
            cache.commit(pos + 1)
        if not self.is_last:
            return h
        assert self.w.final_norm is not None and self.w.lm_head_t is not None
        return self._logits(rms_norm_rows(h, self.w.final_norm, self.eps))

    def _qk(self, heads: np.ndarray, w: LayerWeights) -> np.ndarray:
        """The q and k heads of [H + 2KV, T, hd], normalized per head when the layer has head norms (Qwen3)."""
        qk = heads[: self.n_heads + self.n_kv]
        if w.q_norm is None or self.args.qk_norm_all:
            return qk
        return head_norm(qk, w, self.n_heads, self.eps)

    def _layer(
        self,
        h: np.ndarray,
        w: LayerWeights,
        i: int,
        rope: tuple[np.ndarray, np.ndarray],
        norm: Callable[[np.ndarray, np.ndarray, np.float32], np.ndarray],
        mm: Callable[[np.ndarray, np.ndarray], np.ndarray],
        attend: Callable[[int, np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """One decoder layer over rows h [T, D]: `norm` and `mm` are the prompt's or the batched rows'
        RMSNorm and product, `attend(i, q, k, v)` writes the cache and attends ([T, H * hd])."""
        T, H, KV, hd = h.shape[0], self.n_heads, self.n_kv, self.hd
        qkv = mm(h if w.attn_norm is None else norm(h, w.attn_norm, self.eps), w.wqkv)  # [T, (H + 2KV) * hd]
        if w.bqkv is not None:
            qkv += w.bqkv
        if self.args.qk_norm_all:  # OLMo 2: q and k normalized over all their heads at once
            assert w.q_norm is not None and w.k_norm is not None
            qkv[:, : H * hd] = rms_norm_each(qkv[:, : H * hd], w.q_norm, self.eps)
            qkv[:, H * hd : (H + KV) * hd] = rms_norm_each(qkv[:, H * hd : (H + KV) * hd], w.k_norm, self.eps)
        heads = qkv.reshape(T, H + 2 * KV, hd).transpose(1, 0, 2)  # [H + 2KV, T, hd]
        qk = apply_rope(self._qk(heads, w), *rope)  # q and k rotate together: one pass
        qk[:H] *= self.scale
        out = mm(attend(i, qk[:H], qk[H:], heads[H + KV :]), w.wo)
        if w.post_attn_norm is not None:
            out = norm(out, w.post_attn_norm, self.eps)
        h = h + out
        x = h if w.ffn_norm is None else norm(h, w.ffn_norm, self.eps)
        if w.experts is None:
            assert w.w_gate_up is not None and w.w_down is not None
            mlp = mm(self.act(mm(x, w.w_gate_up)), w.w_down)
        else:
            mlp = self._experts(x, w, by_row=mm is matmul_rows or x.shape[0] == 1)
        if w.post_ffn_norm is not None:
            mlp = norm(mlp, w.post_ffn_norm, self.eps)
        h += mlp
        return h

    def _experts(self, x: np.ndarray, w: LayerWeights, by_row: bool) -> np.ndarray:
        """A mixture-of-experts MLP over rows x [T, D]: each row's router softmax picks its top
        num_experts_per_tok experts, whose outputs are summed weighted by those probabilities (renormalized
        to sum to 1 when norm_topk_prob). Decode rows (by_row) are computed one by one with matrix-vector
        products, so a request's numbers do not depend on its batch; a prompt's rows are grouped by expert."""
        assert w.router is not None and w.experts is not None
        T, k = x.shape[0], self.args.num_experts_per_tok
        if by_row:
            logits = np.stack([x[t] @ w.router for t in range(T)])
        else:
            logits = x @ w.router  # [T, E]
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= np.array([p.sum() for p in probs], dtype=F32)[:, None]
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # [T, k], most probable first
        weights = np.take_along_axis(probs, top, axis=1)
        if self.args.norm_topk_prob:
            weights /= np.array([r.sum() for r in weights], dtype=F32)[:, None]
        out = np.zeros_like(x)
        if by_row:
            for t in range(T):
                for j in range(k):
                    gate_up, down = w.experts[int(top[t, j])]
                    out[t] += weights[t, j] * (self.act(x[t : t + 1] @ gate_up) @ down)[0]
            return out
        for e in np.unique(top):
            rows, rank = np.nonzero(top == e)
            gate_up, down = w.experts[int(e)]
            out[rows] += weights[rows, rank][:, None] * matmul(self.act(matmul(x[rows], gate_up)), down)
        return out
