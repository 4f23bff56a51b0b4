"""GGUF files through the `gguf` package: metadata -> ModelArgs, tensors -> float32 in HF naming."""

from __future__ import annotations

import logging
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnsupportedModelError, WeightsError
from ..models.config import FULL, SLIDING, SLIDING_PATTERNS, SUPPORTED_ARCHITECTURES, ModelArgs, sliding_pattern
from .gguf_file import GGMLType, GGUFFile, GGUFTensor
from .quant import CONVERTED_TYPES, FLOAT_TYPES, KEPT_TYPES, QuantizedTensor, convert_unkept, from_gguf_blocks

log = logging.getLogger(__name__)

# GGUF tensor name suffix -> Hugging Face name suffix (per layer), and the global tensors.
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_qkv.weight": "self_attn.qkv_proj.weight",  # Phi-3's fused q, k, v
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",  # the MLP's pre-norm (Llama's name for it)
    "post_attention_norm.weight": "post_attention_layernorm.weight",  # the attention output's norm
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight",  # a mixture of experts' router [E, D]
    "ffn_gate_exps.weight": "mlp.experts.gate_proj.weight",  # the experts stacked [E, out, in]
    "ffn_up_exps.weight": "mlp.experts.up_proj.weight",
    "ffn_down_exps.weight": "mlp.experts.down_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# Gemma's checkpoints name the MLP's pre-norm pre_feedforward_layernorm (their post_attention_layernorm is
# the attention output's norm, GGUF post_attention_norm)
_SANDWICH_NAMES = {**_LAYER_NAMES, "ffn_norm.weight": "pre_feedforward_layernorm.weight"}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")
# GGUF architectures whose q/k rows llama.cpp's converter permuted for its interleaved RoPE (the others
# use the NeoX layout, which is Hugging Face's)
_PERMUTED = ("llama",)
# Gemma 2 / 3 at 27B scale queries by hidden_size / heads, the others by head_dim (llama.cpp's rule: GGUF
# files do not store query_pre_attn_scalar): (architecture, layers) of the 27B models
_QUERY_BY_WIDTH = {("gemma2", 46), ("gemma3", 62)}


def hf_name(gguf_name: str, layout: str = "pre", fused_up: bool = False) -> str | None:
    """Hugging Face name of a GGUF tensor, or None for tensors the model does not use; `layout` is the
    model's norm layout (ModelArgs.norm_layout), which decides the name of the MLP's pre-norm; with
    `fused_up` (Phi-3), ffn_up holds the gate and up rows together."""
    if fused_up and gguf_name.endswith(".ffn_up.weight"):
        return f"model.layers.{gguf_name.split('.')[1]}.mlp.gate_up_proj.weight"
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.fullmatch(gguf_name)
    names = _SANDWICH_NAMES if layout == "sandwich" else _LAYER_NAMES
    if m and m.group(2) in names:
        return f"model.layers.{m.group(1)}.{names[m.group(2)]}"
    return None


def open_reader(path: Path) -> GGUFFile:
    """Open a GGUF file's header (gguf_file.GGUFFile), turning parse errors into one WeightsError."""
    try:
        return GGUFFile(path)
    except (ValueError, IndexError, KeyError, OSError, TypeError, struct.error) as exc:
        raise WeightsError(f"{path} is not a valid GGUF file (truncated or corrupt?): {exc}") from None


def field(reader: GGUFFile, key: str, default: Any = None) -> Any:
    """A metadata value (str, int, float, bool or a list of them), or `default` when the file lacks it."""
    return reader.fields.get(key, default)


