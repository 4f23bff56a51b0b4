"""Hugging Face transformers as the reference implementation (test-only dependency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    """transformers' float32 logits [T, V] for a token sequence of a model folder."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return out.logits[0].float().numpy()
