"""How many bytes a model's layers take in memory on each engine, from how they are stored.

Pure functions of the stored tensor kinds (GGUF block types, or float for Hugging Face checkpoints) so
that every node computes the same plan: the planner, `/v1/cluster`, `exo-actor status` and the
dashboard count what the engines really hold, not float32.

Bytes per value held, by engine:

| stored as | torch | mlx | numpy, tinygrad |
|---|---|---|---|
| 4-bit groups of 32 (Q4_0, Q4_1, Q4_K; `--quantize q4`) | 0.625 (nibbles + bf16 scale, zero) | 0.75 | 4 |
| 8-bit groups of 32 (Q8_0, Q5_K, Q5_0/1; `--quantize q8`) | 1.25 (two 4-bit planes) | 1.25 | 4 |
| groups of 16 (Q6_K, Q2_K, Q3_K) | 2 (bf16) | 4 | 4 |
| float (F32/F16/BF16, Hugging Face folders) | 2 (bf16) | 4 | 4 |

Vectors (norms, q/k head norms, biases) are float32 everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

from ..models.config import ModelArgs
from .base import NORM_NAMES, STACKED_EXPERTS

QUANTIZED_ENGINES = ("torch", "mlx")
_G32_4BIT = ("Q4_0", "Q4_1", "Q4_K")
_G16 = ("Q6_K", "Q2_K", "Q3_K")
_FLOAT = ("F32", "F16", "BF16")

# (kind, values) of a stored tensor; None: unknown (a Hugging Face folder: float)
Kinds = Callable[[str], "tuple[str, int] | None"]


def _effective_kind(kind: str, quantize: str | None) -> str:
    if quantize == "none":
        return "F32"
    if quantize in ("q4", "q8") and kind in _FLOAT:
        return "Q4_0" if quantize == "q4" else "Q8_0"
    return kind


def bytes_per_value(kind: str, engine: str, quantize: str | None = None, matrix: bool = True) -> float:
    """Bytes one stored value takes in memory on `engine` (see the module's table)."""
    if not matrix or engine not in QUANTIZED_ENGINES:
        return 4.0
    kind = _effective_kind(kind, quantize)
    if kind in _G32_4BIT:
        return 0.625 if engine == "torch" else 0.75
    if kind in _FLOAT or kind in _G16:
        return 2.0 if engine == "torch" else 4.0
    return 1.25  # 8-bit groups of 32, and every type converted to them at load


def _layer_shapes(args: ModelArgs, i: int) -> list[tuple[str, int, bool]]:
    """(Hugging Face name, values, is a matrix) of layer i's tensors."""
    D, F, hd = args.hidden_size, args.intermediate_size, args.dim_head
    H, KV = args.num_attention_heads, args.num_key_value_heads
    p = f"model.layers.{i}."
    out = [
        (p + "self_attn.q_proj.weight", H * hd * D, True),
        (p + "self_attn.k_proj.weight", KV * hd * D, True),
        (p + "self_attn.v_proj.weight", KV * hd * D, True),
        (p + "self_attn.o_proj.weight", H * hd * D, True),
    ]
    if args.layer_is_moe(i):
        E, Fe = args.num_experts, args.expert_size
        # the router stays float32 on every engine (a token's experts are chosen as the reference chooses them)
        out += [(p + "mlp.gate.weight", E * D, False)] + [(p + n, E * Fe * D, True) for n in STACKED_EXPERTS]
    else:
        out += [(p + f"mlp.{n}_proj.weight", F * D, True) for n in ("gate", "up", "down")]
    out += [(f"{p}{n}.weight", D, False) for n in NORM_NAMES[args.norm_layout] if n is not None]
    if args.attention_bias:
        out.append((p + "self_attn.qkv_proj.bias", (H + 2 * KV) * hd, False))
    if args.qk_norm:
        qs, ks = args.qk_norm_sizes
        out += [(p + "self_attn.q_norm.weight", qs, False), (p + "self_attn.k_norm.weight", ks, False)]
    return out


def _bytes(entries: list[tuple[str, int, bool]], kinds: Kinds, engine: str, quantize: str | None) -> int:
    total = 0.0
    for name, n, matrix in entries:
        known = kinds(name)
        kind = known[0] if known else "F16"
        total += n * bytes_per_value(kind, engine, quantize, matrix)
    return int(total)


def shard_bytes(args: ModelArgs, kinds: Kinds, start: int, end: int, engine: str, quantize: str | None = None) -> int:
    """Bytes the weights of layers [start, end) (with the embedding / head at the ends) take on `engine`.

    Quantized engines pack the head for their kernels and read single rows of the embedding table (and,
    on torch, of the head for exact leading logits) from the stored form: GGUF blocks stay in the mapped
    file, other tables keep a copy. Float engines hold a tied table once.
    """
    layers = sum(_bytes(_layer_shapes(args, i), kinds, engine, quantize) for i in range(start, end))
    V, D = args.vocab_size, args.hidden_size
    tied = args.tie_word_embeddings
    first, last = start == 0, end == args.num_hidden_layers
    embed = ("model.embed_tokens.weight", V * D, True)
    packed_head = _bytes([embed if tied else ("lm_head.weight", V * D, True)], kinds, engine, quantize)
    stored = V * D * _table_rows_bytes(kinds("model.embed_tokens.weight"), quantize)
    tables = 0.0
    if engine in QUANTIZED_ENGINES:
        tables += (packed_head if last else 0) + (stored if first else 0)
        if engine == "torch" and last and not (first and tied):
            tables += stored
    else:
        tables += (packed_head if last else 0) + (packed_head if first and not (last and tied) else 0)
    final_norm = 4 * D if last else 0
    return int(layers + tables + final_norm)


def _table_rows_bytes(known: tuple[str, int] | None, quantize: str | None) -> float:
    """Bytes per value of the copy a quantized engine reads single table rows from: none for GGUF blocks
    left in the mapped file, the quantized form (~1.25) for --quantize q4/q8, float32 otherwise."""
    kind = known[0] if known else "F16"
    if quantize is None and kind not in _FLOAT:
        return 0.0
    return 1.25 if quantize in ("q4", "q8") else 4.0


def layer_bytes(args: ModelArgs, kinds: Kinds, engine: str, quantize: str | None = None) -> int:
    """Mean bytes of one decoder layer on `engine` (layers of a K-quant mix differ slightly)."""
    n = args.num_hidden_layers
    return -(-sum(_bytes(_layer_shapes(args, i), kinds, engine, quantize) for i in range(n)) // n)
