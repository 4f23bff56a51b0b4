"""Tiny random-weight models of every supported family (llama, qwen2, qwen3, mistral, gemma2, gemma3,
olmo2, qwen3moe, mixtral, phi3), written as Hugging Face folders or as GGUF files that follow llama.cpp's
converter."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from exo_actor.models.rope import inv_frequencies

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Hello world! Numbers 1234567890 and symbols #$%&*() ok? ünïcödé 日本語 emoji 🙂",
    "def main():\n    return 42\n",
] * 20


def tiny_tokenizer(vocab_size: int = 320) -> Tokenizer:
    """A byte-level BPE trained on a few sentences, with chat special tokens at ids 0-2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@dataclass
class TinySpec:
    """A tiny model's shape; defaults are dim 64, 4 layers, 4 heads over 2 kv heads."""

    architecture: str = "llama"
    hidden_size: int = 64
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 96
    tied: bool = True
    rope_scaling: dict[str, Any] | None = None
    rope_theta: float = 10000.0
    context: int = 128
    seed: int = 0
    extra_config: dict[str, Any] = field(default_factory=dict)
    explicit_head_dim: int | None = None  # written as config.json head_dim / GGUF attention.key_length
    sliding_window: int | None = None  # mistral, gemma2, gemma3
    query_pre_attn_scalar: int | None = None  # gemma (default: head_dim)
    attn_softcap: float | None = None  # gemma2
    final_softcap: float | None = None  # gemma2
    experts: int = 4  # qwen3moe, mixtral
    experts_per_tok: int = 2
    expert_intermediate: int = 32  # qwen3moe's moe_intermediate_size (mixtral: intermediate)
    mlp_only_layers: tuple[int, ...] = ()  # qwen3moe layers with a dense MLP (not expressible in GGUF)
    original_context: int | None = None  # phi3: LongRoPE from this original context up to `context`

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.heads


def make_weights(spec: TinySpec, vocab: int, matrices: bool = True) -> dict[str, np.ndarray]:
    """Random float32 weights in Hugging Face naming and [out, in] layout. matrices=False: the matrices are
    read-only zero views of their shape (no memory), for a writer that fills them itself."""
    rng = np.random.default_rng(spec.seed)
    D, F, hd = spec.hidden_size, spec.intermediate, spec.head_dim

    def w(*shape: int, scale: float = 0.08) -> np.ndarray:
        if not matrices and len(shape) > 1:
            return np.broadcast_to(np.float32(0), shape)
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    arch = spec.architecture
    one = 0.0 if arch in _GEMMA else 1.0  # Gemma checkpoints store w of (1 + w)
    t = {"model.embed_tokens.weight": w(vocab, D, scale=0.5), "model.norm.weight": one + w(D, scale=0.1)}
    if not spec.tied:
        t["lm_head.weight"] = w(vocab, D)
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        for norm in _NORMS[_LAYOUT.get(arch, "pre")]:
            t[p + norm + ".weight"] = one + w(D, scale=0.1)
        t[p + "self_attn.q_proj.weight"] = w(spec.heads * hd, D)
        t[p + "self_attn.k_proj.weight"] = w(spec.kv_heads * hd, D)
        t[p + "self_attn.v_proj.weight"] = w(spec.kv_heads * hd, D)
        t[p + "self_attn.o_proj.weight"] = w(D, spec.heads * hd)
        if arch in _MOE and i not in spec.mlp_only_layers:
            t.update(_expert_weights(spec, p, w))
        else:
            t[p + "mlp.gate_proj.weight"] = w(F, D)
            t[p + "mlp.up_proj.weight"] = w(F, D)
            t[p + "mlp.down_proj.weight"] = w(D, F)
        if spec.architecture == "qwen2":
            for n, m in (("q", spec.heads), ("k", spec.kv_heads), ("v", spec.kv_heads)):
                t[p + f"self_attn.{n}_proj.bias"] = w(m * hd, scale=0.2)
        if arch in ("qwen3", "gemma3", "qwen3moe"):  # per-head q/k norms, far enough from 1 to matter
            t[p + "self_attn.q_norm.weight"] = one + w(hd, scale=0.3)
            t[p + "self_attn.k_norm.weight"] = one + w(hd, scale=0.3)
        if arch == "olmo2":  # norms of the whole q and k projections
            t[p + "self_attn.q_norm.weight"] = 1 + w(spec.heads * hd, scale=0.3)
            t[p + "self_attn.k_norm.weight"] = 1 + w(spec.kv_heads * hd, scale=0.3)
        if arch == "phi3":  # Phi-3 checkpoints fuse q, k, v and gate, up (gate rows first)
            parts = [t.pop(p + f"self_attn.{n}_proj.weight") for n in "qkv"]
            t[p + "self_attn.qkv_proj.weight"] = np.concatenate(parts)
            gate_up = [t.pop(p + f"mlp.{n}_proj.weight") for n in ("gate", "up")]
            t[p + "mlp.gate_up_proj.weight"] = np.concatenate(gate_up)
    return t


