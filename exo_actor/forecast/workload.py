"""A model's cost per layer for the forecast: from its files when they are here, else from the shape the
registry records (configs/models.toml), at a chosen precision."""

from __future__ import annotations

from typing import Any

from ..errors import ExoError
from ..models.config import ModelArgs
from ..storage.registry import load_registry, local_path, resolve_model
from ..weights import open_model, sizes
from .cost import ForecastError, Workload

# --quant -> the stored kind the registry's shapes are priced as (weights/sizes.py's table)
QUANTS = {"q4": "Q4_0", "q8": "Q8_0", "f16": "F16"}
ENGINE = "torch"  # the engine whose memory the forecast counts (the quantized CPU engine; MLX is close)


def workload(model: str, quant: str = "q4") -> Workload:
    """The Workload of a registry model (its files if present, else its recorded shape at `quant`) or of a
    model path."""
    if quant not in QUANTS:
        raise ForecastError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    entry = load_registry().get(model)
    if entry is not None and local_path(entry) is None:
        if entry.shape is None:
            raise ForecastError(f"{model}: the registry records no shape for it and its files are not here")
        shape: dict[str, Any] = dict(entry.shape)
        try:
            args = ModelArgs(entry.architecture, num_hidden_layers=entry.layers, **shape)
        except (TypeError, ExoError) as exc:
            raise ForecastError(f"{model}: the registry's shape is not a model's: {exc}") from None
        kind = QUANTS[quant]
        return _work(model, args, lambda name: (kind, 0), None)
    try:  # a local model (registry name or path): priced as its files store it
        files = open_model(resolve_model(model))
    except ExoError as exc:
        raise ForecastError(str(exc)) from None
    return _work(model, files.args, files.kinds, None)


def _work(name: str, args: ModelArgs, kinds: sizes.Kinds, quantize: str | None) -> Workload:
    n, D, V = args.num_hidden_layers, args.hidden_size, args.vocab_size
    layer = sizes.layer_bytes(args, kinds, ENGINE, quantize)
    head = sizes.shard_bytes(args, kinds, n - 1, n, ENGINE, quantize) - sizes.shard_bytes(
        args, kinds, n - 1, n - 1, ENGINE, quantize
    )
    hd = args.dim_head
    params = D * hd * (2 * args.num_attention_heads + 2 * args.num_key_value_heads) + 3 * D * args.intermediate_size
    return Workload(name, n, layer, 2 * params, max(0, head - layer), 2 * V * D, 4 * D)
