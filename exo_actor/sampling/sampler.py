"""From logits to a token: temperature, top-k, top-p, min-p, then a seeded draw."""

from __future__ import annotations

import numpy as np

from .params import SamplingParams


def filtered_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution tokens are drawn from: softmax(logits / T) cut by top-k, top-p, min-p.

    Filters apply in Hugging Face's order (temperature, top_k, top_p, min_p). For temperature 0
    this is one-hot on the argmax. Speculative decoding shapes both draft and target with this.
    """
    logits = np.asarray(logits, dtype=np.float64).ravel()
    if params.greedy:
        p = np.zeros_like(logits)
        p[int(np.argmax(logits))] = 1.0
        return p
    z = logits / params.temperature
    if 0 < params.top_k < z.size:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        # keep the smallest prefix whose mass reaches top_p (the token crossing it included)
        cut = int(np.searchsorted(cum, params.top_p, side="left")) + 1
        keep = np.zeros_like(p, dtype=bool)
        keep[order[:cut]] = True
        p = np.where(keep, p, 0.0)
    if params.min_p > 0.0:
        p = np.where(p >= params.min_p * p.max(), p, 0.0)
    return p / p.sum()


class Sampler:
    """Draws tokens for one request; the same seed gives the same sequence of draws."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray) -> int:
        if self.params.greedy:
            return int(np.argmax(logits))
        return self.draw(filtered_probs(logits, self.params))

    def draw(self, probs: np.ndarray) -> int:
        return draw(probs, self.rng)


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token from a probability vector (inverse-CDF on one uniform draw)."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), probs.size - 1))
