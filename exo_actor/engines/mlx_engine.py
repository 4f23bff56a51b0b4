"""The MLX engine: the same Llama shard on Apple's MLX (Metal on Apple Silicon; a CPU build on Linux).

Weights stay as stored: 4-bit and 8-bit groups of 32 become MLX quantized arrays (`mx.quantized_matmul`,
MLX's affine `scale * q + bias` per group is exactly the GGUF block formulas, see weights/quant.py);
other tensors (groups of 16, float checkpoints) are float32. Activations cross the engine boundary as
float32 numpy arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..models.config import ModelArgs
from ..models.rope import inv_frequencies, rope_tables
from ..weights import ModelFiles
from ..weights.base import ShardTensors, Weight
from ..weights.quant import QuantizedTensor, concat_rows, same_format
from .base import HIDDEN_STATES, RequestCaches, check_features, check_pass, require_module

MLX_GROUPS = (32, 64, 128)


class _Linear:
    """y = x @ W.T for one [out, in] weight: an MLX quantized array when its groups allow, else float32."""

    def __init__(self, mx: Any, w: Weight) -> None:
        self.mx = mx
        self.quantized = isinstance(w, QuantizedTensor) and w.group in MLX_GROUPS
        if isinstance(w, QuantizedTensor) and self.quantized:
            self.bits, self.group = w.bits, w.group
            offset = w.offset if w.offset is not None else np.zeros_like(w.scale)
            q = w.q.astype(np.uint32)
            if w.bits == 8:  # MLX's 8-bit values are unsigned: q + 128, and the bias pays it back
                q = (w.q.astype(np.int16) + 128).astype(np.uint32)
                offset = offset - 128 * w.scale
            per = 32 // w.bits  # value j of a word sits at bits [bits * j, bits * (j + 1))
            words = np.zeros((q.shape[0], q.shape[1] // per), dtype=np.uint32)
            for j in range(per):
                words |= q[:, j::per] << np.uint32(w.bits * j)
            self.w, self.scales, self.biases = mx.array(words), mx.array(w.scale), mx.array(offset)
            self.nbytes = words.nbytes + 2 * w.scale.nbytes
            mx.eval(self.w, self.scales, self.biases)
        else:
            dense = w.dequantize() if isinstance(w, QuantizedTensor) else np.asarray(w, dtype=np.float32)
            self.w = mx.array(np.ascontiguousarray(dense.T))
            self.nbytes = dense.nbytes
            mx.eval(self.w)

    def __call__(self, x: Any) -> Any:
        if not self.quantized:
            return x @ self.w
        return self.mx.quantized_matmul(
            x, self.w, self.scales, self.biases, transpose=True, group_size=self.group, bits=self.bits
        )


def _fused(mx: Any, parts: list[Weight]) -> list[_Linear]:
    quantized = [p for p in parts if isinstance(p, QuantizedTensor)]
    if len(quantized) == len(parts) and same_format(quantized):
        return [_Linear(mx, concat_rows(quantized))]
    arrays = [p for p in parts if isinstance(p, np.ndarray)]
    if len(arrays) == len(parts):
        return [_Linear(mx, np.concatenate(arrays))]
    return [_Linear(mx, p) for p in parts]


def _apply(mx: Any, parts: list[_Linear], x: Any) -> Any:
    return parts[0](x) if len(parts) == 1 else mx.concatenate([p(x) for p in parts], axis=-1)


class _Experts:
    """A mixture-of-experts MLP on MLX: a float32 router's top-k softmax weights (renormalized when the model
    says), each chosen expert's products (quantized like any matrix) on its rows, summed."""

    def __init__(self, mx: Any, router: Any, experts: list[tuple[Weight, Weight, Weight]], args: Any) -> None:
        self.mx, self.router = mx, mx.array(np.ascontiguousarray(router.T, dtype=np.float32))
        self.experts = [(_fused(mx, [g, u]), _Linear(mx, d)) for g, u, d in experts]
        self.k, self.renormalize = args.num_experts_per_tok, args.norm_topk_prob
        self.nbytes = sum(x.nbytes for gu, d in self.experts for x in (*gu, d)) + router.nbytes

    def __call__(self, x: Any, act: Any) -> Any:
        mx = self.mx
        probs = np.array(mx.softmax(x @ self.router, axis=-1), dtype=np.float32)  # [T, E], on the host
        chosen = np.argsort(-probs, axis=1, kind="stable")[:, : self.k]
        weights = np.take_along_axis(probs, chosen, axis=1)
        if self.renormalize:
            weights /= weights.sum(axis=1, keepdims=True)
        out = mx.zeros(x.shape, dtype=mx.float32)
        for e in np.unique(chosen):
            rows, rank = np.nonzero(chosen == e)
            gate_up, down = self.experts[int(e)]
            y = down(act(_apply(mx, gate_up, x[mx.array(rows)])))
            out = out.at[mx.array(rows)].add(y * mx.array(weights[rows, rank])[:, None])
        return out


