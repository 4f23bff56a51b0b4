"""The engine protocol: what every engine (torch, numpy, MLX, tinygrad) offers the actors."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import ContextLengthError, ExoError, UnsupportedModelError
from ..models.config import FEATURE_NAMES, ModelArgs
from ..models.llama import HIDDEN_STATES as HIDDEN_STATES  # re-exported: the engines' side of it
from ..models.llama import ShardWeights
from ..weights import ModelFiles

if TYPE_CHECKING:
    from ..sampling.decide import Sample


class EngineUnavailableError(ExoError):
    """An engine whose package is not installed (or cannot run on this machine)."""


class CachePositionError(ExoError, ValueError):
    """A pass that starts past the positions its request's KV cache holds."""


def require_module(module: str, extra: str) -> None:
    """Import `module` or raise one clear error naming the extra that installs it."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise EngineUnavailableError(
            f"the {extra} engine needs the `{module.split('.')[0]}` package: pip install 'exo-actor[{extra}]' ({exc})"
        ) from None


@dataclass(frozen=True, eq=False)
class Pass:
    """One forward pass a request needs: token ids at positions [start_pos, start_pos + len(tokens)),
    answered with the logits [num_logits, V] of the last positions. A pass that yields tokens carries
    their Sample: a pipeline may answer it with the Decision instead (made where the logits are).
    num_logits == HIDDEN_STATES (0) asks instead for the final-normed hidden states [T, D] of every
    position (embeddings); such a pass carries no Sample and is never split (runtime/batching.py)."""

    request_id: str
    tokens: np.ndarray
    start_pos: int
    num_logits: int = 1
    sample: Sample | None = None


class ShardRunner(Protocol):
    """Layers [start, end) of a model on one engine, with one KV cache per request."""

    start: int
    end: int
    is_first: bool
    is_last: bool

    def forward(self, request_id: str, x: np.ndarray, start_pos: int, num_logits: int = 1) -> np.ndarray:
        """Positions [start_pos, start_pos + T) of a request.

        x: token ids [T] on the first shard, float32 hidden states [T, D] elsewhere. Returns float32
        hidden states [T, D], or on the last shard logits [num_logits, V] for the last positions
        (num_logits == HIDDEN_STATES: the final-normed hidden states [T, D] of every position).
        Writing at start_pos below the cached length rolls the request's cache back to start_pos.
        """
        ...

    def forward_batch(self, passes: Sequence[Pass]) -> list[np.ndarray | Exception]:
        """Several requests' passes (tokens: ids on the first shard, hidden states elsewhere); one
        result per pass, or the ExoError that ended that request alone. Engines that can batch run
        the single-token decode steps as one pass over the weights."""
        ...

    def cached_length(self, request_id: str) -> int:
        """Positions cached for a request (0 if unknown)."""
        ...

    def truncate(self, request_id: str, length: int) -> None:
        """Forget a request's positions >= length."""
        ...

    def free(self, request_id: str) -> None:
        """Drop a request's KV cache."""
        ...

    def adopt(self, source: str, request_id: str, length: int) -> int:
        """Move a finished request's KV cache to a new request, cut to `length` positions (the
        prefix cache); returns the positions the new request starts with (0 if `source` is unknown)."""
        ...

    def fork(self, source: str, request_id: str, length: int) -> int:
        """Copy a running request's first `length` cached positions to a new request (the other choices of
        an n > 1 request share the prompt's prefill); `source` keeps its cache. Returns the positions the
        new request starts with (0 if `source` is unknown)."""
        ...

    @property
    def weight_bytes(self) -> int: ...


class Engine(Protocol):
    name: str

    def load_shard(self, model: ModelFiles, start: int, end: int) -> ShardRunner:
        """Load layers [start, end) of a model (only those layers' weights are read)."""
        ...


# what each engine runs beyond the Llama decoder (ModelArgs.features); other models are refused in one line
ENGINE_FEATURES: dict[str, frozenset[str]] = {
    "numpy": frozenset(FEATURE_NAMES),
    "torch": frozenset(FEATURE_NAMES),
    "mlx": frozenset(FEATURE_NAMES),
    "tinygrad": frozenset({"qk_norm"}),
}


def check_features(engine: str, args: ModelArgs) -> None:
    """Refuse, in one line, a model that needs what `engine` does not run (ModelArgs.features)."""
    missing = sorted(args.features - ENGINE_FEATURES[engine])
    if missing:
        lacks = ", ".join(FEATURE_NAMES[m] for m in missing)
        raise UnsupportedModelError(
            f"the {engine} engine does not run {args.architecture} models yet (it lacks {lacks}): use --engine numpy"
        )


def check_pass(request_id: str, cached: int, start_pos: int, end: int, max_positions: int) -> None:
    """The checks every engine makes before a pass over positions [start_pos, end) of a request whose
    cache holds `cached` positions: within the context window, and not skipping past the cache."""
    if end > max_positions:
        raise ContextLengthError(f"position {end} exceeds the model's context window ({max_positions})")
    if start_pos > cached:
        raise CachePositionError(f"request {request_id}: position {start_pos} skips past cached {cached}")


class RequestCaches:
    """Per-request cache bookkeeping shared by the engines' runners: each cache object has a
    `length` (valid positions); truncation only lowers it (positions are overwritten later)."""

    caches: dict[str, Any]

    def forward_batch(self, passes: Sequence[Pass]) -> list[np.ndarray | Exception]:
        """One pass after the other (engines without a batched kernel)."""
        out: list[np.ndarray | Exception] = []
        for p in passes:
            try:
                out.append(self.forward(p.request_id, p.tokens, p.start_pos, p.num_logits))  # type: ignore[attr-defined]
            except ExoError as exc:
                out.append(exc)
        return out

    def cached_length(self, request_id: str) -> int:
        cache = self.caches.get(request_id)
        return cache.length if cache else 0

    def truncate(self, request_id: str, length: int) -> None:
        cache = self.caches.get(request_id)
        if cache is not None:
            cache.length = min(cache.length, max(0, length))

    def free(self, request_id: str) -> None:
        self.caches.pop(request_id, None)

    def adopt(self, source: str, request_id: str, length: int) -> int:
        cache = self.caches.pop(source, None)
        if cache is None:
            return 0
        cache.length = min(cache.length, max(0, length))
        self.caches[request_id] = cache
        return cache.length

    def fork(self, source: str, request_id: str, length: int) -> int:
        cache = self.caches.get(source)
        if cache is None:
            return 0
        copy = cache.clone()  # every engine's cache class has clone(): an independent copy
        copy.length = min(cache.length, max(0, length))
        self.caches[request_id] = copy
        return int(copy.length)


def layer_tensors(weights: ShardWeights, convert: Callable[[np.ndarray | None], Any]) -> list[dict[str, Any]]:
    """Each layer's weights converted to an engine's arrays, by name (None stays None)."""
    names = ("attn_norm", "wqkv", "bqkv", "wo", "ffn_norm", "w_gate_up", "w_down")
    return [{n: convert(getattr(w, n)) for n in names} for w in weights.layers]
