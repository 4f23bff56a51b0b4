"""The torch engine: the fast CPU engine, running the weights as stored (4/8-bit) on torch's kernels.

Weights stay quantized in memory (torch_linear.QLinear: int4-packed planes, or dense bfloat16 for the
forms torch's kernel cannot take). The residual stream, norms, RoPE, the KV cache and attention are
float32; only the inputs and outputs of the weight products are bfloat16 (the kernels' fast path).
Activations cross the engine boundary as float32 numpy arrays, like every engine's.

Only the CPU path is tested on the project's machines; `--device cuda|mps` runs the same code with dense
bfloat16 weights (torch's GPU int4 kernels take another packing, not wired up here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ExoError
from ..models.config import ModelArgs
from ..models.rope import inv_frequencies
from ..weights import ModelFiles
from ..weights.base import ShardTensors, Weight
from ..weights.quant import QuantizedTensor, concat_rows, same_format
from .base import HIDDEN_STATES, Pass, RequestCaches, check_features, check_pass, require_module
from .torch_linear import QLinear

_GROW = 256
_REFINE = 32  # leading logits per position recomputed in float32 (see TorchShardRunner._refine)


def _fuse(parts: list[Weight], device: str) -> list[QLinear]:
    """q/k/v (or gate/up) as one product when they share a stored form, else one each."""
    if all(isinstance(p, QuantizedTensor) for p in parts) and same_format(parts):  # type: ignore[arg-type]
        return [QLinear(concat_rows(parts), device)]  # type: ignore[arg-type]
    if all(isinstance(p, np.ndarray) for p in parts):
        return [QLinear(np.concatenate(parts), device)]  # type: ignore[arg-type]
    return [QLinear(p, device) for p in parts]


def _interleave(w: Any, n_heads: int, scale: float = 1.0) -> Any:
    """Rows of a q or k projection (or its bias) from Hugging Face's half-split RoPE order to
    interleaved pairs (rows j and j + hd/2 of a head become 2j and 2j + 1), times `scale`."""
    rows = w.shape[0]
    idx = np.arange(rows).reshape(n_heads, 2, rows // n_heads // 2).swapaxes(1, 2).reshape(-1)
    if isinstance(w, QuantizedTensor):
        w = w.take_rows(idx)
        return w if scale == 1.0 else w.scaled(scale)
    return np.ascontiguousarray(w[idx]) * np.float32(scale)


class _Layer:
    """One decoder layer's torch tensors. q/k rows are interleaved for a complex-product RoPE (the
    attention scores are unchanged: q and k are permuted alike) and q carries the attention scale (in
    its q_norm weight when the layer normalizes q, Qwen3 / Gemma 3 / OLMo 2: a norm would undo a scaled
    projection)."""

    def __init__(self, t: Any, lt: Any, args: ModelArgs, device: str, index: int) -> None:
        f32 = lambda a: None if a is None else t.from_numpy(np.array(a, dtype=np.float32)).to(device)  # noqa: E731
        H, KV, hd = args.num_attention_heads, args.num_key_value_heads, args.dim_head
        scale = float(args.attn_scale)
        self.attn_norm, self.ffn_norm = f32(lt.attn_norm), f32(lt.ffn_norm)
        self.post_norms = (f32(lt.post_attn_norm), f32(lt.post_ffn_norm))
        self.qk_norm: tuple[Any, Any] | None = None
        if lt.q_norm is not None:  # the norm weights, interleaved like their rows (per head, or over all); q's scaled
            heads = (H, KV) if args.qk_norm_all else (1, 1)
            self.qk_norm = (f32(_interleave(lt.q_norm, heads[0], scale)), f32(_interleave(lt.k_norm, heads[1])))
            scale = 1.0
        self.bqkv = None
        if lt.bqkv is not None:
            bq, bk, bv = np.split(lt.bqkv, [H * hd, (H + KV) * hd])
            self.bqkv = f32(np.concatenate([_interleave(bq, H, scale), _interleave(bk, KV), bv]))
        q, k = _interleave(lt.q, H, scale), _interleave(lt.k, KV)
        self.qkv, self.o = _fuse([q, k, lt.v], device), QLinear(lt.o, device)
        self.gate_up: list[QLinear] = []
        self.down: QLinear | None = None
        self.router: Any = None
        self.experts: list[tuple[list[QLinear], QLinear]] = []
        if lt.experts is None:
            self.gate_up, self.down = _fuse([lt.gate, lt.up], device), QLinear(lt.down, device)
        else:  # a mixture of experts: each expert packed like a dense MLP, the router float32
            self.router = f32(lt.router)
            self.experts = [(_fuse([g, u], device), QLinear(d, device)) for g, u, d in lt.experts]
        self._build(args, index)

    @classmethod
    def from_state(cls, state: dict[str, Any], args: ModelArgs, device: str, index: int) -> _Layer:
        """A layer rebuilt from state() (the packed-weights cache) without packing."""
        self = cls.__new__(cls)
        self.attn_norm, self.ffn_norm, self.bqkv = state["attn_norm"], state["ffn_norm"], state["bqkv"]
        self.qk_norm = state.get("qk_norm")
        self.post_norms = state.get("post_norms", (None, None))
        self.qkv = [QLinear.from_state(s, device) for s in state["qkv"]]
        self.gate_up = [QLinear.from_state(s, device) for s in state["gate_up"]]
        self.o = QLinear.from_state(state["o"], device)
        self.down = None if state["down"] is None else QLinear.from_state(state["down"], device)
        self.router = state.get("router")
        self.experts = [
            ([QLinear.from_state(g, device) for g in gate_up], QLinear.from_state(down, device))
            for gate_up, down in state.get("experts", [])
        ]
        self._build(args, index)
        return self

    def state(self) -> dict[str, Any]:
        return {
            "attn_norm": self.attn_norm,
            "ffn_norm": self.ffn_norm,
            "bqkv": self.bqkv,
            "qk_norm": self.qk_norm,
            "post_norms": self.post_norms,
            "qkv": [p.state() for p in self.qkv],
            "o": self.o.state(),
            "gate_up": [p.state() for p in self.gate_up],
            "down": None if self.down is None else self.down.state(),
            "router": self.router,
            "experts": [([g.state() for g in gate_up], down.state()) for gate_up, down in self.experts],
        }

    def _build(self, args: ModelArgs, index: int) -> None:
        from . import torch_model  # imports torch: only once the engine is chosen

        linears = [*self.qkv, self.o, *self.gate_up, *([] if self.down is None else [self.down])]
        linears += [l for gate_up, down in self.experts for l in (*gate_up, down)]
        vectors = [self.attn_norm, self.ffn_norm, *(self.qk_norm or ()), *self.post_norms, self.bqkv, self.router]
        vectors = [v for v in vectors if v is not None]
        window = args.layer_window(index) or 0
        family = torch_model.Family(
            post_norms=self.post_norms,
            qk_norm_all=args.qk_norm_all,
            window=window,
            cap=float(args.attn_logit_softcapping or 0.0),
            gelu=args.hidden_act == "gelu_tanh",
            local_rope=args.rope_local_theta is not None and window > 0,
        )
        self.nbytes = sum(l.nbytes for l in linears) + sum(v.numel() * 4 for v in vectors)
        shape = (args.num_attention_heads, args.num_key_value_heads, args.dim_head, float(args.rms_norm_eps))
        moe = None
        if self.experts:
            gelu = args.hidden_act == "gelu_tanh"
            experts = [
                torch_model.Expert(torch_model.Fused([g.module() for g in gu]), d.module(), gelu)
                for gu, d in self.experts
            ]
            moe = torch_model.Experts(self.router, experts, args.num_experts_per_tok, args.norm_topk_prob)
        self.module = torch_model.Layer(
            (self.attn_norm, self.ffn_norm),
            self.bqkv,
            torch_model.Fused([p.module() for p in self.qkv]),
            self.o.module(),
            torch_model.Fused([p.module() for p in self.gate_up]) if moe is None else torch_model.placeholder_fused(),
            self.down.module() if self.down is not None else torch_model.placeholder_linear(),
            shape,
            self.qk_norm,
            family,
            moe,
        )


class _Cache:
    """One request's keys and values for a shard's layers: [n_layers, KV, capacity, hd] float32."""

    def __init__(self) -> None:
        self.k: Any = None
        self.v: Any = None
        self.length = self.capacity = 0

    def clone(self) -> _Cache:
        other = _Cache()
        other.k = None if self.k is None else self.k.clone()
        other.v = None if self.v is None else self.v.clone()
        other.length, other.capacity = self.length, self.capacity
        return other


class TorchShardRunner(RequestCaches):
    """Layers [start, end) on torch with quantized weights, one KV cache per request."""

    def __init__(
        self,
        args: ModelArgs,
        start: int,
        end: int,
        tensors: ShardTensors,
        device: str = "cpu",
        packed: dict[str, Any] | None = None,
    ) -> None:
        """`packed`: a state() from the packed-weights cache (then `tensors` needs only the tables)."""
        import torch

        self.t, self.args, self.device = torch, args, device
        self.start, self.end = start, end
        self.is_first, self.is_last = start == 0, end == args.num_hidden_layers
        self.H, self.KV, self.hd = args.num_attention_heads, args.num_key_value_heads, args.dim_head
        self.eps = float(args.rms_norm_eps)
        if packed is not None:
            layers = [_Layer.from_state(s, args, device, start + j) for j, s in enumerate(packed["layers"])]
        else:
            layers = [_Layer(torch, lt, args, device, start + j) for j, lt in enumerate(tensors.layers)]
        self._layers = layers
        self.layers_count = len(layers)
        from . import torch_model

        self.row_attention = torch_model.ROW_ATTENTION
        self.model = torch_model.script(torch_model.Shard([l.module for l in layers], self.eps))
        self.embed_table = tensors.embed_rows  # looked up on the host (numpy), rows dequantized on demand
        self.final_norm = None
        self.head: QLinear | None = None
        if self.is_last:
            assert tensors.final_norm is not None and tensors.head_rows is not None
            self.final_norm = torch.from_numpy(np.array(tensors.final_norm, dtype=np.float32)).to(device)
            if packed is not None:
                self.head = QLinear.from_state(packed["head"], device)
            else:
                assert tensors.head is not None
                self.head = QLinear(tensors.head, device)
            self.head_rows = tensors.head_rows  # as stored: leading logits are recomputed from it (_refine)
        # the head is held twice: packed for the kernel, and as stored for _refine (a tied table's stored
        # form also serves the first shard's lookups)
        self._bytes = sum(l.nbytes for l in layers) + (self.head.nbytes if self.head else 0)
        if self.embed_table is not None:
            self._bytes += int(self.embed_table.nbytes)
        if self.is_last and self.head_rows is not self.embed_table:
            self._bytes += int(self.head_rows.nbytes)
        self.inv_freq = inv_frequencies(self.hd, args.rope_theta, args.rope_scaling, args.rope_freq_factors)
        # Gemma 3's sliding layers rotate by their own base (the same table otherwise); LongRoPE scales cos/sin
        local = args.rope_local_theta
        self.local_inv_freq = self.inv_freq if local is None else inv_frequencies(self.hd, local)
        self.rope_scale = args.rope_attention_factor or 1.0
        self.embed_scale = None if args.embed_scale is None else np.float32(args.embed_scale)
        self.final_cap = None if args.final_logit_softcapping is None else np.float32(args.final_logit_softcapping)
        self._freqs_table: Any = None
        self._local_table: Any = None
        self._rope_len = 0
        self.caches: dict[str, _Cache] = {}

    @property
    def weight_bytes(self) -> int:
        return self._bytes

    def packed_state(self) -> dict[str, Any]:
        """The packed weights, for the cache (torch_cache)."""
        return {"layers": [l.state() for l in self._layers], "head": self.head.state() if self.head else None}

    # --- inputs ------------------------------------------------------------------------------------
    def _embed(self, tokens: np.ndarray) -> Any:
        assert self.embed_table is not None
        rows = self.embed_table.rows_float(np.asarray(tokens, dtype=np.int64))
        if self.embed_scale is not None:  # Gemma: sqrt(hidden_size), in float32 as the reference
            rows = rows * self.embed_scale
        return self.t.from_numpy(np.ascontiguousarray(rows)).to(self.device)

    def _input(self, x: np.ndarray) -> Any:
        if self.is_first:
            return self._embed(x)
        return self.t.from_numpy(np.array(x, dtype=np.float32)).to(self.device)

    def _freqs(self, end: int) -> tuple[Any, Any]:
        """exp(i * position * frequency) [positions, 1, hd / 2] complex64 for positions [0, end) and on (times
        LongRoPE's factor), and the sliding layers' table (the same one unless Gemma 3)."""
        if end > self._rope_len:
            n = min(self.args.max_position_embeddings, max(end, 2 * self._rope_len, 512))

            def table(inv: np.ndarray, scale: float) -> Any:
                angles = np.arange(n, dtype=np.float64)[:, None] * inv[None, :]
                rot = (np.cos(angles) + 1j * np.sin(angles)) * scale
                return self.t.from_numpy(rot.astype(np.complex64)[:, None, :]).to(self.device)

            self._freqs_table = table(self.inv_freq, self.rope_scale)
            same = self.local_inv_freq is self.inv_freq
            self._local_table = self._freqs_table if same else table(self.local_inv_freq, 1.0)
            self._rope_len = n
        return self._freqs_table, self._local_table

    def _cache(self, request_id: str, start_pos: int, n: int) -> _Cache:
        cache = self.caches.get(request_id)
        if cache is None:
            cache = self.caches[request_id] = _Cache()
        end = start_pos + n
        check_pass(request_id, cache.length, start_pos, end, self.args.max_position_embeddings)
        if end > cache.capacity:
            cap = min(self.args.max_position_embeddings, -(-max(end, 2 * cache.capacity) // _GROW) * _GROW)
            shape = (self.layers_count, self.KV, cap, self.hd)
            k = self.t.empty(shape, dtype=self.t.float32, device=self.device)
            v = self.t.empty(shape, dtype=self.t.float32, device=self.device)
            if cache.length:
                k[:, :, : cache.length] = cache.k[:, :, : cache.length]
                v[:, :, : cache.length] = cache.v[:, :, : cache.length]
            cache.k, cache.v, cache.capacity = k, v, cap
        return cache

    # --- passes ------------------------------------------------------------------------------------
    def forward(self, request_id: str, x: np.ndarray, start_pos: int, num_logits: int = 1) -> np.ndarray:
        with self.t.inference_mode():
            cache = self._cache(request_id, start_pos, len(x))
            h = self._input(x)
            T, end = h.shape[0], start_pos + len(x)
            freqs, local = (f[start_pos:end] for f in self._freqs(end))
            mask = window_mask = None
            if T > self.row_attention:  # query t (position start_pos + t) sees keys 0 .. start_pos + t
                mask = self.t.ones(T, end, dtype=self.t.bool, device=self.device).tril(start_pos)
                w = self.args.sliding_window
                if w is not None:  # ... and in a sliding layer only keys > start_pos + t - window
                    window_mask = mask.triu(start_pos - w + 1)
            with self.t.jit.optimized_execution(False):  # see torch_model.script
                h = self.model(h, cache.k, cache.v, start_pos, freqs, mask, local, window_mask)
            cache.length = end
            if self.is_last and num_logits == HIDDEN_STATES:
                return self.model.norm32(h, self.final_norm).cpu().numpy()  # type: ignore[no-any-return]
            return self._output(h[T - num_logits :] if self.is_last else h)

    def forward_batch(self, passes: Sequence[Pass]) -> list[np.ndarray | Exception]:
        """Single-token decode steps of several requests as one pass over the weights (one product per
        weight for all rows); longer passes one by one."""
        out: list[np.ndarray | Exception] = [ExoError("not run")] * len(passes)
        rows: list[int] = []
        caches: list[_Cache] = []
        seen: set[str] = set()
        for i, p in enumerate(passes):
            try:
                if len(p.tokens) == 1 and p.num_logits == 1 and p.request_id not in seen:
                    caches.append(self._cache(p.request_id, p.start_pos, 1))
                    rows.append(i)
                    seen.add(p.request_id)
                else:
                    out[i] = self.forward(p.request_id, p.tokens, p.start_pos, p.num_logits)
            except ExoError as exc:
                out[i] = exc
        if rows:
            x = np.concatenate([np.asarray(passes[i].tokens) for i in rows])
            batched = self._forward_rows(x, caches, [passes[i].start_pos for i in rows])
            for k, i in enumerate(rows):
                out[i] = batched[k : k + 1]
        return out

    def _forward_rows(self, x: np.ndarray, caches: list[_Cache], positions: list[int]) -> np.ndarray:
        """Row b is one request's decode step at positions[b] over caches[b]: the weight products run
        over all rows at once, attention per row over its own cache."""
        t = self.t
        with t.inference_mode():
            h = self._input(x)
            at = t.tensor(positions, device=self.device)
            freqs, local = (f[at] for f in self._freqs(max(positions) + 1))
            with t.jit.optimized_execution(False):  # see torch_model.script
                ks, vs = [c.k for c in caches], [c.v for c in caches]
                h = self.model.forward_rows(h, ks, vs, positions, freqs, local)
            for cache, p in zip(caches, positions):
                cache.length = p + 1
            return self._output(h)

    def _output(self, h: Any) -> np.ndarray:
        if not self.is_last:
            return h.cpu().numpy()
        assert self.head is not None
        hn = self.model.norm32(h, self.final_norm)
        logits = self.head(hn.to(self.t.bfloat16)).float().cpu().numpy()
        k = min(_REFINE, logits.shape[-1])
        top = np.argpartition(logits, -k, axis=-1)[:, -k:]  # ~60 us for 49k logits (torch.topk: ~350 us)
        logits = self._refine(logits, hn.cpu().numpy(), top)
        if self.final_cap is not None:  # Gemma 2: cap * tanh(logits / cap), as the numpy reference
            logits /= self.final_cap
            np.tanh(logits, out=logits)
            logits *= self.final_cap
        return logits

    def _refine(self, logits: np.ndarray, hn: np.ndarray, top: np.ndarray) -> np.ndarray:
        """Recompute each row's leading logits (`top`: the kernel's _REFINE best) in float32 from the
        stored head rows.

        The kernel returns bfloat16 logits, whose spacing at a logit of 32 is 0.25: near-ties between the
        top tokens would be decided by rounding (measured on SmolLM2 without this step: the same top-1 as
        float32 numpy at 97.4% of positions; with it 99.2%). The rows are few bytes to read (~0.1 ms a
        token). (A 4-bit copy of a Q8_0 head would read half the bytes, but its tail moved SmolLM2's
        perplexity by 1.5%: the head stays exact.)
        """
        rows = self.head_rows.rows_float(top.ravel())
        exact = np.einsum("rkd,rd->rk", rows.reshape(*top.shape, -1), hn, dtype=np.float32)
        np.put_along_axis(logits, top, exact, axis=-1)
        return logits


class TorchEngine:
    """4/8-bit weights on torch's CPU kernels (`pip install 'exo-actor[torch]'`)."""

    name = "torch"

    def __init__(self, device: str = "cpu", quantize: str | None = None) -> None:
        require_module("torch", "torch")
        self.device, self.quantize = device, quantize
        from . import thread_limit

        if (threads := thread_limit()) is not None:  # several shards share this machine's cores
            import torch

            torch.set_num_threads(threads)

    def load_shard(self, model: ModelFiles, start: int, end: int) -> TorchShardRunner:
        check_features(self.name, model.args)
        from . import torch_cache

        layers = model.args.num_hidden_layers  # a draft cut to K layers holds the head after layer K
        where = torch_cache.cache_path(model.path, start, end, layers, self.quantize, self.device)
        packed = torch_cache.load(where)
        big = where is not None and model.path.stat().st_size >= torch_cache.CHILD_MIN_BYTES
        if packed is None and big and self.device == "cpu":
            from . import thread_limit

            if torch_cache.pack_in_child(model.path, start, end, layers, self.quantize, thread_limit()):
                packed = torch_cache.load(where)
        if packed is not None:  # only the tables are read from the model; the layers come packed
            tables = model.shard_tensors(start, end, self.quantize, layers=False)
            return TorchShardRunner(model.args, start, end, tables, self.device, packed)
        runner = TorchShardRunner(model.args, start, end, model.shard_tensors(start, end, self.quantize), self.device)
        torch_cache.save(where, runner.packed_state())
        packed = torch_cache.load(where)
        if packed is None:  # not cached (a float checkpoint, or the cache could not be written)
            return runner
        # run from the file just written, like every later start: its pages are the page cache's (shared,
        # reclaimable), and the packing's own copies (~the model's size) are freed
        del runner
        tables = model.shard_tensors(start, end, self.quantize, layers=False)
        return TorchShardRunner(model.args, start, end, tables, self.device, packed)
