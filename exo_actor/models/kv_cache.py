"""Per-request, per-shard key/value cache: growable, indexed by position, truncatable."""

from __future__ import annotations

import numpy as np

_GROW = 256  # capacity grows in multiples of this many positions


class KVCache:
    """Keys and values of one request for the layers of one shard.

    Layout per layer: [n_kv_heads, capacity, head_dim], so attention reads one contiguous
    [positions, head_dim] block per kv head. `length` is the number of valid positions; writing at
    position p < length drops everything from p on (that is how speculative rollback works: a
    request carries its start position and the cache follows).
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_positions: int) -> None:
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.max_positions = max_positions
        self.length = 0
        self.capacity = 0
        self.k: list[np.ndarray] = []
        self.v: list[np.ndarray] = []

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)

    def begin(self, start: int, n_new: int) -> None:
        """Prepare to write positions [start, start + n_new); drops positions >= start."""
        if start > self.length:
            raise ValueError(f"cache holds {self.length} positions, cannot write at {start}")
        end = start + n_new
        if end > self.max_positions:
            raise ValueError(f"position {end} exceeds the context window ({self.max_positions})")
        if end > self.capacity:
            self._grow(end)
        self.length = start  # truncation: later positions are overwritten below

    def write(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store k, v [n_kv, T, head_dim] at `start`; return views over positions [0, start+T)."""
        end = start + k.shape[1]
        self.k[layer][:, start:end] = k
        self.v[layer][:, start:end] = v
        return self.k[layer][:, :end], self.v[layer][:, :end]

    def commit(self, end: int) -> None:
        """Mark positions [0, end) valid once every layer has written them."""
        self.length = end

    def truncate(self, length: int) -> None:
        """Forget every position >= length (no memory is released)."""
        self.length = min(self.length, max(0, length))

    def clone(self) -> KVCache:
        """An independent copy of the valid positions (n choices of one prompt share its prefill)."""
        other = KVCache(self.n_layers, self.n_kv_heads, self.head_dim, self.max_positions)
        other.k = [a.copy() for a in self.k]
        other.v = [a.copy() for a in self.v]
        other.length, other.capacity = self.length, self.capacity
        return other

    def _grow(self, needed: int) -> None:
        wanted = max(needed, 2 * self.capacity)
        new_cap = min(self.max_positions, -(-wanted // _GROW) * _GROW)
        shape = (self.n_kv_heads, new_cap, self.head_dim)
        for store in (self.k, self.v):
            for i in range(self.n_layers):
                fresh = np.empty(shape, dtype=np.float32)
                if i < len(store):
                    fresh[:, : self.length] = store[i][:, : self.length]
                    store[i] = fresh
                else:
                    store.append(fresh)
        self.capacity = new_cap
