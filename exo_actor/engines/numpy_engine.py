"""The numpy engine: the reference implementation and the default everywhere (float32, BLAS)."""

from __future__ import annotations

import numpy as np

from ..errors import ContextLengthError
from ..models.kv_cache import KVCache
from ..models.llama import LlamaShard
from ..weights import ModelFiles
from .base import RequestCaches


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
        cache = self.caches.get(request_id)
        if cache is None:
            cache = self.caches[request_id] = self.shard.new_cache()
        if start_pos + len(x) > cache.max_positions:
            raise ContextLengthError(
                f"position {start_pos + len(x)} exceeds the model's context window ({cache.max_positions})"
            )
        if start_pos > cache.length:
            raise ValueError(f"request {request_id}: position {start_pos} skips past cached {cache.length}")
        return self.shard.forward(x, cache, start_pos, num_logits)


class NumpyEngine:
    """float32 numpy; matrix products on OpenBLAS, which uses the process's threads."""

    name = "numpy"

    def load_shard(self, model: ModelFiles, start: int, end: int) -> NumpyShardRunner:
        return NumpyShardRunner(LlamaShard(model.args, start, end, model.shard_weights(start, end)))
