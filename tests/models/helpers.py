"""Shared by the model tests: numpy pipelines over a model's files, logits of every position, greedy
tokens, and transformers' greedy tokens as the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exo_actor.engines.numpy_engine import NumpyEngine
from exo_actor.partition import even_ranges
from exo_actor.runtime.generation import LocalPipeline
from exo_actor.weights import ModelFiles, open_model

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
