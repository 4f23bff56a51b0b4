"""The TensorSource protocol and assembly of one shard's weights from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import WeightsError
from ..models.config import ModelArgs
from ..models.llama import LayerWeights, ShardWeights
from .quant import QuantizedTensor
from .quant import quantize as quant_from_float


class TensorSource(Protocol):
    """Named float32 tensors in Hugging Face naming and [out, in] layout, read on demand."""

    def has(self, name: str) -> bool: ...

    def get(self, name: str) -> np.ndarray: ...


def _get(src: TensorSource, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if not src.has(name):
        raise WeightsError(f"tensor {name} is missing from the weights")
    t = src.get(name)
    if t.shape != shape:
        raise WeightsError(f"tensor {name} has shape {t.shape}, the config implies {shape}")
    return t.astype(np.float32, copy=False)


def as_in_out(w: np.ndarray) -> np.ndarray:
    """An [out, in] weight as an [in, out] operand for `x @ w`, stored in the faster orientation.

    OpenBLAS's matrix-vector kernels stream a wide matrix (out >= in) fastest stored [in, out] and a
    tall one (out < in, e.g. down_proj) fastest stored [out, in] and used transposed (measured on
    SmolLM2's shapes: down_proj 4.7 vs 7.5 ms per token, gate_up 8.9 vs 12.0 ms).
    """
    if w.shape[0] >= w.shape[1]:
        return np.ascontiguousarray(w.T)
    return np.ascontiguousarray(w).T


# Hugging Face names of a layer's RMSNorms by norm layout: (before attention, before the MLP, after
# attention, after the MLP). Llama's "post_attention_layernorm" is the MLP's pre-norm; Gemma's and OLMo 2's
# is the attention output's norm.
NORM_NAMES: dict[str, tuple[str | None, str | None, str | None, str | None]] = {
    "pre": ("input_layernorm", "post_attention_layernorm", None, None),
    "sandwich": (
        "input_layernorm",
        "pre_feedforward_layernorm",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
    ),
    "post": (None, None, "post_attention_layernorm", "post_feedforward_layernorm"),
}


def _norm(args: ModelArgs, src: TensorSource, name: str, size: int) -> np.ndarray:
    """An RMSNorm weight as the engines multiply by it: Gemma's (1 + w) from a checkpoint, as GGUF files
    already store it (their sources say so with `norms_include_one`)."""
    w = _get(src, name, (size,))
    if args.norm_plus_one and not getattr(src, "norms_include_one", False):
        w = w + np.float32(1.0)
    return w


def _layer_norms(args: ModelArgs, src: TensorSource, p: str) -> dict[str, Any]:
    """A layer's RMSNorm weights by LayerWeights field: attn_norm, ffn_norm, post_attn_norm, post_ffn_norm,
    q_norm, k_norm (None where the family has none)."""
    fields = ("attn_norm", "ffn_norm", "post_attn_norm", "post_ffn_norm")
    D = args.hidden_size
    out = {
        f: None if n is None else _norm(args, src, f"{p}{n}.weight", D)
        for f, n in zip(fields, NORM_NAMES[args.norm_layout])
    }
    out["q_norm"] = out["k_norm"] = None
    if args.qk_norm:
        qs, ks = args.qk_norm_sizes
        out["q_norm"] = _norm(args, src, p + "self_attn.q_norm.weight", qs)
        out["k_norm"] = _norm(args, src, p + "self_attn.k_norm.weight", ks)
    return out


# a mixture-of-experts layer's tensors: Qwen3-MoE's names, Mixtral's (block_sparse_moe, w1 = gate, w3 = up,
# w2 = down), and the stacks [E, out, in] GGUF files hold (gguf_source maps ffn_*_exps to these names)
_EXPERT_NAMES = {
    "mlp": ("mlp.gate.weight", "mlp.experts.{j}.{n}.weight", ("gate_proj", "up_proj", "down_proj")),
    "mixtral": ("block_sparse_moe.gate.weight", "block_sparse_moe.experts.{j}.{n}.weight", ("w1", "w3", "w2")),
}
STACKED_EXPERTS = ("mlp.experts.gate_proj.weight", "mlp.experts.up_proj.weight", "mlp.experts.down_proj.weight")


def _experts(
    args: ModelArgs, src: TensorSource, p: str
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """A mixture-of-experts layer's router [E, D] and each expert's (gate, up, down) as [out, in] float32."""
    E, Fe, D = args.num_experts, args.expert_size, args.hidden_size
    style = "mixtral" if src.has(p + _EXPERT_NAMES["mixtral"][0]) else "mlp"
    router_name, expert_name, parts = _EXPERT_NAMES[style]
    router = _get(src, p + router_name, (E, D))
    if src.has(p + STACKED_EXPERTS[0]):
        g, u, d = (_get(src, p + n, shape) for n, shape in zip(STACKED_EXPERTS, ((E, Fe, D), (E, Fe, D), (E, D, Fe))))
        return router, [(g[j], u[j], d[j]) for j in range(E)]
    shapes = ((Fe, D), (Fe, D), (D, Fe))
    return router, [
        tuple(_get(src, p + expert_name.format(j=j, n=n), shape) for n, shape in zip(parts, shapes))  # type: ignore[misc]
        for j in range(E)
    ]


def _mlp(args: ModelArgs, src: TensorSource, p: str, i: int) -> dict[str, Any]:
    """LayerWeights fields of layer i's MLP: the fused dense products, or a router and its experts."""
    D, F = args.hidden_size, args.intermediate_size
    if not args.layer_is_moe(i):
        gate = _get(src, p + "mlp.gate_proj.weight", (F, D))
        up = _get(src, p + "mlp.up_proj.weight", (F, D))
        return {
            "w_gate_up": as_in_out(np.concatenate([gate, up])),
            "w_down": as_in_out(_get(src, p + "mlp.down_proj.weight", (D, F))),
        }
    router, experts = _experts(args, src, p)
    return {
        "w_gate_up": None,
        "w_down": None,
        "router": np.ascontiguousarray(router.T),
        "experts": [(as_in_out(np.concatenate([g, u])), as_in_out(d)) for g, u, d in experts],
    }


class FusedSplit:
    """Phi-3's fused `self_attn.qkv_proj` and `mlp.gate_up_proj` (gate rows first) seen as the separate q / k / v
    and gate / up tensors the loaders read, as float32; everything else is the wrapped source's."""

    _PARTS = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj"}
    _PARTS |= {"up_proj": "gate_up_proj"}

    def __init__(self, src: TensorSource, args: ModelArgs) -> None:
        self.src = src
        H, KV, hd, F = args.num_attention_heads, args.num_key_value_heads, args.dim_head, args.intermediate_size
        self._rows = {
            "q_proj": (0, H * hd),
            "k_proj": (H * hd, (H + KV) * hd),
            "v_proj": ((H + KV) * hd, (H + 2 * KV) * hd),
            "gate_proj": (0, F),
            "up_proj": (F, 2 * F),
        }

    def _fused(self, name: str) -> tuple[str, tuple[int, int]] | None:
        prefix, _, rest = name.rpartition(".")[0].rpartition(".")
        if rest in self._PARTS and name.endswith(".weight"):
            fused = f"{prefix}.{self._PARTS[rest]}.weight"
            if self.src.has(fused):
                return fused, self._rows[rest]
        return None

    def has(self, name: str) -> bool:
        return self._fused(name) is not None or self.src.has(name)

    def get(self, name: str) -> np.ndarray:
        found = self._fused(name)
        if found is None:
            return self.src.get(name)
        fused, (a, b) = found
        w = self.src.get(fused)
        if w.shape[0] < b:
            raise WeightsError(f"tensor {fused} has {w.shape[0]} rows, the config implies at least {b}")
        return np.ascontiguousarray(w[a:b])

    get_stored = get  # the fused blocks are not split as stored: the parts are float32

    def __getattr__(self, attr: str) -> Any:  # row_reader, release_pages, norms_include_one, kind
        return getattr(self.src, attr)


def _split(args: ModelArgs, src: TensorSource) -> TensorSource:
    return FusedSplit(src, args) if args.architecture == "phi3" else src


def load_shard_weights(args: ModelArgs, src: TensorSource, start: int, end: int) -> ShardWeights:
    """Read only the tensors of layers [start, end) (plus embedding / head at the ends)."""
    src = _split(args, src)
    D, V, hd = args.hidden_size, args.vocab_size, args.dim_head
    H, KV = args.num_attention_heads, args.num_key_value_heads
    layers = []
    for i in range(start, end):
        p = f"model.layers.{i}."
        q = _get(src, p + "self_attn.q_proj.weight", (H * hd, D))
        k = _get(src, p + "self_attn.k_proj.weight", (KV * hd, D))
        v = _get(src, p + "self_attn.v_proj.weight", (KV * hd, D))
        bias = None
        if args.attention_bias:
            bias = np.concatenate(
                [_get(src, p + f"self_attn.{n}_proj.bias", (m * hd,)) for n, m in (("q", H), ("k", KV), ("v", KV))]
            )
        layers.append(
            LayerWeights(
                wqkv=as_in_out(np.concatenate([q, k, v])),
                bqkv=bias,
                wo=as_in_out(_get(src, p + "self_attn.o_proj.weight", (D, H * hd))),
                **_mlp(args, src, p, i),
                **_layer_norms(args, src, p),
            )
        )
    weights = ShardWeights(layers=layers)
    is_first, is_last = start == 0, end == args.num_hidden_layers
    tied = args.tie_word_embeddings or not src.has("lm_head.weight")
    if is_last:
        weights.final_norm = _norm(args, src, "model.norm.weight", D)
        head = "model.embed_tokens.weight" if tied else "lm_head.weight"
        weights.lm_head_t = np.ascontiguousarray(_get(src, head, (V, D)).T)
    if is_first and not (is_last and tied):  # a tied head on this shard also serves lookups
        weights.embed = _get(src, "model.embed_tokens.weight", (V, D))
    return weights


# ---------------------------------------------------------------------------------------------------
# Weights as stored (quantized engines): unfused [out, in] tensors, block-quantized ones kept so.

Weight = np.ndarray | QuantizedTensor
QUANTIZE_CHOICES = ("q4", "q8", "none")


@dataclass
class LayerTensors:
    """One decoder layer as stored: [out, in] matrices (float32 arrays or QuantizedTensor), biases and
    norms as float32 vectors."""

    attn_norm: np.ndarray | None
    q: Weight
    k: Weight
    v: Weight
    bqkv: np.ndarray | None
    o: Weight
    ffn_norm: np.ndarray | None
    gate: Weight | None  # None in a mixture-of-experts layer
    up: Weight | None
    down: Weight | None
    q_norm: np.ndarray | None = None  # [hd] (Qwen3, Gemma 3) or [H * hd] (OLMo 2)
    k_norm: np.ndarray | None = None
    post_attn_norm: np.ndarray | None = None  # (Gemma, OLMo 2)
    post_ffn_norm: np.ndarray | None = None
    router: np.ndarray | None = None  # [E, D] float32: a mixture-of-experts layer's router
    experts: list[tuple[Weight, Weight, Weight]] | None = None  # each expert's (gate, up, down), as stored


@dataclass
class ShardTensors:
    """A shard's weights as stored: layers plus, at the ends, the embedding table, final norm and head
    (one object when the head is tied to the embedding)."""

    layers: list[LayerTensors]
    embed: Weight | None = None
    final_norm: np.ndarray | None = None
    head: Weight | None = None
    # where single rows of the embedding table / head are read from: an object with rows_float(ids),
    # the mapped file itself for GGUF blocks (weights.gguf_source.BlockRows), else the tensor
    embed_rows: Any = None
    head_rows: Any = None


def _convert(w: Weight, quantize: str | None) -> Weight:
    """--quantize: q4 / q8 quantize float matrices (stored blocks stay as they are); none dequantizes."""
    if quantize == "none" and isinstance(w, QuantizedTensor):
        return w.dequantize()
    if quantize in ("q4", "q8") and isinstance(w, np.ndarray):
        return quant_from_float(w, 4 if quantize == "q4" else 8)
    return w


def _stored(src: TensorSource, name: str, shape: tuple[int, ...], quantize: str | None) -> Weight:
    if not src.has(name):
        raise WeightsError(f"tensor {name} is missing from the weights")
    get_stored = getattr(src, "get_stored", None)
    t = get_stored(name) if get_stored is not None else src.get(name)
    if t.shape != shape:
        raise WeightsError(f"tensor {name} has shape {t.shape}, the config implies {shape}")
    if isinstance(t, np.ndarray):
        t = t.astype(np.float32, copy=False)
    return _convert(t, quantize) if len(shape) == 2 else t


def load_shard_tensors(
    args: ModelArgs, src: TensorSource, start: int, end: int, quantize: str | None = None, layers: bool = True
) -> ShardTensors:
    """Layers [start, end) (plus embedding / head at the ends) as stored, or converted by `quantize`
    (None: as stored; "q4" / "q8": float matrices quantized to 4-bit affine / 8-bit symmetric groups
    of 32; "none": everything float32)."""
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise WeightsError(f"unknown quantization {quantize!r} (choose {', '.join(QUANTIZE_CHOICES)})")
    src = _split(args, src)
    D, F, V, hd = args.hidden_size, args.intermediate_size, args.vocab_size, args.dim_head
    H, KV = args.num_attention_heads, args.num_key_value_heads
    out_layers = []
    for i in range(start, end) if layers else ():
        p = f"model.layers.{i}."

        def get(n: str, shape: tuple[int, ...], p: str = p) -> Weight:
            return _stored(src, p + n, shape, quantize)

        bias = None
        if args.attention_bias:
            bias = np.concatenate(
                [_get(src, p + f"self_attn.{n}_proj.bias", (m * hd,)) for n, m in (("q", H), ("k", KV), ("v", KV))]
            )
        if args.layer_is_moe(i):
            mlp: dict[str, Any] = {"gate": None, "up": None, "down": None}
            mlp["router"], mlp["experts"] = _stored_experts(args, src, p, quantize)
        else:
            mlp = {
                "gate": get("mlp.gate_proj.weight", (F, D)),
                "up": get("mlp.up_proj.weight", (F, D)),
                "down": get("mlp.down_proj.weight", (D, F)),
            }
        out_layers.append(
            LayerTensors(
                q=get("self_attn.q_proj.weight", (H * hd, D)),
                k=get("self_attn.k_proj.weight", (KV * hd, D)),
                v=get("self_attn.v_proj.weight", (KV * hd, D)),
                bqkv=bias,
                o=get("self_attn.o_proj.weight", (D, H * hd)),
                **mlp,
                **_layer_norms(args, src, p),
            )
        )
    out = ShardTensors(layers=out_layers)
    is_first, is_last = start == 0, end == args.num_hidden_layers
    tied = args.tie_word_embeddings or not src.has("lm_head.weight")
    if is_last:
        out.final_norm = _norm(args, src, "model.norm.weight", D)
    head_name = "model.embed_tokens.weight" if tied else "lm_head.weight"
    row_reader = getattr(src, "row_reader", None) if quantize is None else None
    for wanted, attr, rows_attr, name in (
        (is_last, "head", "head_rows", head_name),
        (is_first, "embed", "embed_rows", "model.embed_tokens.weight"),
    ):
        if not wanted:
            continue
        rows = row_reader(name) if row_reader else None
        # the whole table, unless its rows can be read from the file and nothing packs it: an embedding
        # table is only ever read by rows, a head is packed with the layers (not with layers=False)
        if rows is None or (attr == "head" and layers):
            table = out.head if attr == "embed" and tied and is_last else _stored(src, name, (V, D), quantize)
            assert table is not None
            setattr(out, attr, table)
            rows = rows or _row_view(table)
        setattr(out, rows_attr, rows)
    release = getattr(src, "release_pages", None)
    if release is not None:
        release()
    return out


def _stored_experts(
    args: ModelArgs, src: TensorSource, p: str, quantize: str | None
) -> tuple[np.ndarray, list[tuple[Weight, Weight, Weight]]]:
    """A mixture-of-experts layer as stored: the router [E, D] float32, and each expert's (gate, up, down);
    a GGUF's block-quantized stacks stay blocks (its sources give them as [E * out, in] rows)."""
    E, Fe, D = args.num_experts, args.expert_size, args.hidden_size
    if not src.has(p + STACKED_EXPERTS[0]):  # one tensor per expert (Hugging Face)
        style = "mixtral" if src.has(p + _EXPERT_NAMES["mixtral"][0]) else "mlp"
        router_name, expert_name, parts = _EXPERT_NAMES[style]
        shapes = ((Fe, D), (Fe, D), (D, Fe))
        experts = [
            tuple(_stored(src, p + expert_name.format(j=j, n=n), shape, quantize) for n, shape in zip(parts, shapes))
            for j in range(E)
        ]
        return _get(src, p + router_name, (E, D)), experts  # type: ignore[return-value]
    stacks = []
    for name, (rows, cols) in zip(STACKED_EXPERTS, ((Fe, D), (Fe, D), (D, Fe))):
        get_stored = getattr(src, "get_stored", None)
        t = get_stored(p + name) if get_stored is not None else src.get(p + name)
        if isinstance(t, QuantizedTensor):
            if t.shape != (E * rows, cols):
                raise WeightsError(f"tensor {p + name} has shape {t.shape}, the config implies {(E * rows, cols)}")
            stacks.append([_convert(t.take_rows(slice(e * rows, (e + 1) * rows)), quantize) for e in range(E)])
        else:
            if t.shape != (E, rows, cols):
                raise WeightsError(f"tensor {p + name} has shape {t.shape}, the config implies {(E, rows, cols)}")
            stacks.append([_convert(np.asarray(t[e], dtype=np.float32), quantize) for e in range(E)])
    return _get(src, p + "mlp.gate.weight", (E, D)), list(zip(*stacks))


class _FloatRows:
    def __init__(self, w: np.ndarray) -> None:
        self.w, self.nbytes = w, w.nbytes

    def rows_float(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.w[rows], dtype=np.float32)


def _row_view(w: Weight) -> Any:
    return w if isinstance(w, QuantizedTensor) else _FloatRows(w)


def float_weights(args: ModelArgs, t: ShardTensors) -> ShardWeights:
    """Stored tensors -> the numpy engine's fused float32 layout (each weight dequantized)."""

    def f(w: Weight) -> np.ndarray:
        return w.dequantize() if isinstance(w, QuantizedTensor) else np.asarray(w, dtype=np.float32)

    def mlp(l: LayerTensors) -> dict[str, Any]:
        if l.experts is None:
            assert l.gate is not None and l.up is not None and l.down is not None
            return {"w_gate_up": as_in_out(np.concatenate([f(l.gate), f(l.up)])), "w_down": as_in_out(f(l.down))}
        assert l.router is not None
        experts = [(as_in_out(np.concatenate([f(g), f(u)])), as_in_out(f(d))) for g, u, d in l.experts]
        return {"w_gate_up": None, "w_down": None, "router": np.ascontiguousarray(l.router.T), "experts": experts}

    layers = [
        LayerWeights(
            attn_norm=l.attn_norm,
            wqkv=as_in_out(np.concatenate([f(l.q), f(l.k), f(l.v)])),
            bqkv=l.bqkv,
            wo=as_in_out(f(l.o)),
            ffn_norm=l.ffn_norm,
            **mlp(l),
            q_norm=l.q_norm,
            k_norm=l.k_norm,
            post_attn_norm=l.post_attn_norm,
            post_ffn_norm=l.post_ffn_norm,
        )
        for l in t.layers
    ]
    out = ShardWeights(layers=layers, final_norm=t.final_norm)
    if t.head is not None:
        out.lm_head_t = np.ascontiguousarray(f(t.head).T)
    if t.embed is not None and t.embed is not t.head:
        out.embed = f(t.embed)
    return out