def args_from_gguf(reader: GGUFFile) -> ModelArgs:
    """ModelArgs from GGUF metadata (`{arch}.block_count`, `{arch}.embedding_length`, ...)."""
    arch = field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported ({', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    def req(key: str) -> Any:
        v = field(reader, f"{arch}.{key}")
        if v is None:
            raise WeightsError(f"GGUF metadata lacks {arch}.{key}")
        return v

    n_heads = int(req("attention.head_count"))
    dim = int(req("embedding_length"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = field(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"])
    freq_factors = None
    if "rope_freqs.weight" in tensor_names:
        t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
        freq_factors = tuple(float(x) for x in np.asarray(t.data, dtype=np.float32).ravel())
    scaling = None
    if field(reader, f"{arch}.rope.scaling.type") == "linear":
        scaling = {"rope_type": "linear", "factor": float(req("rope.scaling.factor"))}
    family = _family_fields(reader, arch, int(req("block_count")), dim, n_heads)
    scaling = family.pop("rope_scaling", scaling)
    return ModelArgs(
        architecture=arch,
        hidden_size=dim,
        num_hidden_layers=int(req("block_count")),
        intermediate_size=int(req("feed_forward_length")),
        num_attention_heads=n_heads,
        num_key_value_heads=int(field(reader, f"{arch}.attention.head_count_kv", n_heads)),
        vocab_size=int(vocab),
        rms_norm_eps=float(req("attention.layer_norm_rms_epsilon")),
        rope_theta=float(field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        max_position_embeddings=int(req("context_length")),
        head_dim=int(field(reader, f"{arch}.attention.key_length", dim // n_heads)),
        tie_word_embeddings="output.weight" not in tensor_names,
        # llama.cpp writes q/k/v biases for Qwen2 always, for Qwen3 never (its o_proj would need one too)
        attention_bias=arch == "qwen2",
        rope_freq_factors=freq_factors,
        **family,
    )


def _expert_fields(reader: GGUFFile, arch: str) -> dict[str, Any]:
    """A mixture of experts' counts (`{arch}.expert_count`, ...): Qwen3-MoE, and Mixtral written as llama."""
    experts = field(reader, f"{arch}.expert_count")
    if not experts:
        return {}
    out: dict[str, Any] = {
        "num_experts": int(experts),
        "num_experts_per_tok": int(field(reader, f"{arch}.expert_used_count", 0)),
        "norm_topk_prob": bool(field(reader, f"{arch}.expert_weights_norm", True)),
    }
    size = field(reader, f"{arch}.expert_feed_forward_length")
    if size is not None:
        out["moe_intermediate_size"] = int(size)
    return out


def _phi3_fields(reader: GGUFFile, arch: str) -> dict[str, Any]:
    """Phi-3's sliding window (every layer) and LongRoPE (`rope_factors_long` / `_short` tensors, the original
    context and the cos / sin factor the converter computed)."""
    out: dict[str, Any] = {}
    window = field(reader, f"{arch}.attention.sliding_window")
    if window:
        out["sliding_window"] = int(window)
    tensors = {t.name: t for t in reader.tensors}
    if "rope_factors_long.weight" in tensors:
        long, short = (
            [float(x) for x in np.asarray(tensors[f"rope_factors_{k}.weight"].data, dtype=np.float32).ravel()]
            for k in ("long", "short")
        )
        out["rope_scaling"] = {
            "rope_type": "longrope",
            "long_factor": long,
            "short_factor": short,
            "original_max_position_embeddings": int(field(reader, f"{arch}.rope.scaling.original_context_length")),
            "attention_factor": float(field(reader, f"{arch}.rope.scaling.attn_factor", 1.0)),
        }
    return out


def _family_fields(reader: GGUFFile, arch: str, layers: int, dim: int, n_heads: int) -> dict[str, Any]:
    """ModelArgs fields of Gemma 2 / 3 and of mixtures of experts from GGUF metadata, with llama.cpp's
    defaults for what its converter does not write (sliding pattern, local RoPE base, query scale)."""
    if arch == "phi3":
        return _phi3_fields(reader, arch)
    if arch not in SLIDING_PATTERNS:
        return _expert_fields(reader, arch)
    out: dict[str, Any] = {"hidden_act": "gelu_tanh"}
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        value = field(reader, f"{arch}.{key}")
        out[key] = None if value is None else float(value)
    window = field(reader, f"{arch}.attention.sliding_window")
    if window is not None:
        pattern = field(reader, f"{arch}.attention.sliding_window_pattern", SLIDING_PATTERNS[arch])
        if isinstance(pattern, list):  # one flag per layer: True for a sliding layer
            types = tuple(SLIDING if flag else FULL for flag in pattern)
        else:
            types = sliding_pattern(layers, int(pattern))
        out.update(sliding_window=int(window), layer_types=types)
    if arch == "gemma3":
        out["rope_local_theta"] = float(field(reader, f"{arch}.rope.freq_base_swa", 10000.0))
    head_dim = int(field(reader, f"{arch}.attention.key_length", dim // n_heads))
    out["query_pre_attn_scalar"] = float(dim // n_heads if (arch, layers) in _QUERY_BY_WIDTH else head_dim)
    return out


def _float32(t: GGUFTensor) -> np.ndarray:
    """A tensor's values as float32: float16/32 directly, other types through the gguf package's decoders
    (imported only here: a node running the stored blocks never loads them, ~4 MiB resident)."""
    if t.tensor_type in (GGMLType.F32, GGMLType.F16):
        return np.asarray(t.data, dtype=np.float32)
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return np.asarray(dequantize(t.data, GGMLQuantizationType(int(t.tensor_type))), dtype=np.float32)


def unpermute_index(rows: int, n_heads: int) -> np.ndarray:
    """Row order that undoes llama.cpp's q/k permutation.

    llama.cpp's converter reorders each head's rows from HF's half-split RoPE layout into interleaved
    pairs: rows (j, j + hd/2) become (2j, 2j + 1). `w[unpermute_index(...)]` gives HF's order back.
    """
    return np.arange(rows).reshape(n_heads, rows // n_heads // 2, 2).swapaxes(1, 2).reshape(-1)


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    return w[unpermute_index(w.shape[0], n_heads)]


class BlockRows:
    """A block-quantized [rows, cols] matrix left in the file, rows read (pread, not through the memory
    map, so they never join the process's resident set) and decoded when asked for."""

    nbytes = 0  # nothing of its own in memory

    def __init__(self, path: Path, kind: str, offset: int, row_bytes: int, shape: tuple[int, int]) -> None:
        self.path, self.kind, self.offset, self.row_bytes, self.shape = path, kind, offset, row_bytes, shape
        self._fd: int | None = None

    def rows_float(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise WeightsError(f"row {int(rows.max())} is outside a table of {self.shape[0]} rows")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        raw = np.empty((rows.size, self.row_bytes), dtype=np.uint8)
        for i, r in enumerate(rows):
            got = os.preadv(self._fd, [memoryview(raw[i])], self.offset + int(r) * self.row_bytes)
            if got != self.row_bytes:
                raise WeightsError(f"{self.path} is truncated: row {int(r)} of a table could not be read")
        return from_gguf_blocks(self.kind, raw, (rows.size, self.shape[1])).dequantize()

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


class GGUFSource:
    """Reads a GGUF file's tensors by Hugging Face name, dequantized to float32 on demand.

    It keeps the file's memory map and its table of tensors (gguf_file.GGUFFile), whose data are views
    of the map.
    """

    def __init__(self, path: Path, reader: GGUFFile | None = None) -> None:
        self.path = path
        reader = reader or open_reader(path)
        self.args = args_from_gguf(reader)
        # llama.cpp's converter stores Gemma's RMSNorm weights with the 1 of (1 + w) added
        self.norms_include_one = self.args.norm_plus_one
        self._map = reader.data
        self._tensors: dict[str, GGUFTensor] = {}
        for t in reader.tensors:
            name = hf_name(t.name, self.args.norm_layout, self.args.architecture == "phi3")
            if name is not None:
                self._tensors[name] = t

    def has(self, name: str) -> bool:
        return name in self._tensors

    def release_pages(self) -> None:
        """Drop the mapped file's pages from this process's resident set once the loaded shard holds
        its own copies (they are clean: the kernel re-reads any page touched later)."""
        import mmap

        raw = getattr(self._map, "_mmap", None)
        if raw is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:
                raw.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # not every platform lets a read-only map be advised
                pass

    def row_reader(self, name: str) -> BlockRows | None:
        """Rows of a block-quantized matrix decoded on demand from the mapped file (embedding lookups,
        exact head logits), so a shard need not hold a second copy of the table; None for floats."""
        t = self._tensors[name]
        kind = t.tensor_type.name
        if kind in FLOAT_TYPES or len(t.shape) != 2 or not (kind in KEPT_TYPES or kind in CONVERTED_TYPES):
            return None
        rows = int(t.shape[1])
        offset = int(t.data.ctypes.data - self._map.ctypes.data)  # the tensor's place in the file
        return BlockRows(self.path, kind, offset, t.n_bytes // rows, (rows, int(t.shape[0])))

    def kind(self, name: str) -> tuple[str, int] | None:
        """(GGUF type name, values) of a tensor by Hugging Face name (None if absent); a fused bias name
        (self_attn.qkv_proj.bias) is not a file tensor and answers None."""
        t = self._tensors.get(name)
        return None if t is None else (t.tensor_type.name, int(t.n_elements))

    def _unsupported(self, t: Any) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"{self.path.name}: tensor {t.name} uses quantization {t.tensor_type.name}, which is not supported "
            f"(kept as stored: {', '.join(KEPT_TYPES)}; converted exactly: {', '.join(CONVERTED_TYPES)}; "
            f"floats: {', '.join(FLOAT_TYPES)}); convert the model to one of them, e.g. with llama.cpp's "
            "llama-quantize, or use its Hugging Face folder with --quantize q4|q8"
        )

    def get_stored(self, name: str) -> np.ndarray | QuantizedTensor:
        """A tensor in the form the file stores it: block-quantized matrices as QuantizedTensor
        (llama q/k rows already in Hugging Face order), float tensors as float32 arrays."""
        t = self._tensors[name]
        kind = t.tensor_type.name
        if kind in FLOAT_TYPES or len(t.shape) not in (2, 3):
            return self.get(name)
        # GGUF lists dims innermost first; a 3-D stack of experts [E, out, in] comes as [E * out, in] rows
        shape = (int(np.prod(t.shape[1:])), int(t.shape[0]))
        try:
            if kind in KEPT_TYPES or kind in CONVERTED_TYPES:
                qt = from_gguf_blocks(kind, np.asarray(t.data), shape)
            else:
                qt = convert_unkept(kind, self.get(name))
                return qt  # get() already put llama's q/k rows in HF order
        except UnsupportedModelError:
            raise self._unsupported(t) from None
        except (ValueError, NotImplementedError) as exc:
            raise WeightsError(f"{self.path.name}: cannot decode tensor {t.name}: {exc}") from None
        if self.args.architecture in _PERMUTED:
            if name.endswith("q_proj.weight"):
                qt = qt.take_rows(unpermute_index(shape[0], self.args.num_attention_heads))
            elif name.endswith("k_proj.weight"):
                qt = qt.take_rows(unpermute_index(shape[0], self.args.num_key_value_heads))
        return qt

    def get(self, name: str) -> np.ndarray:
        t = self._tensors[name]
        try:
            w = _float32(t)
        except NotImplementedError:
            raise self._unsupported(t) from None
        except (ValueError, KeyError) as exc:
            raise WeightsError(f"{self.path.name}: cannot decode tensor {t.name}: {exc}") from None
        expected = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims innermost first
        if w.shape != expected:
            raise WeightsError(f"{self.path.name}: tensor {t.name} decodes to {w.shape}, header says {expected}")
        if self.args.architecture in _PERMUTED:  # the others keep HF's layout (no permutation)
            if name.endswith("q_proj.weight") or name.endswith("q_proj.bias"):
                w = _unpermute(w, self.args.num_attention_heads)
            elif name.endswith("k_proj.weight") or name.endswith("k_proj.bias"):
                w = _unpermute(w, self.args.num_key_value_heads)
        return w
