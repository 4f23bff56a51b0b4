"""The torch engine's compute: a Llama-family shard as TorchScript modules over quantized weights.

Once the weight products run at memory speed, a decode step is dominated by per-operation overhead: ~30
small torch calls per layer. TorchScript runs the whole shard in one call from Python, without the
interpreter between operations (measured: ~35% less overhead per operation than eager calls). Scripting a
module takes well under a second, so nothing needs caching.

Every path computes a row the same way: single-token decode, the rows of a short pass (speculative
verification: attention row by row) and batched decode rows give bitwise the same numbers for the same
inputs (the int4 kernel is row-independent too). Long passes (prompts) use one causal attention call.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

ROW_ATTENTION = 16  # passes of up to this many positions attend row by row (see the module docstring)


class QLinear(nn.Module):
    """y = x @ W.T for one [out, in] weight: int4-packed planes whose products add up, or a dense matrix.

    x and y are bfloat16. The packed form comes from torch_linear.QLinear (it knows the stored formats).
    """

    def __init__(self, packed: list[Tensor], scales_zeros: list[Tensor], group: int, dense: Tensor | None, out: int):
        super().__init__()
        self.packed = packed
        self.scales_zeros = scales_zeros
        self.group = group
        self.dense = dense
        self.out = out

    def forward(self, x: Tensor) -> Tensor:
        dense = self.dense
        if dense is not None:
            return torch.nn.functional.linear(x, dense)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed[0], self.group, self.scales_zeros[0])
        for i in range(1, len(self.packed)):
            y = y + torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed[i], self.group, self.scales_zeros[i])
        if y.shape[1] != self.out:
            y = y[:, : self.out]
        return y


def placeholder_linear() -> QLinear:
    """Stands where a mixture-of-experts layer has no dense down projection (never called)."""
    return QLinear([torch.zeros(1)], [torch.zeros(1)], 0, torch.zeros(1, 1), 1)


def placeholder_fused() -> Fused:
    """Stands where a mixture-of-experts layer has no dense gate / up projection (never called)."""
    return Fused([placeholder_linear()])


class Fused(nn.Module):
    """Several projections of the same input (q, k, v or gate, up): one product when they share a stored
    form, else one per part, concatenated."""

    def __init__(self, parts: list[QLinear]):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: Tensor) -> Tensor:
        if len(self.parts) == 1:
            for p in self.parts:
                return p(x)
        outs: list[Tensor] = []
        for p in self.parts:
            outs.append(p(x))
        return torch.cat(outs, dim=-1)


def glu(gate_up: Tensor, gelu: bool) -> Tensor:
    """SwiGLU, or GeGLU with the tanh GeLU, of a fused [T, 2F] gate / up projection."""
    F = gate_up.shape[-1] // 2
    if gelu:
        return torch.nn.functional.gelu(gate_up[:, :F], approximate="tanh").mul_(gate_up[:, F:])
    return torch.nn.functional.silu(gate_up[:, :F]).mul_(gate_up[:, F:])


class Expert(nn.Module):
    """One expert of a mixture-of-experts layer: a SwiGLU (or GeGLU) MLP on bfloat16 rows."""

    def __init__(self, gate_up: Fused, down: QLinear, gelu: bool):
        super().__init__()
        self.gate_up, self.down, self.gelu = gate_up, down, gelu

    def forward(self, x: Tensor) -> Tensor:
        return self.down(glu(self.gate_up(x), self.gelu))


class Experts(nn.Module):
    """A mixture-of-experts MLP: a float32 router (so a token picks the experts the reference picks), its
    top_k experts' outputs summed with the softmax weights (renormalized over the chosen ones when
    `renormalize`). Rows are grouped by expert; the products are row-independent, so a row's numbers do not
    depend on its batch."""

    def __init__(self, router: Tensor, experts: list[Expert], top_k: int, renormalize: bool):
        super().__init__()
        self.router, self.experts, self.top_k, self.renormalize = router, nn.ModuleList(experts), top_k, renormalize

    def forward(self, x32: Tensor) -> Tensor:
        """x32: the normed rows [T, D] float32 -> [T, D] float32."""
        probs = torch.matmul(x32, self.router.t()).softmax(-1)  # [T, E]
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        x = x32.to(torch.bfloat16)
        out = torch.zeros_like(x32)
        used: list[int] = chosen.flatten().tolist()
        j = 0
        for expert in self.experts:
            if j in used:
                where = torch.nonzero(chosen == j)  # [n, 2]: (row, rank)
                rows, rank = where[:, 0], where[:, 1]
                y = expert(x[rows]).float() * weights[rows, rank].unsqueeze(1)
                out.index_add_(0, rows, y)
            j += 1
        return out


class Family:
    """What a layer does beyond the Llama decoder (ModelArgs' switches for this layer): norms after attention
    and the MLP, q/k norms over the whole projection, a sliding window, attention soft-cap, GeGLU, and the
    sliding layers' own RoPE table."""

    def __init__(
        self,
        post_norms: tuple[Tensor | None, Tensor | None] = (None, None),
        qk_norm_all: bool = False,
        window: int = 0,
        cap: float = 0.0,
        gelu: bool = False,
        local_rope: bool = False,
    ):
        self.post_norms, self.qk_norm_all, self.window = post_norms, qk_norm_all, window
        self.cap, self.gelu, self.local_rope = cap, gelu, local_rope


class Layer(nn.Module):
    """One decoder layer: q/k rows interleaved for a complex-product RoPE and q pre-scaled (torch_engine
    builds the weights so); KV caches [n_layers, KV, capacity, hd] float32, owned by the caller."""

    def __init__(
        self,
        norms: tuple[Tensor | None, Tensor | None],
        bqkv: Tensor | None,
        qkv: Fused,
        o: QLinear,
        gate_up: Fused,
        down: QLinear,
        shape: tuple[int, int, int, float],
        qk_norm: tuple[Tensor, Tensor] | None = None,
        family: Family | None = None,
        moe: Experts | None = None,
    ):
        super().__init__()
        f = family or Family()
        self.attn_norm: Tensor | None = norms[0]  # None: no norm before attention / the MLP (OLMo 2)
        self.ffn_norm: Tensor | None = norms[1]
        self.post_attn_norm: Tensor | None = f.post_norms[0]  # on the sub-layers' outputs (Gemma, OLMo 2)
        self.post_ffn_norm: Tensor | None = f.post_norms[1]
        self.bqkv = bqkv
        # q and k norm weights, [hd] per head (Qwen3, Gemma 3) or [heads * hd] over the projection (OLMo 2:
        # qk_norm_all); q's pre-scaled; or None
        self.q_norm: Tensor | None = None if qk_norm is None else qk_norm[0]
        self.k_norm: Tensor | None = None if qk_norm is None else qk_norm[1]
        self.qk_norm_all = f.qk_norm_all
        self.qkv, self.o, self.gate_up, self.down = qkv, o, gate_up, down
        self.H, self.KV, self.hd, self.eps = shape
        self.window = f.window  # keys (p - window, p] for the query at p; 0: all
        self.cap = f.cap  # scores -> cap * tanh(scores / cap); 0: none
        self.gelu = f.gelu  # GeGLU (tanh GeLU) instead of SwiGLU
        self.local_rope = f.local_rope  # rotate with the sliding layers' table
        self.moe: Experts | None = moe  # a mixture of experts instead of gate_up / down
        self.row_attention = ROW_ATTENTION

    def norm(self, x: Tensor, w: Tensor | None) -> Tensor:
        """RMSNorm in float32, returned as the bfloat16 input of a weight product (no weight: no norm)."""
        if w is None:
            return x.to(torch.bfloat16)
        r = x.square().mean(-1, keepdim=True).add_(self.eps).rsqrt_()
        return (x * r).mul_(w).to(torch.bfloat16)

    def norm32(self, x: Tensor, w: Tensor) -> Tensor:
        r = x.square().mean(-1, keepdim=True).add_(self.eps).rsqrt_()
        return (x * r).mul_(w)

    def qkv_rope(self, h: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h [T, D] -> q [T, H, hd], k and v [T, KV, hd] (float32), q and k rotated."""
        T, H, KV, hd = h.shape[0], self.H, self.KV, self.hd
        qkv = self.qkv(self.norm(h, self.attn_norm)).float()
        bias = self.bqkv
        if bias is not None:
            qkv = qkv + bias
        n = (H + KV) * hd
        qk = qkv[:, :n]
        q_norm, k_norm = self.q_norm, self.k_norm
        if q_norm is not None and k_norm is not None and self.qk_norm_all:  # over all q (k) heads at once
            qk = torch.cat([self.norm32(qk[:, : H * hd], q_norm), self.norm32(qk[:, H * hd :], k_norm)], dim=1)
        elif q_norm is not None and k_norm is not None:  # RMSNorm of every q and k head over hd, before RoPE
            qk = qk.reshape(T, H + KV, hd)
            qk = qk * qk.square().mean(-1, keepdim=True).add_(self.eps).rsqrt_()
            qk[:, :H].mul_(q_norm)
            qk[:, H:].mul_(k_norm)
        pairs = torch.view_as_complex(qk.reshape(T, H + KV, hd // 2, 2))
        qk = torch.view_as_real(pairs * freqs).reshape(T, H + KV, hd)
        return qk[:, :H], qk[:, H:], qkv[:, n:].reshape(T, KV, hd)

    def attend_one(self, q: Tensor, k: Tensor, v: Tensor, n: int) -> Tensor:
        """The query at position n - 1: q [H, hd] (pre-scaled), k, v [KV, >= n, hd] -> [H * hd]."""
        lo = max(0, n - self.window) if self.window > 0 else 0
        s = torch.matmul(q.reshape(self.KV, -1, self.hd), k[:, lo:n].transpose(1, 2))  # [KV, G, L]
        if self.cap > 0.0:
            s = torch.tanh(s / self.cap) * self.cap
        return torch.matmul(s.softmax(-1), v[:, lo:n]).reshape(-1)

    def finish(self, h: Tensor, attn: Tensor) -> Tensor:
        out = self.o(attn.to(torch.bfloat16))
        post = self.post_attn_norm
        h = h + out if post is None else h + self.norm32(out.float(), post)
        moe = self.moe
        if moe is not None:
            w = self.ffn_norm
            mlp = moe(h if w is None else self.norm32(h, w))
        else:
            mlp = self.down(glu(self.gate_up(self.norm(h, self.ffn_norm)), self.gelu))
        post = self.post_ffn_norm
        return h + mlp if post is None else h + self.norm32(mlp.float(), post)

    def forward(
        self,
        h: Tensor,
        kc: Tensor,
        vc: Tensor,
        start: int,
        freqs: Tensor,
        mask: Tensor | None,
        local_freqs: Tensor,
        window_mask: Tensor | None,
    ) -> Tensor:
        """One request's positions [start, start + T) over its caches of this layer (kc, vc [KV, cap, hd]);
        a sliding layer takes local_freqs (Gemma 3) and window_mask (both given by the caller)."""
        T, end = h.shape[0], start + h.shape[0]
        q, k, v = self.qkv_rope(h, local_freqs if self.local_rope else freqs)
        kc[:, start:end] = k.transpose(0, 1)
        vc[:, start:end] = v.transpose(0, 1)
        if self.window > 0:
            mask = window_mask
        if T <= self.row_attention:
            rows: list[Tensor] = []
            for r in range(T):
                rows.append(self.attend_one(q[r], kc, vc, start + r + 1))
            attn = torch.stack(rows)
        elif self.cap > 0.0:  # soft-capped scores: no fused attention kernel takes a cap
            G = self.H // self.KV
            keys = kc[:, :end].repeat_interleave(G, 0)  # [H, end, hd]
            s = torch.matmul(q.transpose(0, 1), keys.transpose(1, 2))  # [H, T, end]
            s = torch.tanh(s / self.cap) * self.cap
            if mask is not None:
                s = s.masked_fill(mask.logical_not(), float("-inf"))
            o = torch.matmul(s.softmax(-1), vc[:, :end].repeat_interleave(G, 0))  # [H, T, hd]
            attn = o.transpose(0, 1).reshape(T, -1)
        else:
            o = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(0, 1)[None],
                kc[None, :, :end],
                vc[None, :, :end],
                attn_mask=mask,
                scale=1.0,
                enable_gqa=True,
            )  # [1, H, T, hd]
            attn = o[0].transpose(0, 1).reshape(T, -1)
        return self.finish(h, attn)

    @torch.jit.export
    def forward_rows(
        self,
        h: Tensor,
        kcs: list[Tensor],
        vcs: list[Tensor],
        positions: list[int],
        freqs: Tensor,
        local_freqs: Tensor,
    ) -> Tensor:
        """One decode step of B requests: row b at positions[b] over its caches kcs[b], vcs[b]."""
        q, k, v = self.qkv_rope(h, local_freqs if self.local_rope else freqs)
        rows: list[Tensor] = []
        for b in range(len(positions)):
            p = positions[b]
            kcs[b][:, p] = k[b]
            vcs[b][:, p] = v[b]
            rows.append(self.attend_one(q[b], kcs[b], vcs[b], p + 1))
        return self.finish(h, torch.stack(rows))


class Shard(nn.Module):
    """Layers [start, end) of a model over caller-owned KV caches [n_layers, KV, capacity, hd]."""

    def __init__(self, layers: list[Layer], eps: float):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.eps = eps

    def forward(
        self,
        h: Tensor,
        kc: Tensor,
        vc: Tensor,
        start: int,
        freqs: Tensor,
        mask: Tensor | None,
        local_freqs: Tensor,
        window_mask: Tensor | None,
    ) -> Tensor:
        """One request's positions [start, start + T): h [T, D] float32 -> [T, D]."""
        i = 0
        for layer in self.layers:
            h = layer(h, kc[i], vc[i], start, freqs, mask, local_freqs, window_mask)
            i += 1
        return h

    @torch.jit.export
    def forward_rows(
        self,
        h: Tensor,
        kcs: list[Tensor],
        vcs: list[Tensor],
        positions: list[int],
        freqs: Tensor,
        local_freqs: Tensor,
    ) -> Tensor:
        i = 0
        for layer in self.layers:
            h = layer.forward_rows(h, [k[i] for k in kcs], [v[i] for v in vcs], positions, freqs, local_freqs)  # type: ignore[operator]
            i += 1
        return h

    @torch.jit.export
    def norm32(self, x: Tensor, w: Tensor) -> Tensor:
        r = x.square().mean(-1, keepdim=True).add_(self.eps).rsqrt_()
        return (x * r).mul_(w)


def script(shard: Shard) -> Any:
    """The shard compiled by TorchScript, or the same module run eagerly where this torch cannot script it
    (torch 2.13 marks `torch.jit.script` deprecated in favour of torch.compile, which was measured here:
    58 s to compile, one recompilation per layer, no faster decode).

    Callers run it under `torch.jit.optimized_execution(False)`: the profiling executor's optimized graphs
    were no faster here and held ~70-120 MB more per process (one specialization per pass shape).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(shard)
    except Exception as exc:  # noqa: BLE001 - any scripting failure leaves the eager module, which is correct
        log.warning("TorchScript is unavailable (%s): the torch engine runs eagerly (slower decode)", exc)
        return shard
