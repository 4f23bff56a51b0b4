"""The speculative acceptance rule (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding", Algorithm 1; Chen et al. 2023, "Accelerating LLM Decoding with Speculative
Sampling"): a pure function of the target's and the draft's distributions and one random stream.

The tokens it returns are distributed exactly as sampling from the target alone: a drafted token x
is kept with probability min(1, p(x)/q(x)); at the first rejection the replacement comes from
normalize(max(0, p - q)), which is exactly the mass the draft under-proposed; after N acceptances a
bonus token comes from the target's next distribution. With one-hot p (temperature 0) this reduces
to "keep a drafted token iff it is the target's argmax, else emit the argmax".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def accept_drafts(
    p: np.ndarray,
    q: np.ndarray | None,
    drafted: Sequence[int],
    uniform: Callable[[], float],
    draw: Callable[[np.ndarray], int],
) -> tuple[int, int]:
    """Verify drafted tokens against the target.

    p: [N + 1, V] target probabilities (after the sampling filters) at the N drafted positions
       plus the one after them.
    q: [N, V] draft probabilities (after the same filters), or None for a deterministic draft
       (prompt lookup: q is one-hot on the drafted token).
    uniform: draws from U[0, 1); draw: samples a token from a probability vector.
    Returns (how many drafted tokens are accepted, the token that follows them).
    """
    n = len(drafted)
    if p.shape[0] != n + 1 or (q is not None and q.shape[0] != n):
        raise ValueError(f"{n} drafted tokens need {n + 1} target rows and {n} draft rows")
    for i, x in enumerate(drafted):
        qx = 1.0 if q is None else float(q[i, x])
        px = float(p[i, x])
        if qx > 0.0 and uniform() < min(1.0, px / qx):
            continue
        if q is None:
            residual = p[i].copy()
            residual[x] = 0.0  # max(0, p - onehot(x)): p(x) <= 1 can never exceed q(x) = 1
        else:
            residual = np.maximum(p[i] - q[i], 0.0)
        total = residual.sum()
        # p == q on this row can reject only by floating-point noise: fall back to p itself
        return i, draw(residual / total if total > 0.0 else p[i])
    return n, draw(p[n])
