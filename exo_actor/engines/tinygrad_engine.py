"""The tinygrad engine: the same Llama shard on tinygrad (CUDA/Metal/OpenCL where present; on a CPU,
its C backend, which needs clang).

tinygrad compiles a kernel per distinct shape, so this engine keeps every shape fixed while a request
decodes: each request's KV cache has a fixed capacity (grown in steps of 256 positions), new keys are
placed into it by a one-hot placement product and attention covers the whole capacity under a mask.
Positions therefore travel as data, never as shapes: decode steps reuse the same compiled kernels,
and the TinyJit replays them without Python scheduling.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..models.config import ModelArgs
from ..models.llama import ShardWeights
from ..models.rope import inv_frequencies, rope_tables
from ..weights import ModelFiles
from .base import HIDDEN_STATES, RequestCaches, check_features, check_pass, layer_tensors, require_module
from .tinygrad_thread import on_tinygrad_thread

_GROW = 256


class _Cache:
    def __init__(self) -> None:
        self.k: list[Any] = []
        self.v: list[Any] = []
        self.length = self.capacity = 0

    def clone(self) -> _Cache:
        other = _Cache()
        other.k = [k.clone().realize() for k in self.k]  # own buffers: the layers assign() into them
        other.v = [v.clone().realize() for v in self.v]
        other.length, other.capacity = self.length, self.capacity
        return other


class TinygradShardRunner(RequestCaches):
    """Layers [start, end) on tinygrad, with one fixed-capacity KV cache per request."""

    def __init__(self, args: ModelArgs, start: int, end: int, weights: ShardWeights) -> None:
        from tinygrad import Tensor

        self.T_, self.args = Tensor, args
        self.start, self.end = start, end
        self.is_first, self.is_last = start == 0, end == args.num_hidden_layers

        def arr(a: np.ndarray | None) -> Any:
            return None if a is None else Tensor(np.ascontiguousarray(a, dtype=np.float32)).realize()

        self.layers = layer_tensors(weights, arr)
        for d, lw in zip(self.layers, weights.layers):  # q/k head norms (Qwen3), None elsewhere
            d["q_norm"], d["k_norm"] = arr(lw.q_norm), arr(lw.k_norm)
        embed = weights.embed
        if self.is_first and embed is None:  # tied: the head's columns are the embedding
            if weights.lm_head_t is None:
                raise ValueError("the first shard needs the token embedding")
            embed = np.ascontiguousarray(weights.lm_head_t.T)
        self.embed_np = None if embed is None else np.ascontiguousarray(embed, dtype=np.float32)
        self.final_norm, self.lm_head_t = arr(weights.final_norm), arr(weights.lm_head_t)
        self._bytes = weights.nbytes
        self.H, self.KV, self.hd = args.num_attention_heads, args.num_key_value_heads, args.dim_head
        self.eps = args.rms_norm_eps
        self.inv_freq = inv_frequencies(self.hd, args.rope_theta, args.rope_scaling, args.rope_freq_factors)
        self.caches: dict[str, _Cache] = {}
        self._jits: dict[int, Any] = {}  # capacity -> the compiled decode step

    @property
    def weight_bytes(self) -> int:
        return self._bytes

    def _reserve(self, cache: _Cache, end: int) -> None:
        if end <= cache.capacity:
            return
        Tensor = self.T_
        cap = min(self.args.max_position_embeddings, -(-max(end, 2 * cache.capacity) // _GROW) * _GROW)
        grow = cap - cache.capacity
        zeros = lambda: Tensor.zeros(self.KV, grow, self.hd).contiguous()  # noqa: E731
        if not cache.k:
            cache.k = [zeros().realize() for _ in self.layers]
            cache.v = [zeros().realize() for _ in self.layers]
        else:
            cache.k = [k.cat(zeros(), dim=1).realize() for k in cache.k]
            cache.v = [v.cat(zeros(), dim=1).realize() for v in cache.v]
        cache.capacity = cap

    def forward(self, request_id: str, x: np.ndarray, start_pos: int, num_logits: int = 1) -> np.ndarray:
        return on_tinygrad_thread(self._forward, request_id, x, start_pos, num_logits)

    def fork(self, source: str, request_id: str, length: int) -> int:
        return on_tinygrad_thread(super().fork, source, request_id, length)  # tinygrad's buffers live there

    def _forward(self, request_id: str, x: np.ndarray, start_pos: int, num_logits: int) -> np.ndarray:
        Tensor = self.T_
        cache = self.caches.get(request_id)
        if cache is None:
            cache = self.caches[request_id] = _Cache()
        T = len(x)
        end = start_pos + T
        check_pass(request_id, cache.length, start_pos, end, self.args.max_position_embeddings)
        self._reserve(cache, end)
        C = cache.capacity
        if self.is_first:
            assert self.embed_np is not None
            h = Tensor(self.embed_np[np.asarray(x, dtype=np.int64)])
        else:
            h = Tensor(np.ascontiguousarray(x, dtype=np.float32))
        cos, sin = (Tensor(t) for t in rope_tables(self.inv_freq, np.arange(start_pos, end)))
        # positions as data: a [C, T] placement of the new keys, a [C] keep-mask, a [T, C] attention mask
        place = np.zeros((C, T), np.float32)
        place[start_pos + np.arange(T), np.arange(T)] = 1.0
        keep = (np.arange(C) < start_pos).astype(np.float32)[:, None]
        allowed = np.arange(C)[None, :] <= (start_pos + np.arange(T))[:, None]
        masks = (Tensor(place), Tensor(keep), Tensor(np.where(allowed, 0.0, -np.inf).astype(np.float32)))
        if T == 1 and num_logits == 1:  # decode: replay the compiled step for this capacity
            jit = self._jits.get(C)
            if jit is None:
                from tinygrad import TinyJit

                jit = self._jits[C] = TinyJit(self._step)
            out = jit(h.realize(), cos.realize(), sin.realize(), *(m.realize() for m in masks), *cache.k, *cache.v)
        else:
            out = self._step(h, cos, sin, *masks, *cache.k, *cache.v, num_logits=num_logits)
        cache.length = end
        return out.numpy().astype(np.float32, copy=False)

    def _step(self, h: Any, cos: Any, sin: Any, place: Any, keep: Any, mask: Any, *kv: Any, num_logits: int = 1) -> Any:
        n = len(self.layers)
        for i, w in enumerate(self.layers):
            h = self._layer(h, w, kv[i], kv[n + i], cos, sin, (place, keep, mask))
        if self.is_last and num_logits == HIDDEN_STATES:
            h = _rms_norm(h, self.final_norm, self.eps)
        elif self.is_last:
            h = _rms_norm(h[h.shape[0] - num_logits :], self.final_norm, self.eps) @ self.lm_head_t
        return h.realize()

    def _rope(self, x: Any, cos: Any, sin: Any) -> Any:
        half = self.hd // 2
        rotated = (-x[..., half:]).cat(x[..., :half], dim=-1)
        return x * cos + rotated * sin

    def _layer(self, h: Any, w: dict[str, Any], k_cache: Any, v_cache: Any, cos: Any, sin: Any, masks: tuple) -> Any:
        place, keep, mask = masks
        T, H, KV, hd = h.shape[0], self.H, self.KV, self.hd
        qkv = _rms_norm(h, w["attn_norm"], self.eps) @ w["wqkv"]
        if w["bqkv"] is not None:
            qkv = qkv + w["bqkv"]
        heads = qkv.reshape(T, H + 2 * KV, hd).permute(1, 0, 2)  # [H + 2KV, T, hd]
        q, k = heads[:H], heads[H : H + KV]
        if w["q_norm"] is not None:  # each q and k head RMS-normalized over hd before RoPE (Qwen3)
            q, k = _rms_norm(q, w["q_norm"], self.eps), _rms_norm(k, w["k_norm"], self.eps)
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        v = heads[H + KV :]
        k_cache.assign(k_cache * keep + place @ k).realize()  # [KV, C, hd]: old positions kept, new placed
        v_cache.assign(v_cache * keep + place @ v).realize()
        G = H // KV
        qg = q.reshape(KV, G * T, hd)
        scores = (qg @ k_cache.permute(0, 2, 1)) * (1.0 / math.sqrt(hd))  # [KV, G*T, C]
        scores = scores.reshape(KV, G, T, -1) + mask
        attn = scores.softmax(-1).reshape(KV, G * T, -1) @ v_cache  # [KV, G*T, hd]
        attn = attn.reshape(H, T, hd).permute(1, 0, 2).reshape(T, H * hd)
        h = h + attn @ w["wo"]
        gate_up = _rms_norm(h, w["ffn_norm"], self.eps) @ w["w_gate_up"]
        F = gate_up.shape[1] // 2
        gate, up = gate_up[:, :F], gate_up[:, F:]
        return (h + (gate * gate.sigmoid() * up) @ w["w_down"]).realize()


def _rms_norm(x: Any, weight: Any, eps: float) -> Any:
    return x * (x.square().mean(-1, keepdim=True) + eps).rsqrt() * weight


class TinygradEngine:
    name = "tinygrad"

    def __init__(self, quantize: str | None = None) -> None:
        self.quantize = quantize
        require_module("tinygrad", "tinygrad")
        from . import check_tinygrad_compiler

        check_tinygrad_compiler()

    def load_shard(self, model: ModelFiles, start: int, end: int) -> TinygradShardRunner:
        check_features(self.name, model.args)
        weights = model.shard_weights(start, end, self.quantize)  # float32: dequantized at load
        return on_tinygrad_thread(TinygradShardRunner, model.args, start, end, weights)
