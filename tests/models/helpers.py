"""Shared by the model tests: numpy pipelines over a model's files, logits of every position, greedy
tokens, and transformers' greedy tokens as the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exo_actor.engines import get_engine
from exo_actor.engines.base import Pass
from exo_actor.engines.numpy_engine import NumpyEngine
from exo_actor.partition import even_ranges
from exo_actor.runtime.generation import LocalPipeline
from exo_actor.weights import ModelFiles, open_model
from tests.tiny import TinySpec, write_gguf, write_hf_folder

# Float32 everywhere; the two implementations sum in different orders.
ATOL = 2e-4


def pipeline(path: Path, shards: int = 1) -> tuple[ModelFiles, LocalPipeline]:
    """The model at `path` on the numpy engine, split evenly into `shards` shards."""
    files = open_model(path)
    eng = NumpyEngine()
    return files, LocalPipeline(
        [eng.load_shard(files, a, b) for a, b in even_ranges(files.args.num_hidden_layers, shards)]
    )


def all_logits(pipe: LocalPipeline, ids: list[int], prefill: int) -> np.ndarray:
    """Prefill `prefill` tokens, then decode the rest one by one; logits for every position."""
    out = [pipe.forward("r", np.array(ids[:prefill]), 0, num_logits=prefill)]
    for pos in range(prefill, len(ids)):
        out.append(pipe.forward("r", np.array([ids[pos]]), pos))
    return np.concatenate(out)


def greedy(pipe: LocalPipeline, prompt: list[int], n: int, request: str = "g") -> list[int]:
    """n greedy tokens after `prompt` (prefill, then one decode step per token)."""
    logits = pipe.forward(request, np.array(prompt), 0)
    out = [int(np.argmax(logits[-1]))]
    while len(out) < n:
        logits = pipe.forward(request, np.array(out[-1:]), len(prompt) + len(out) - 1)
        out.append(int(np.argmax(logits[-1])))
    pipe.free(request)
    return out


def hf_greedy(folder: Path, prompt: list[int], n: int) -> list[int]:
    """transformers' n greedy tokens after `prompt` (full recomputation each step, no end-of-sequence stop)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Largest difference as a fraction of the reference's largest magnitude."""
    return float(np.abs(got - want).max() / np.abs(want).max())


def write_quantized(tmp_path: Path, spec: TinySpec, source: str) -> Path:
    """The model as the torch engine's two stored forms: "hf-bf16" (dense bf16) or "gguf-q8" (Q8_0 blocks)."""
    from gguf import GGMLQuantizationType as Q

    if source == "hf-bf16":
        write_hf_folder(tmp_path / "hf", spec, dtype="BF16")
        return tmp_path / "hf"
    write_gguf(tmp_path / "m.gguf", spec, qtype=Q.Q8_0)
    return tmp_path / "m.gguf"


def check_torch_engine(files: ModelFiles, prompt: list[int], steps: list[int], rows: dict[str, list[int]]) -> None:
    """The torch engine against numpy on the same weights, within its stated tolerance
    (tests/engines/test_quantized.py: 3e-2 of the logits' range): a prompt and decode steps over two shards,
    then one batched decode step of `rows` (request -> its prompt) within 1e-2 of each row alone."""
    from tests.engines.test_quantized import TORCH_MODEL_RTOL

    n = files.args.num_hidden_layers
    ref = get_engine("numpy").load_shard(files, 0, n)
    eng = get_engine("torch")
    first, last = eng.load_shard(files, 0, 2), eng.load_shard(files, 2, n)
    want = ref.forward("r", np.array(prompt), 0, len(prompt))
    assert rel_err(last.forward("r", first.forward("r", np.array(prompt), 0), 0, len(prompt)), want) <= TORCH_MODEL_RTOL
    for pos, tok in enumerate(steps, start=len(prompt)):
        want = ref.forward("r", np.array([tok]), pos)
        assert rel_err(last.forward("r", first.forward("r", np.array([tok]), pos), pos), want) <= TORCH_MODEL_RTOL
    whole, lone = eng.load_shard(files, 0, n), eng.load_shard(files, 0, n)
    for rid, p in rows.items():
        whole.forward(rid, np.array(p), 0), lone.forward(rid, np.array(p), 0)
    passes = [Pass(rid, np.array([11 + i]), len(p)) for i, (rid, p) in enumerate(rows.items())]
    for p, got in zip(passes, whole.forward_batch(passes)):
        assert isinstance(got, np.ndarray) and rel_err(got, lone.forward(p.request_id, p.tokens, p.start_pos)) <= 1e-2
