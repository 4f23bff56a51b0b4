"""The MLX engine: the same Llama shard on Apple's MLX (Metal on Apple Silicon; a CPU build on Linux).

Weights come from the same loaders as the numpy engine (float32 arrays), so the two engines compute
the same function; activations cross the engine boundary as float32 numpy arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ContextLengthError
from ..models.config import ModelArgs
from ..models.llama import ShardWeights
from ..models.rope import inv_frequencies, rope_tables
from ..weights import ModelFiles
from .base import CachePositionError, RequestCaches, layer_tensors, require_module

_GROW = 256


class _Cache:
    """One request's keys and values for a shard's layers: [KV, capacity, hd] per layer."""

    def __init__(self, mx: Any, n_layers: int, n_kv: int, hd: int, max_positions: int) -> None:
        self.mx, self.n_layers, self.n_kv, self.hd, self.max_positions = mx, n_layers, n_kv, hd, max_positions
        self.k: list[Any] = []
        self.v: list[Any] = []
        self.length = self.capacity = 0

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

    def __init__(self, args: ModelArgs, start: int, end: int, weights: ShardWeights) -> None:
        import mlx.core as mx

        self.mx, self.args = mx, args
        self.start, self.end = start, end
        self.is_first, self.is_last = start == 0, end == args.num_hidden_layers
        arr = lambda a: None if a is None else mx.array(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        self.layers = layer_tensors(weights, arr)
        self.embed_table = arr(weights.embed)
        self.final_norm, self.lm_head_t = arr(weights.final_norm), arr(weights.lm_head_t)
        if self.is_first and self.embed_table is None:  # tied: the head's columns are the embedding
            self.embed_table = arr(np.ascontiguousarray(weights.lm_head_t.T))
        mx.eval([v for layer in self.layers for v in layer.values() if v is not None])
        self._bytes = weights.nbytes
        self.H, self.KV, self.hd = args.num_attention_heads, args.num_key_value_heads, args.dim_head
        self.eps = args.rms_norm_eps
        self.inv_freq = inv_frequencies(self.hd, args.rope_theta, args.rope_scaling, args.rope_freq_factors)
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
        if end > cache.max_positions:
            raise ContextLengthError(f"position {end} exceeds the model's context window ({cache.max_positions})")
        if start_pos > cache.length:
            raise CachePositionError(f"request {request_id}: position {start_pos} skips past cached {cache.length}")
        if self.is_first:
            h = self.embed_table[mx.array(np.asarray(x, dtype=np.int32))]
        else:
            h = mx.array(np.asarray(x, dtype=np.float32))
        cache.reserve(end)
        cos, sin = (mx.array(t) for t in rope_tables(self.inv_freq, np.arange(start_pos, end)))
        mask = None
        if T > 1:  # query t (position start_pos + t) sees keys 0 .. start_pos + t
            allowed = np.arange(end)[None, :] <= (start_pos + np.arange(T))[:, None]
            mask = mx.array(np.where(allowed, 0.0, -np.inf).astype(np.float32))
        for i, w in enumerate(self.layers):
            h = self._layer(h, w, cache, i, start_pos, end, cos, sin, mask)
        cache.length = end
        if not self.is_last:
            out = h
        else:
            out = mx.fast.rms_norm(h[T - num_logits :], self.final_norm, self.eps) @ self.lm_head_t
        return np.array(out, dtype=np.float32)

    def _rope(self, x: Any, cos: Any, sin: Any) -> Any:
        half = self.hd // 2
        rotated = self.mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin

    def _layer(self, h: Any, w: dict[str, Any], cache: _Cache, i: int, start: int, end: int, cos, sin, mask) -> Any:
        mx, T, H, KV, hd = self.mx, h.shape[0], self.H, self.KV, self.hd
        qkv = mx.fast.rms_norm(h, w["attn_norm"], self.eps) @ w["wqkv"]
        if w["bqkv"] is not None:
            qkv = qkv + w["bqkv"]
        heads = qkv.reshape(T, H + 2 * KV, hd).transpose(1, 0, 2)  # [H + 2KV, T, hd]
        q = self._rope(heads[:H], cos, sin)
        k = self._rope(heads[H : H + KV], cos, sin)
        v = heads[H + KV :]
        cache.k[i][:, start:end, :] = k
        cache.v[i][:, start:end, :] = v
        keys, values = cache.k[i][:, :end], cache.v[i][:, :end]
        attn = mx.fast.scaled_dot_product_attention(
            q[None], keys[None], values[None], scale=1.0 / math.sqrt(hd), mask=mask
        )  # [1, H, T, hd]
        h = h + attn[0].transpose(1, 0, 2).reshape(T, H * hd) @ w["wo"]
        gate_up = mx.fast.rms_norm(h, w["ffn_norm"], self.eps) @ w["w_gate_up"]
        F = gate_up.shape[1] // 2
        gate, up = gate_up[:, :F], gate_up[:, F:]
        return h + (gate * mx.sigmoid(gate) * up) @ w["w_down"]


class MlxEngine:
    name = "mlx"

    def __init__(self) -> None:
        require_module("mlx.core", "mlx")

    def load_shard(self, model: ModelFiles, start: int, end: int) -> MlxShardRunner:
        return MlxShardRunner(model.args, start, end, model.shard_weights(start, end))
