"""ModelArgs: the hyper-parameters of a Llama-family model, read from HF config.json or GGUF metadata."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
# families whose attention RMS-normalizes each q and k head (weights of size head_dim) before RoPE
QK_NORM_ARCHITECTURES = ("qwen3",)
# config.json model_type -> architecture (Mistral without a sliding window is a Llama)
_HF_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama"}
_POSITIVE_INTS = (
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
    "head_dim",
)


@dataclass(frozen=True)
class ModelArgs:
    """Hyper-parameters of a Llama-family decoder (Llama 2/3.x, SmolLM, Qwen2, Qwen3)."""

    architecture: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    head_dim: int | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projection bias (Qwen2)
    rope_freq_factors: tuple[float, ...] | None = None  # GGUF `rope_freqs` (Llama 3.x scaling)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"architecture {self.architecture!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if value is None and name == "head_dim":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UnsupportedModelError(f"the model's {name} must be a positive integer, got {value!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise UnsupportedModelError(f"the model's {name} must be a positive number, got {value!r}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise UnsupportedModelError(f"the model's rope_scaling must be an object, got {self.rope_scaling!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise UnsupportedModelError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @property
    def dim_head(self) -> int:
        assert self.head_dim is not None
        return self.head_dim

    @property
    def qk_norm(self) -> bool:
        """Whether each layer normalizes its q and k heads (q_norm, k_norm weights of size head_dim)."""
        return self.architecture in QK_NORM_ARCHITECTURES

    @property
    def layer_bytes(self) -> int:
        """float32 bytes of one decoder layer's weights."""
        d, f, kv, h = self.hidden_size, self.intermediate_size, self.num_key_value_heads, self.num_attention_heads
        hd = self.dim_head
        norms = 2 * d + (2 * hd if self.qk_norm else 0)
        return 4 * (d * (h + 2 * kv) * hd + h * hd * d + 3 * d * f + norms)

    def shard_bytes(self, start: int, end: int) -> int:
        """float32 bytes a shard of layers [start, end) holds, embedding / head included."""
        table = 4 * self.vocab_size * self.hidden_size
        first, last = start == 0, end == self.num_hidden_layers
        tables = (table if first else 0) + (table if last and not (first and self.tie_word_embeddings) else 0)
        return (end - start) * self.layer_bytes + tables

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> ModelArgs:
        """Build from a Hugging Face config.json dict; unknown keys are kept in `extra`."""
        model_type = cfg.get("model_type", "")
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
        try:
            return cls(**kwargs, extra={k: v for k, v in cfg.items() if k not in names})
        except TypeError as exc:  # a required key is missing
            raise UnsupportedModelError(f"config.json is incomplete: {exc}") from None