_GROW = 256


class _Cache:
    """One request's keys and values for a shard's layers: [KV, capacity, hd] per layer."""

    def __init__(self, mx: Any, n_layers: int, n_kv: int, hd: int, max_positions: int) -> None:
        self.mx, self.n_layers, self.n_kv, self.hd, self.max_positions = mx, n_layers, n_kv, hd, max_positions
        self.k: list[Any] = []
        self.v: list[Any] = []
        self.length = self.capacity = 0

    def clone(self) -> _Cache:
        other = _Cache(self.mx, self.n_layers, self.n_kv, self.hd, self.max_positions)
        other.k = [self.mx.array(k) for k in self.k]  # copies: writes go through slice assignment
        other.v = [self.mx.array(v) for v in self.v]
        other.length, other.capacity = self.length, self.capacity
        return other

    def reserve(self, end: int) -> None:
        if end <= self.capacity:
            return
        cap = min(self.max_positions, -(-max(end, 2 * self.capacity) // _GROW) * _GROW)
        shape = (self.n_kv, cap - self.capacity, self.hd)
        zeros = lambda: self.mx.zeros(shape, dtype=self.mx.float32)  # noqa: E731 - one array per layer
        if not self.k:
            self.k = [zeros() for _ in range(self.n_layers)]
            self.v = [zeros() for _ in range(self.n_layers)]
        else:
            self.k = [self.mx.concatenate([k, zeros()], axis=1) for k in self.k]
            self.v = [self.mx.concatenate([v, zeros()], axis=1) for v in self.v]
        self.capacity = cap


class MlxShardRunner(RequestCaches):
    """Layers [start, end) on MLX, with one KV cache per request."""

    def __init__(self, args: ModelArgs, start: int, end: int, tensors: ShardTensors) -> None:
        import mlx.core as mx

        self.mx, self.args = mx, args
        self.start, self.end = start, end
        self.is_first, self.is_last = start == 0, end == args.num_hidden_layers
        arr = lambda a: None if a is None else mx.array(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        self.layers: list[dict[str, Any]] = [
            {
                "attn_norm": arr(l.attn_norm),
                "bqkv": arr(l.bqkv),
                "q_norm": arr(l.q_norm),  # q/k head norms (Qwen3), None elsewhere
                "k_norm": arr(l.k_norm),
                "wqkv": _fused(mx, [l.q, l.k, l.v]),
                "wo": _Linear(mx, l.o),
                "ffn_norm": arr(l.ffn_norm),
                "w_gate_up": [] if l.gate is None else _fused(mx, [l.gate, l.up]),  # type: ignore[list-item]
                "w_down": None if l.down is None else _Linear(mx, l.down),
                "experts": None if l.experts is None else _Experts(mx, l.router, l.experts, args),
                "post_attn_norm": arr(l.post_attn_norm),  # Gemma, OLMo 2
                "post_ffn_norm": arr(l.post_ffn_norm),
                "window": args.layer_window(start + j),  # Mistral, Gemma, Phi-3
                "local": args.rope_local_theta is not None and args.layer_window(start + j) is not None,
            }
            for j, l in enumerate(tensors.layers)
        ]
        self.embed_table = tensors.embed_rows  # looked up on the host, rows dequantized on demand
        self.final_norm = arr(tensors.final_norm)
        self.head = _Linear(mx, tensors.head) if tensors.head is not None else None
        linears = [x for l in self.layers for x in (*l["wqkv"], l["wo"], *l["w_gate_up"], l["w_down"], l["experts"])]
        self._bytes = sum(x.nbytes for x in linears if x is not None) + (self.head.nbytes if self.head else 0)
        vectors = ("attn_norm", "ffn_norm", "q_norm", "k_norm", "bqkv", "post_attn_norm", "post_ffn_norm")
        self._bytes += sum(l[n].nbytes for l in self.layers for n in vectors if l[n] is not None)
        self._bytes += int(self.embed_table.nbytes) if self.embed_table is not None else 0
        self.H, self.KV, self.hd = args.num_attention_heads, args.num_key_value_heads, args.dim_head
        self.eps = args.rms_norm_eps
        self.inv_freq = inv_frequencies(self.hd, args.rope_theta, args.rope_scaling, args.rope_freq_factors)
        local = args.rope_local_theta  # Gemma 3's sliding layers
        self.local_inv_freq = None if local is None else inv_frequencies(self.hd, local)
        self.scale = args.attn_scale
        self.cap, self.final_cap = args.attn_logit_softcapping, args.final_logit_softcapping
        self.embed_scale = args.embed_scale
        self.gelu = args.hidden_act == "gelu_tanh"
        self.caches: dict[str, _Cache] = {}

    @property
    def weight_bytes(self) -> int:
        return self._bytes

    def forward(self, request_id: str, x: np.ndarray, start_pos: int, num_logits: int = 1) -> np.ndarray:
        mx = self.mx
        cache = self.caches.get(request_id)
        if cache is None:
            cache = self.caches[request_id] = _Cache(
                mx, len(self.layers), self.KV, self.hd, self.args.max_position_embeddings
            )
        T = len(x)
        end = start_pos + T
        check_pass(request_id, cache.length, start_pos, end, cache.max_positions)
        if self.is_first:
            rows = self.embed_table.rows_float(np.asarray(x, dtype=np.int64))
            if self.embed_scale is not None:  # Gemma: sqrt(hidden_size), in float32 as the reference
                rows = rows * np.float32(self.embed_scale)
            h = mx.array(np.ascontiguousarray(rows))
        else:
            h = mx.array(np.asarray(x, dtype=np.float32))
        cache.reserve(end)
        positions = np.arange(start_pos, end)
        scale = self.args.rope_attention_factor or 1.0  # LongRoPE
        ropes = {False: [mx.array(t) for t in rope_tables(self.inv_freq, positions, scale)]}
        if self.local_inv_freq is not None:
            ropes[True] = [mx.array(t) for t in rope_tables(self.local_inv_freq, positions)]
        masks: dict[int | None, Any] = {}
        for i, w in enumerate(self.layers):
            if w["window"] not in masks:
                masks[w["window"]] = self._mask(start_pos, end, w["window"])
            cos, sin = ropes[w["local"]]
            h = self._layer(h, w, cache, i, start_pos, end, cos, sin, masks[w["window"]])
        cache.length = end
        if not self.is_last:
            out = h
        elif num_logits == HIDDEN_STATES:
            out = mx.fast.rms_norm(h, self.final_norm, self.eps)
        else:
            assert self.head is not None
            out = self.head(mx.fast.rms_norm(h[T - num_logits :], self.final_norm, self.eps))
            if self.final_cap is not None:  # Gemma 2
                out = mx.tanh(out / self.final_cap) * self.final_cap
        return np.array(out, dtype=np.float32)

    def _mask(self, start: int, end: int, window: int | None) -> Any:
        """Additive [T, end] mask: query t (position start + t) sees keys 0 .. start + t, and with a window only
        those > start + t - window; None where nothing is masked (one query, no window)."""
        T = end - start
        if T == 1 and (window is None or end <= window):
            return None
        q = (start + np.arange(T))[:, None]
        allowed = np.arange(end)[None, :] <= q
        if window is not None:
            allowed &= np.arange(end)[None, :] > q - window
        return self.mx.array(np.where(allowed, 0.0, -np.inf).astype(np.float32))

    def _norm(self, x: Any, w: Any) -> Any:
        return x if w is None else self.mx.fast.rms_norm(x, w, self.eps)

    def _rope(self, x: Any, cos: Any, sin: Any) -> Any:
        half = self.hd // 2
        rotated = self.mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin

    def _layer(self, h: Any, w: dict[str, Any], cache: _Cache, i: int, start: int, end: int, cos, sin, mask) -> Any:
        mx, T, H, KV, hd = self.mx, h.shape[0], self.H, self.KV, self.hd
        qkv = _apply(mx, w["wqkv"], self._norm(h, w["attn_norm"]))
        if w["bqkv"] is not None:
            qkv = qkv + w["bqkv"]
        if self.args.qk_norm_all:  # OLMo 2: q and k normalized over all their heads at once
            n = (H + KV) * hd
            q_all = mx.fast.rms_norm(qkv[:, : H * hd], w["q_norm"], self.eps)
            qkv = mx.concatenate([q_all, mx.fast.rms_norm(qkv[:, H * hd : n], w["k_norm"], self.eps), qkv[:, n:]], 1)
        heads = qkv.reshape(T, H + 2 * KV, hd).transpose(1, 0, 2)  # [H + 2KV, T, hd]
        q, k = heads[:H], heads[H : H + KV]
        if w["q_norm"] is not None and not self.args.qk_norm_all:  # each head over hd before RoPE (Qwen3)
            q, k = mx.fast.rms_norm(q, w["q_norm"], self.eps), mx.fast.rms_norm(k, w["k_norm"], self.eps)
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        v = heads[H + KV :]
        cache.k[i][:, start:end, :] = k
        cache.v[i][:, start:end, :] = v
        keys, values = cache.k[i][:, :end], cache.v[i][:, :end]
        if self.cap is None:
            sdpa = mx.fast.scaled_dot_product_attention
            attn = sdpa(q[None], keys[None], values[None], scale=self.scale, mask=mask)[0]  # [H, T, hd]
        else:  # Gemma 2's soft-capped scores: explicit (the fused kernel takes no cap)
            G = H // KV
            s = mx.matmul(q.reshape(KV, G * T, hd) * self.scale, keys.transpose(0, 2, 1)).reshape(H, T, end)
            s = mx.tanh(s / self.cap) * self.cap
            if mask is not None:
                s = s + mask
            p = mx.softmax(s, axis=-1).reshape(KV, G * T, end)
            attn = mx.matmul(p, values).reshape(H, T, hd)
        out = w["wo"](attn.transpose(1, 0, 2).reshape(T, H * hd))
        h = h + self._norm(out, w["post_attn_norm"])
        x = self._norm(h, w["ffn_norm"])
        mlp = (
            w["experts"](x, self._act)
            if w["experts"] is not None
            else w["w_down"](self._act(_apply(mx, w["w_gate_up"], x)))
        )
        return h + self._norm(mlp, w["post_ffn_norm"])

    def _act(self, gate_up: Any) -> Any:
        """SwiGLU, or GeGLU with tanh GeLU as numpy computes it, of a fused [T, 2F] projection."""
        mx, F = self.mx, gate_up.shape[1] // 2
        gate, up = gate_up[:, :F], gate_up[:, F:]
        if self.gelu:
            return 0.5 * gate * (1 + mx.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate * gate * gate))) * up
        return gate * mx.sigmoid(gate) * up


class MlxEngine:
    name = "mlx"

    def __init__(self, quantize: str | None = None) -> None:
        require_module("mlx.core", "mlx")
        self.quantize = quantize

    def load_shard(self, model: ModelFiles, start: int, end: int) -> MlxShardRunner:
        check_features(self.name, model.args)
        return MlxShardRunner(model.args, start, end, model.shard_tensors(start, end, self.quantize))
