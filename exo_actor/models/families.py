"""The model families as `exo-actor models` lists them: their names in both formats and what each may need
beyond the Llama decoder (ModelArgs.features keys; engines.base.ENGINE_FEATURES says which engine runs what)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """A model family as `exo-actor models` lists it: its names and what it may need beyond Llama."""

    name: str
    model_type: str  # config.json
    gguf: str | None  # GGUF general.architecture (None: llama.cpp writes it as another one)
    features: frozenset[str]
    optional: frozenset[str] = frozenset()  # what only some of its models need


FAMILIES = (
    Family("llama", "llama", "llama", frozenset()),
    Family("qwen2", "qwen2", "qwen2", frozenset()),
    Family("qwen3", "qwen3", "qwen3", frozenset({"qk_norm"})),
    Family("mistral", "mistral", None, frozenset(), frozenset({"sliding_window"})),  # GGUF: llama, no window
    Family(
        "gemma2",
        "gemma2",
        "gemma2",
        frozenset({"sandwich_norms", "gelu_tanh", "embed_scale", "sliding_window", "attn_softcap", "final_softcap"}),
    ),
    Family(
        "gemma3",
        "gemma3_text",
        "gemma3",
        frozenset({"sandwich_norms", "gelu_tanh", "embed_scale", "sliding_window", "local_rope", "qk_norm"}),
    ),
    Family("olmo2", "olmo2", "olmo2", frozenset({"post_norms", "qk_norm_all"})),
    Family("qwen3moe", "qwen3_moe", "qwen3moe", frozenset({"qk_norm", "moe"})),
    Family("mixtral", "mixtral", None, frozenset({"moe"}), frozenset({"sliding_window"})),  # GGUF: llama + experts
    Family("phi3", "phi3", "phi3", frozenset(), frozenset({"sliding_window", "longrope"})),
)
