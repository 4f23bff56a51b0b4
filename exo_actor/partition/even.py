"""Even split of a model's layers into contiguous ranges (used by `run --shards K`)."""

from __future__ import annotations

from ..errors import InvalidRequestError


def even_ranges(n_layers: int, k: int) -> list[tuple[int, int]]:
    """k contiguous [start, end) ranges covering n_layers; sizes differ by at most one."""
    if not 1 <= k <= n_layers:
        raise InvalidRequestError(f"shards must be between 1 and the layer count ({n_layers}), got {k}")
    base, extra = divmod(n_layers, k)
    ranges, start = [], 0
    for i in range(k):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges
