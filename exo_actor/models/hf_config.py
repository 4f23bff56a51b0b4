"""ModelArgs from a Hugging Face config.json: each family's keys, its defaults and what is refused."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import UnsupportedModelError
from .config import FULL, SLIDING, SLIDING_PATTERNS, ModelArgs, sliding_pattern

# config.json model_type -> architecture
_HF_MODEL_TYPES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "mistral": "mistral",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "olmo2": "olmo2",
    "qwen3_moe": "qwen3moe",
    "mixtral": "mixtral",
    "phi3": "phi3",
}
_HF_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


def args_from_hf(cls: type[ModelArgs], cfg: dict[str, Any]) -> ModelArgs:
    """ModelArgs from a Hugging Face config.json dict; unknown keys are kept in `extra`."""
    model_type = cfg.get("model_type", "")
    if model_type == "gemma3" and isinstance(cfg.get("text_config"), dict):  # Gemma 3 4B+: its text model
        cfg = {**_GEMMA3_TEXT_DEFAULTS, **cfg["text_config"], "model_type": "gemma3_text"}
        model_type = "gemma3_text"
    arch = _HF_MODEL_TYPES.get(model_type)
    if arch is None:
        raise UnsupportedModelError(
            f"config.json model_type {model_type!r} is not supported (supported: {', '.join(_HF_MODEL_TYPES)})"
        )
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in cfg.items() if k in names and k != "extra"}
    kwargs["architecture"] = arch
    rope = cfg.get("rope_parameters")  # transformers >= 5 nests theta and scaling here
    if isinstance(rope, dict):
        kwargs.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default":
            kwargs.setdefault("rope_scaling", rope)
    kwargs.setdefault("num_key_value_heads", cfg.get("num_attention_heads"))
    if arch == "qwen2":
        kwargs["attention_bias"] = True
    elif cfg.get("attention_bias") or cfg.get("mlp_bias"):  # Llama's and Qwen3's flags also bias o_proj
        raise UnsupportedModelError(f"a {model_type} model with attention_bias or mlp_bias is not supported")
    if cfg.get("use_sliding_window"):
        raise UnsupportedModelError(f"sliding-window attention ({model_type}) is not supported yet")
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"
    if act not in _HF_ACTIVATIONS:
        supported = ", ".join(_HF_ACTIVATIONS)
        raise UnsupportedModelError(f"a {model_type} model with activation {act!r} is not supported ({supported})")
    kwargs["hidden_act"] = _HF_ACTIVATIONS[act]
    kwargs.update(_window_fields(arch, cfg))
    if arch == "mixtral":  # Mixtral's names for the expert counts; it always renormalizes
        kwargs.update(num_experts=cfg.get("num_local_experts", 0), norm_topk_prob=True)
    if arch == "phi3":
        kwargs.update(_phi3_fields(cfg))
    if cfg.get("mlp_only_layers") is not None:
        kwargs["mlp_only_layers"] = tuple(cfg["mlp_only_layers"])
    if arch == "gemma3":
        kwargs.update(_gemma3_rope(cfg))
    try:
        return cls(**kwargs, extra={k: v for k, v in cfg.items() if k not in names})
    except TypeError as exc:  # a required key is missing
        raise UnsupportedModelError(f"config.json is incomplete: {exc}") from None


# Gemma3TextConfig's defaults, which the text_config of a multimodal Gemma 3 checkpoint leaves out
_GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "tie_word_embeddings": True,
}


def _window_fields(arch: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """sliding_window and layer_types of a config.json: Mistral slides in every layer, Gemma in a pattern;
    other families ignore a window they do not use (Qwen's sliding_window without use_sliding_window)."""
    window = cfg.get("sliding_window")
    if arch not in ("mistral", "mixtral", "gemma2", "gemma3", "phi3") or window is None:
        return {"sliding_window": None, "layer_types": None}
    types = cfg.get("layer_types")
    if types is None and arch in SLIDING_PATTERNS:
        every = cfg.get("sliding_window_pattern")
        every = SLIDING_PATTERNS[arch] if every is None else every
        if not isinstance(every, int) or isinstance(every, bool) or every <= 0:
            raise UnsupportedModelError(f"the model's sliding_window_pattern must be a positive integer, got {every!r}")
        types = sliding_pattern(int(cfg.get("num_hidden_layers") or 0), every)
    if cfg.get("use_bidirectional_attention"):
        raise UnsupportedModelError(f"a {arch} model with bidirectional attention (an encoder) is not supported")
    return {"sliding_window": window, "layer_types": None if types is None else tuple(types)}


def _phi3_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """Phi-3's RoPE: partial rotation is refused; LongRoPE's original context sits beside rope_scaling."""
    rope = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else cfg.get("rope_scaling")
    partial = cfg.get("partial_rotary_factor", (rope or {}).get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise UnsupportedModelError(f"a phi3 model with partial_rotary_factor {partial} is not supported")
    if not rope or rope.get("rope_type", rope.get("type", "default")) == "default":
        return {}
    return {"rope_scaling": {"original_max_position_embeddings": cfg.get("original_max_position_embeddings"), **rope}}


def _gemma3_rope(cfg: dict[str, Any]) -> dict[str, Any]:
    """Gemma 3's two RoPE bases: full layers rope_theta (+ rope_scaling), sliding layers rope_local_base_freq;
    transformers >= 5 nests both in rope_parameters by layer type."""
    out: dict[str, Any] = {"rope_local_theta": cfg.get("rope_local_base_freq", 10000.0)}
    nested = cfg.get("rope_parameters")
    if isinstance(nested, dict) and isinstance(nested.get(FULL), dict):
        full, local = nested[FULL], nested.get(SLIDING) or {}
        out["rope_theta"] = full.get("rope_theta", 1_000_000.0)
        out["rope_scaling"] = full if full.get("rope_type", "default") != "default" else None
        out["rope_local_theta"] = local.get("rope_theta", out["rope_local_theta"])
    else:
        out["rope_theta"] = cfg.get("rope_theta", 1_000_000.0)
    return out