def longrope_factors(spec: TinySpec) -> dict[str, Any]:
    """Phi-3's rope_scaling for a LongRoPE spec: per-frequency divisors, long ones larger."""
    rng = np.random.default_rng(spec.seed + 1)
    n = spec.head_dim // 2
    return {
        "type": "longrope",
        "long_factor": [float(x) for x in 1 + 3 * rng.random(n)],
        "short_factor": [float(x) for x in 1 + 0.5 * rng.random(n)],
    }


def _expert_weights(spec: TinySpec, p: str, w: Any) -> dict[str, np.ndarray]:
    """A mixture-of-experts layer in the checkpoint's names: a router that spreads tokens over the experts
    (large enough weights that neighbouring tokens pick different ones), and each expert's SwiGLU."""
    D = spec.hidden_size
    F = spec.expert_intermediate if spec.architecture == "qwen3moe" else spec.intermediate
    router, expert, parts = _EXPERT_NAMES[spec.architecture]
    out = {p + router: w(spec.experts, D, scale=0.6)}
    for j in range(spec.experts):
        for n, shape in zip(parts, ((F, D), (F, D), (D, F))):
            out[p + expert.format(j=j, n=n)] = w(*shape)
    return out


_MOE = ("qwen3moe", "mixtral")
_EXPERT_NAMES = {
    "qwen3moe": ("mlp.gate.weight", "mlp.experts.{j}.{n}.weight", ("gate_proj", "up_proj", "down_proj")),
    "mixtral": ("block_sparse_moe.gate.weight", "block_sparse_moe.experts.{j}.{n}.weight", ("w1", "w3", "w2")),
}
_GEMMA = ("gemma2", "gemma3")
_LAYOUT = {"gemma2": "sandwich", "gemma3": "sandwich", "olmo2": "post"}
_NORMS = {
    "pre": ("input_layernorm", "post_attention_layernorm"),
    "sandwich": (
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
    "post": ("post_attention_layernorm", "post_feedforward_layernorm"),
}
_HF_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "qwen3moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
_MODEL_TYPES = {"gemma3": "gemma3_text", "qwen3moe": "qwen3_moe"}


def hf_config(spec: TinySpec, vocab: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "architectures": [_HF_CLASSES[spec.architecture]],
        "model_type": _MODEL_TYPES.get(spec.architecture, spec.architecture),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": spec.rope_theta,
        "max_position_embeddings": spec.context,
        "tie_word_embeddings": spec.tied,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    if spec.rope_scaling:
        cfg["rope_scaling"] = spec.rope_scaling
    if spec.explicit_head_dim or spec.architecture in ("qwen3", "qwen3moe", *_GEMMA):  # always stated there
        cfg["head_dim"] = spec.head_dim
    if spec.architecture in ("qwen3", "qwen3moe"):
        cfg.update(attention_bias=False, use_sliding_window=False)
    if spec.architecture == "qwen3moe":
        cfg.update(
            num_experts=spec.experts,
            num_experts_per_tok=spec.experts_per_tok,
            moe_intermediate_size=spec.expert_intermediate,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=list(spec.mlp_only_layers),
        )
    if spec.architecture == "mixtral":
        cfg.update(num_local_experts=spec.experts, num_experts_per_tok=spec.experts_per_tok, sliding_window=None)
    if spec.architecture in ("mistral", "phi3", *_GEMMA):
        cfg["sliding_window"] = spec.sliding_window
    if spec.architecture == "phi3":
        cfg.update(pad_token_id=0, original_max_position_embeddings=spec.original_context or spec.context)
        if spec.original_context:
            cfg["rope_scaling"] = longrope_factors(spec)
    if spec.architecture in _GEMMA:
        cfg.update(
            hidden_activation="gelu_pytorch_tanh",
            hidden_act="gelu_pytorch_tanh",
            query_pre_attn_scalar=spec.query_pre_attn_scalar or spec.head_dim,
            attn_logit_softcapping=spec.attn_softcap,
            final_logit_softcapping=spec.final_softcap,
            rms_norm_eps=1e-6,
            pad_token_id=0,
        )
    if spec.architecture == "gemma3":
        cfg.update(rope_local_base_freq=10000.0, sliding_window_pattern=6)
    if spec.architecture == "olmo2":
        cfg.update(rms_norm_eps=1e-6, attention_bias=False, pad_token_id=0)
    cfg.update(spec.extra_config)
    return cfg


def write_hf_folder(
    path: Path, spec: TinySpec, *, dtype: str = "F32", index_files: int = 0, by_layer: bool = False
) -> dict[str, np.ndarray]:
    """Write config.json, tokenizer files and safetensors; returns the float32 weights. With
    index_files, tensors are spread over that many files round-robin, or, by_layer, in contiguous
    layer ranges like real checkpoints (embedding in the first file, norm and head in the last)."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    vocab = tok.get_vocab_size()
    weights = make_weights(spec, vocab)
    if dtype == "BF16":  # round to bfloat16 so the float32 reference equals what is stored
        weights = {k: ((v.view(np.uint32) + 0x8000) & 0xFFFF0000).view(np.float32) for k, v in weights.items()}
    (path / "config.json").write_text(json.dumps(hf_config(spec, vocab)))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHAT_TEMPLATE})
    )
    stored = {k: _encode(v, dtype) for k, v in weights.items()}
    if index_files:
        names = sorted(stored)
        groups = [names[i::index_files] for i in range(index_files)]
        if by_layer:
            groups = [[] for _ in range(index_files)]
            for n in names:
                if n.startswith("model.layers."):
                    groups[int(n.split(".")[2]) * index_files // spec.layers].append(n)
                else:
                    groups[0 if n == "model.embed_tokens.weight" else index_files - 1].append(n)
        weight_map = {}
        for i, group in enumerate(groups):
            fname = f"model-{i + 1:05d}-of-{index_files:05d}.safetensors"
            _save(save_file, {k: stored[k] for k in group}, path / fname, dtype)
            weight_map.update({k: fname for k in group})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        _save(save_file, stored, path / "model.safetensors", dtype)
    return weights


def _encode(v: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F16":
        return v.astype(np.float16)
    if dtype == "BF16":
        return (v.view(np.uint32) >> 16).astype(np.uint16)
    return v


def _save(save_file: Any, tensors: dict[str, np.ndarray], path: Path, dtype: str) -> None:
    save_file(tensors, str(path))
    if dtype == "BF16":  # numpy has no bfloat16: saved as U16, then relabel the header
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = raw[8 : 8 + n].rstrip().replace(b'"U16"', b'"BF16"')
        header += b" " * (-len(header) % 8)  # keep the data 8-byte aligned
        path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n :])


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Llama q/k weights (HF half-split -> interleaved pairs)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


# Gemma and OLMo 2: post_attention_layernorm is the attention output's norm; Gemma's MLP pre-norm is ffn_norm
_GGUF_POST_NORMS = {
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
# general.architecture llama.cpp's converter writes (Mistral and Mixtral as llama, their q/k permuted)
_GGUF_ARCH = {"mistral": "llama", "mixtral": "llama"}
# Phi-3's fused tensors: attn_qkv, and ffn_up holding gate and up rows
_GGUF_FUSED = {"self_attn.qkv_proj.weight": "attn_qkv.weight", "mlp.gate_up_proj.weight": "ffn_up.weight"}
# the converter stacks each layer's experts into [E, out, in] tensors; the router is ffn_gate_inp
_GGUF_EXPERTS = {"gate": "ffn_gate_exps.weight", "up": "ffn_up_exps.weight", "down": "ffn_down_exps.weight"}


def _stack_experts(spec: TinySpec, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-expert checkpoint tensors -> the GGUF names of the stacks and the router (other names kept)."""
    if spec.architecture not in _MOE:
        return weights
    router, expert, parts = _EXPERT_NAMES[spec.architecture]
    out = {k: v for k, v in weights.items() if ".experts." not in k and not k.endswith(router)}
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        if p + router not in weights:
            continue
        out[f"blk.{i}.ffn_gate_inp.weight"] = weights[p + router]
        for n, kind in zip(parts, ("gate", "up", "down")):
            stack = [weights[p + expert.format(j=j, n=n)] for j in range(spec.experts)]
            out[f"blk.{i}.{_GGUF_EXPERTS[kind]}"] = np.stack(stack)
    return out


def gguf_name(hf: str, architecture: str = "llama") -> str:
    glob = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if hf in glob:
        return glob[hf]
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf.split(".", 3)
    if rest in _GGUF_FUSED:
        return f"blk.{i}.{_GGUF_FUSED[rest]}"
    if architecture in _LAYOUT and rest in _GGUF_POST_NORMS:
        return f"blk.{i}.{_GGUF_POST_NORMS[rest]}"
    return f"blk.{i}.{_GGUF_LAYER[rest]}"


def write_gguf(
    path: Path,
    spec: TinySpec,
    *,
    qtype: Q = Q.F32,
    raw_override: dict[str, tuple[np.ndarray, Q]] | None = None,
    random_blocks: bool = False,
) -> dict[str, np.ndarray]:
    """Write a GGUF like llama.cpp's converter would; returns the float32 weights the file decodes to.
    random_blocks: every matrix is random Q4_1 blocks written as such (qtype must be Q4_1), so that a model of
    a real model's size is written in seconds and without its float32 weights; those are not returned."""
    tok = tiny_tokenizer()
    vocab = tok.get_vocab_size()
    assert not random_blocks or qtype == Q.Q4_1, "random blocks are Q4_1"
    weights = make_weights(spec, vocab, matrices=not random_blocks)
    blocks = np.random.default_rng(spec.seed + 7)
    arch = _GGUF_ARCH.get(spec.architecture, spec.architecture)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(spec.layers)
    w.add_context_length(spec.context)
    w.add_embedding_length(spec.hidden_size)
    w.add_feed_forward_length(spec.intermediate)
    w.add_head_count(spec.heads)
    w.add_head_count_kv(spec.kv_heads)
    if spec.explicit_head_dim or arch in (
        "qwen3",
        "qwen3moe",
        *_GEMMA,
    ):  # the converter writes these whenever config has head_dim
        w.add_key_length(spec.head_dim)
        w.add_value_length(spec.head_dim)
    if arch == "phi3":  # as the converter writes it: a window of 0 means none
        w.add_sliding_window(spec.sliding_window or 0)
        if spec.original_context:
            factors = longrope_factors(spec)
            scale = spec.context / spec.original_context
            w.add_rope_scaling_orig_ctx_len(spec.original_context)
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(spec.original_context)))
            for kind in ("long", "short"):
                w.add_tensor(f"rope_factors_{kind}.weight", np.asarray(factors[f"{kind}_factor"], dtype=np.float32))
    if spec.architecture in _MOE:
        assert not spec.mlp_only_layers, "llama.cpp's qwen3moe has experts in every layer"
        w.add_expert_count(spec.experts)
        w.add_expert_used_count(spec.experts_per_tok)
        if spec.architecture == "qwen3moe":
            w.add_expert_feed_forward_length(spec.expert_intermediate)
    if arch in _GEMMA:
        assert (spec.query_pre_attn_scalar or spec.head_dim) == spec.head_dim, "GGUF cannot store another query scale"
        if spec.sliding_window:
            w.add_sliding_window(spec.sliding_window)
        if spec.attn_softcap:
            w.add_attn_logit_softcapping(spec.attn_softcap)
        if spec.final_softcap:
            w.add_final_logit_softcapping(spec.final_softcap)
    w.add_layer_norm_rms_eps(1e-6 if arch in (*_GEMMA, "olmo2") else 1e-5)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_vocab_size(vocab)
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    decoded: dict[str, np.ndarray] = {}
    if spec.rope_scaling and spec.rope_scaling.get("rope_type") == "llama3":
        base = inv_frequencies(spec.head_dim, spec.rope_theta)
        scaled = inv_frequencies(spec.head_dim, spec.rope_theta, spec.rope_scaling)
        w.add_tensor("rope_freqs.weight", (base / scaled).astype(np.float32))
    elif spec.rope_scaling and spec.rope_scaling.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(spec.rope_scaling["factor"]))
    for name, t in _stack_experts(spec, weights).items():
        if arch == "llama" and ".q_proj." in name:
            t = _permute(t, spec.heads)
        elif arch == "llama" and ".k_proj." in name:
            t = _permute(t, spec.kv_heads)
        if arch in _GEMMA and name.endswith("norm.weight"):  # the converter adds Gemma's 1 to every norm
            t = t + np.float32(1.0)
        gname = name if name.startswith("blk.") else gguf_name(name, arch)
        if raw_override and gname in raw_override:
            raw, rq = raw_override[gname]
            w.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=rq)
            continue
        if random_blocks and t.ndim >= 2:
            raw = random_q4_1(t.shape, blocks)
            w.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=Q.Q4_1)
            continue
        # norms, biases and a mixture's router stay float32, as in real files; expert stacks are quantized
        q = qtype if t.ndim >= 2 and not name.endswith("ffn_gate_inp.weight") else Q.F32
        if q == Q.F32:
            w.add_tensor(gname, t)
            stored = t
        elif q == Q.F16:
            w.add_tensor(gname, t.astype(np.float16))
            stored = t.astype(np.float16).astype(np.float32)
        else:
            packed = gguf.quants.quantize(t, q)
            w.add_tensor(gname, packed, raw_shape=packed.shape, raw_dtype=q)
            stored = gguf.quants.dequantize(packed, q)
        decoded[name] = stored
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # the returned weights are in HF layout (un-permuted), as the loader must produce them
    for name in decoded:
        if arch == "llama" and ".q_proj." in name:
            decoded[name] = _unpermute_ref(decoded[name], spec.heads)
        elif arch == "llama" and ".k_proj." in name:
            decoded[name] = _unpermute_ref(decoded[name], spec.kv_heads)
    return decoded


def random_q4_1(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random Q4_1 blocks for a float matrix of `shape`: per 32 weights a float16 scale 0.01 and minimum -0.075
    (weights uniform over [-0.075, 0.075], as a trained layer's are spread), then 16 bytes of random nibbles."""
    block, size = gguf.GGML_QUANT_SIZES[Q.Q4_1]
    assert shape[-1] % block == 0, shape
    n = int(np.prod(shape[:-1])) * (shape[-1] // block)
    raw = np.empty((n, size), dtype=np.uint8)
    raw[:, :4] = np.array([0.01, -0.075], dtype=np.float16).view(np.uint8)
    raw[:, 4:] = rng.integers(0, 256, size=(n, size - 4), dtype=np.uint8)
    return raw.reshape(*shape[:-1], shape[-1] // block * size)


def _unpermute_ref(w: np.ndarray, n_heads: int) -> np.ndarray:
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
