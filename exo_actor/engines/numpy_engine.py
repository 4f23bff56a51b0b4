"""The numpy engine: the exact reference implementation (float32, BLAS).

It holds every weight as float32 (a 4-bit GGUF takes ~5.5x its file size in memory); with `--quantize
q4|q8` it computes in float32 on the quantized-then-dequantized weights, the reference for the torch
engine's products on the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ExoError
from ..models.kv_cache import KVCache
from ..models.llama import LlamaShard
from ..weights import ModelFiles
from .base import Pass, RequestCaches, check_pass


class NumpyShardRunner(RequestCaches):
    """A LlamaShard plus per-request KV caches."""

    def __init__(self, shard: LlamaShard) -> None:
        self.shard = shard
        self.start, self.end = shard.start, shard.end
        self.is_first, self.is_last = shard.is_first, shard.is_last
        self.caches: dict[str, KVCache] = {}

    @property
    def weight_bytes(self) -> int:
        return self.shard.w.nbytes

    def forward(self, request_id: str, x: np.ndarray, start_pos: int, num_logits: int = 1) -> np.ndarray:
        return self.shard.forward(x, self._cache(request_id, start_pos, len(x)), start_pos, num_logits)

    def forward_batch(self, passes: Sequence[Pass]) -> list[np.ndarray | Exception]:
        """Single-token decode steps run as one batched pass over the weights; longer passes (prompt
        chunks, speculative verification) one by one."""
        out: list[np.ndarray | Exception] = [ExoError("not run")] * len(passes)
        rows: list[int] = []
        caches: list[KVCache] = []
        batched_ids: set[str] = set()
        for i, p in enumerate(passes):
            try:
                cache = self._cache(p.request_id, p.start_pos, len(p.tokens))
                if len(p.tokens) == 1 and p.num_logits == 1 and p.request_id not in batched_ids:
                    rows.append(i)
                    caches.append(cache)
                    batched_ids.add(p.request_id)
                else:
                    out[i] = self.shard.forward(p.tokens, cache, p.start_pos, p.num_logits)
            except ExoError as exc:
                out[i] = exc
        if len(rows) == 1:
            p = passes[rows[0]]
            out[rows[0]] = self.shard.forward(p.tokens, caches[0], p.start_pos)
        elif rows:
            x = np.concatenate([passes[i].tokens for i in rows])
            batched = self.shard.forward_rows(x, caches, [passes[i].start_pos for i in rows])
            for k, i in enumerate(rows):
                out[i] = batched[k : k + 1]
        return out

    def _cache(self, request_id: str, start_pos: int, n: int) -> KVCache:
        cache = self.caches.get(request_id)
        if cache is None:
            cache = self.caches[request_id] = self.shard.new_cache()
        check_pass(request_id, cache.length, start_pos, start_pos + n, cache.max_positions)
        return cache


class NumpyEngine:
    """float32 numpy; matrix products on OpenBLAS, which uses the process's threads."""

    name = "numpy"

    def __init__(self, quantize: str | None = None) -> None:
        self.quantize = quantize

    def load_shard(self, model: ModelFiles, start: int, end: int) -> NumpyShardRunner:
        return NumpyShardRunner(LlamaShard(model.args, start, end, model.shard_weights(start, end, self.quantize)))
