"""ModelArgs: the hyper-parameters of a decoder model, read from HF config.json or GGUF metadata.

Every family is the Llama decoder plus a few switches, so the engines ask ModelArgs about features
(`norm_layout`, `qk_norm`, `layer_window(i)`, `layer_rope(i)`, `attn_scale`, softcaps, `embed_scale`,
`hidden_act`) and never test the architecture's name. `features` names what a model needs beyond
Llama, so an engine that lacks one refuses the model in one line (engines/base.check_features).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedModelError
from .rope import resolve_longrope

SUPPORTED_ARCHITECTURES = (
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma2",
    "gemma3",
    "olmo2",
    "qwen3moe",
    "mixtral",
    "phi3",
)
# families whose attention RMS-normalizes each q and k head (weights of size head_dim) before RoPE
QK_NORM_ARCHITECTURES = ("qwen3", "gemma3", "qwen3moe")
# OLMo 2 normalizes the whole q and k projections (weights of size heads * head_dim) instead
QK_NORM_ALL_ARCHITECTURES = ("olmo2",)
# Gemma: RMSNorm weights are used as (1 + w); llama.cpp's converter stores them with the 1 added
NORM_PLUS_ONE_ARCHITECTURES = ("gemma2", "gemma3")
# where a layer's RMSNorms sit: "pre" (before attention and MLP), "sandwich" (before and after each:
# Gemma 2/3), "post" (only after each, on the sub-layer's output: OLMo 2)
_NORM_LAYOUTS = {"gemma2": "sandwich", "gemma3": "sandwich", "olmo2": "post"}

ACTIVATIONS = ("silu", "gelu_tanh")
FULL, SLIDING = "full_attention", "sliding_attention"
# (what a model needs beyond the Llama decoder, as `features` names it) -> words for error messages
FEATURE_NAMES = {
    "qk_norm": "q/k head norms",
    "qk_norm_all": "q/k projection norms",
    "sandwich_norms": "pre and post norms",
    "post_norms": "post-norms",
    "sliding_window": "sliding-window attention",
    "local_rope": "a separate RoPE base for sliding layers",
    "attn_softcap": "attention logit soft-capping",
    "final_softcap": "final logit soft-capping",
    "query_scale": "a query scale other than 1/sqrt(head_dim)",
    "embed_scale": "scaled embeddings",
    "gelu_tanh": "a GeLU-tanh MLP",
    "moe": "mixture-of-experts layers",
    "longrope": "LongRoPE scaling",
}
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
    """Hyper-parameters of a decoder (Llama 2/3.x, SmolLM, Mistral, Qwen2, Qwen3, Gemma 2/3, OLMo 2, Phi-3, and
    the mixtures of experts Qwen3-MoE and Mixtral)."""

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
    hidden_act: str = "silu"  # the MLP's gate activation: silu (SwiGLU) or gelu_tanh (GeGLU: Gemma)
    sliding_window: int | None = None  # keys a sliding layer's query sees, itself included (Mistral, Gemma)
    layer_types: tuple[str, ...] | None = None  # per layer FULL or SLIDING; None: all SLIDING if a window is set
    rope_local_theta: float | None = None  # RoPE base of the sliding layers (Gemma 3), unscaled
    query_pre_attn_scalar: float | None = None  # attention scale 1/sqrt(this) instead of 1/sqrt(head_dim)
    attn_logit_softcapping: float | None = None  # scores -> cap * tanh(scores / cap) (Gemma 2)
    final_logit_softcapping: float | None = None  # logits -> cap * tanh(logits / cap) (Gemma 2)
    # mixtures of experts (Qwen3-MoE, Mixtral): each MoE layer's MLP is num_experts SwiGLU experts of
    # moe_intermediate_size (default intermediate_size); a router picks num_experts_per_tok per token
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int | None = None
    norm_topk_prob: bool = True  # renormalize the chosen experts' softmax weights to sum to 1
    decoder_sparse_step: int = 1  # every step-th layer is an MoE layer (Qwen3-MoE)
    mlp_only_layers: tuple[int, ...] = ()  # layers that keep a dense MLP of intermediate_size
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
        if self.rope_scaling and self.rope_scaling.get("rope_type", self.rope_scaling.get("type")) in (
            "longrope",
            "su",
        ):
            try:
                resolved = resolve_longrope(self.rope_scaling, self.max_position_embeddings)
            except (KeyError, TypeError, ValueError) as exc:
                raise UnsupportedModelError(f"the model's longrope scaling is incomplete or invalid: {exc!r}") from None
            object.__setattr__(self, "rope_scaling", resolved)
        if self.num_attention_heads % self.num_key_value_heads:
            raise UnsupportedModelError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        self._check_family_fields()

    def _check_family_fields(self) -> None:
        self._check_experts()
        if self.hidden_act not in ACTIVATIONS:
            raise UnsupportedModelError(
                f"activation {self.hidden_act!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
            )
        for name in ("rope_local_theta", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
                raise UnsupportedModelError(f"the model's {name} must be a positive number, got {value!r}")
        w = self.sliding_window
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w <= 0):
            raise UnsupportedModelError(f"the model's sliding_window must be a positive integer, got {w!r}")
        if self.layer_types is not None:
            types = tuple(self.layer_types)
            if len(types) != self.num_hidden_layers or any(t not in (FULL, SLIDING) for t in types):
                raise UnsupportedModelError(
                    f"the model's layer_types must list {FULL!r} or {SLIDING!r} for each of its "
                    f"{self.num_hidden_layers} layers, got {list(types)!r}"
                )
            if SLIDING in types and w is None:
                raise UnsupportedModelError("the model has sliding-attention layers but no sliding_window")
            object.__setattr__(self, "layer_types", types)

    @property
    def dim_head(self) -> int:
        assert self.head_dim is not None
        return self.head_dim

    def _check_experts(self) -> None:
        for name in ("num_experts", "num_experts_per_tok", "decoder_sparse_step"):
            value = getattr(self, name)
            least = 1 if name == "decoder_sparse_step" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UnsupportedModelError(f"the model's {name} must be an integer >= {least}, got {value!r}")
        if self.num_experts and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise UnsupportedModelError(
                f"the model routes each token to {self.num_experts_per_tok} of its {self.num_experts} experts: "
                "num_experts_per_tok must be between 1 and num_experts"
            )
        f = self.moe_intermediate_size
        if f is not None and (isinstance(f, bool) or not isinstance(f, int) or f <= 0):
            raise UnsupportedModelError(f"the model's moe_intermediate_size must be a positive integer, got {f!r}")
        object.__setattr__(self, "mlp_only_layers", tuple(self.mlp_only_layers or ()))

    def layer_is_moe(self, i: int) -> bool:
        """Whether layer i's MLP is a mixture of experts (Qwen3-MoE's decoder_sparse_step / mlp_only_layers)."""
        return self.num_experts > 0 and i not in self.mlp_only_layers and (i + 1) % self.decoder_sparse_step == 0

    @property
    def expert_size(self) -> int:
        """The intermediate size of one expert."""
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def qk_norm(self) -> bool:
        """Whether each layer normalizes its q and k (q_norm / k_norm weights): per head, weights of size
        head_dim (Qwen3, Gemma 3), or over the whole projection (OLMo 2: `qk_norm_all`)."""
        return self.architecture in QK_NORM_ARCHITECTURES or self.qk_norm_all

    @property
    def qk_norm_all(self) -> bool:
        """q and k are RMS-normalized over all heads at once, weights [H * hd] and [KV * hd] (OLMo 2)."""
        return self.architecture in QK_NORM_ALL_ARCHITECTURES

    @property
    def qk_norm_sizes(self) -> tuple[int, int]:
        """Sizes of the q_norm and k_norm weights."""
        hd = self.dim_head
        if self.qk_norm_all:
            return self.num_attention_heads * hd, self.num_key_value_heads * hd
        return hd, hd

    @property
    def norm_layout(self) -> str:
        """ "pre", "sandwich" or "post" (see _NORM_LAYOUTS)."""
        return _NORM_LAYOUTS.get(self.architecture, "pre")

    @property
    def norm_plus_one(self) -> bool:
        """Whether the checkpoint's RMSNorm weights w act as (1 + w) (Gemma: loaders add the 1)."""
        return self.architecture in NORM_PLUS_ONE_ARCHITECTURES

    @property
    def embed_scale(self) -> float | None:
        """Factor on the token embeddings: sqrt(hidden_size) for Gemma, else None."""
        return math.sqrt(self.hidden_size) if self.architecture in NORM_PLUS_ONE_ARCHITECTURES else None

    @property
    def attn_scale(self) -> float:
        """The factor on q·k: 1/sqrt(query_pre_attn_scalar) (Gemma) or 1/sqrt(head_dim)."""
        return 1.0 / math.sqrt(self.query_pre_attn_scalar or self.dim_head)

    @property
    def rope_attention_factor(self) -> float | None:
        """LongRoPE's factor on cos / sin (Phi-3), or None for other RoPE scalings."""
        s = self.rope_scaling
        return float(s["attention_factor"]) if s and s.get("rope_type") == "longrope" else None

    def layer_window(self, i: int) -> int | None:
        """How many keys (itself included) a query of layer i sees, or None for full causal attention."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[i] == SLIDING:
            return self.sliding_window
        return None

    def layer_rope(self, i: int) -> tuple[float, dict[str, Any] | None]:
        """(RoPE base, scaling) of layer i: sliding layers of Gemma 3 use their own unscaled base."""
        if self.rope_local_theta is not None and self.layer_window(i) is not None:
            return self.rope_local_theta, None
        return self.rope_theta, self.rope_scaling

    @property
    def features(self) -> frozenset[str]:
        """What this model needs beyond the Llama decoder (keys of FEATURE_NAMES)."""
        have = {
            "qk_norm": self.qk_norm and not self.qk_norm_all,
            "qk_norm_all": self.qk_norm_all,
            "sandwich_norms": self.norm_layout == "sandwich",
            "post_norms": self.norm_layout == "post",
            "sliding_window": self.sliding_window is not None,
            "local_rope": self.rope_local_theta is not None,
            "attn_softcap": self.attn_logit_softcapping is not None,
            "final_softcap": self.final_logit_softcapping is not None,
            "query_scale": self.query_pre_attn_scalar is not None and self.query_pre_attn_scalar != self.dim_head,
            "embed_scale": self.embed_scale is not None,
            "gelu_tanh": self.hidden_act == "gelu_tanh",
            "moe": self.num_experts > 0,
            "longrope": self.rope_attention_factor is not None,
        }
        return frozenset(k for k, on in have.items() if on)

    @property
    def norm_count(self) -> int:
        """RMSNorm weight vectors of size hidden_size in each layer."""
        return {"pre": 2, "sandwich": 4, "post": 2}[self.norm_layout]

    def layer_bytes_of(self, i: int) -> int:
        """float32 bytes of decoder layer i's weights (an MoE layer: every expert and the router)."""
        d, f, kv, h = self.hidden_size, self.intermediate_size, self.num_key_value_heads, self.num_attention_heads
        hd = self.dim_head
        norms = self.norm_count * d + (sum(self.qk_norm_sizes) if self.qk_norm else 0)
        mlp = self.num_experts * (3 * d * self.expert_size + d) if self.layer_is_moe(i) else 3 * d * f
        return 4 * (d * (h + 2 * kv) * hd + h * hd * d + mlp + norms)

    @property
    def layer_bytes(self) -> int:
        """float32 bytes of one decoder layer's weights (the mean, rounded up, when layers differ)."""
        n = self.num_hidden_layers
        if not self.num_experts:
            return self.layer_bytes_of(0)
        return -(-sum(self.layer_bytes_of(i) for i in range(n)) // n)

    def shard_bytes(self, start: int, end: int) -> int:
        """float32 bytes a shard of layers [start, end) holds, embedding / head included."""
        table = 4 * self.vocab_size * self.hidden_size
        first, last = start == 0, end == self.num_hidden_layers
        tables = (table if first else 0) + (table if last and not (first and self.tie_word_embeddings) else 0)
        return sum(self.layer_bytes_of(i) for i in range(start, end)) + tables

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> ModelArgs:
        """Build from a Hugging Face config.json dict (models/hf_config.py); unknown keys are kept in `extra`."""
        from .hf_config import args_from_hf

        return args_from_hf(cls, cfg)


# Gemma 2 alternates sliding and full layers (sliding first); Gemma 3 has five sliding layers per full one
SLIDING_PATTERNS = {"gemma2": 2, "gemma3": 6}


def sliding_pattern(n_layers: int, every: int) -> tuple[str, ...]:
    """Layer types where every `every`-th layer (1-based) is full and the others slide (Gemma's rule)."""
    return tuple(SLIDING if (i + 1) % every else FULL for i in range(n_layers))
