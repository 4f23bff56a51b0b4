"""Embeddings: token ids -> one unit vector from the model's final hidden states.

The input runs through the model in chunks of at most PREFILL_CHUNK positions (its KV caches grow
across the chunks, so every position attends to all the positions before it, as in one pass), each
chunk a Pass with num_logits == HIDDEN_STATES: the last shard answers with the final-normed (the
model's last RMSNorm) hidden states [T, D] instead of logits. They are pooled into one vector and
L2-normalized:

- "mean" (the default): the mean over every position of the input. A decoder's later positions see
  more of the text, the earlier ones less; the mean of all is the common choice for a model that was
  not trained for embeddings.
- "last": the last position alone, the one that has seen the whole input. This is what embedding-tuned
  decoder models (e.g. E5-Mistral, Qwen3-Embedding, gte-Qwen2) were trained to use, typically after an
  end-of-text token appended to the input.

`embedding()` is the computation as a coroutine, like runtime/generation.generation(): it yields its
Passes (send it each one's answer) and finally an Embedded, so the RouterActor schedules it with the
generation traffic; `embed()` runs its passes one at a time on a pipeline. The request's caches are
freed on the pipeline however it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np

from ..engines import HIDDEN_STATES, Pass
from ..errors import ContextLengthError, ExoError
from ..sampling.decide import Decision
from .generation import PREFILL_CHUNK, Pipeline

POOLINGS = ("mean", "last")


@dataclass(frozen=True)
class Embedded:
    """An input's embedding: a float32 unit vector [D], and the input's length in tokens."""

    vector: np.ndarray
    tokens: int


EmbeddingSteps = Generator["Pass | Embedded", "np.ndarray | Decision | None", None]


def normalized(v: np.ndarray) -> np.ndarray:
    """v / ||v|| in float32 (a zero vector stays zero)."""
    v = np.asarray(v, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 0 else v).astype(np.float32)


def embedding(
    pipeline: Pipeline,
    ids: Sequence[int],
    context_length: int,
    pooling: str = "mean",
    request_id: str | None = None,
) -> EmbeddingSteps:
    """The embedding of one input as a coroutine: yields a Pass per chunk (send it the hidden states
    [T, D] of the chunk's positions), then the Embedded. Frees the request's caches on the pipeline
    when it ends, however it ends (closing it early included)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if not ids:
        raise ContextLengthError("the input is empty")
    if len(ids) > context_length:
        raise ContextLengthError(f"the input has {len(ids)} tokens; the model's context window is {context_length}")
    rid = request_id or uuid.uuid4().hex
    tokens = np.asarray(ids, dtype=np.int64)
    total: np.ndarray | None = None  # float64 sum over positions (mean), or the newest row (last)
    try:
        for start in range(0, len(tokens), PREFILL_CHUNK):
            chunk = tokens[start : start + PREFILL_CHUNK]
            hidden = yield Pass(rid, chunk, start, HIDDEN_STATES)
            if not isinstance(hidden, np.ndarray) or hidden.ndim != 2 or hidden.shape[0] != len(chunk):
                shape = getattr(hidden, "shape", type(hidden).__name__)
                raise ExoError(f"a hidden-states pass of {len(chunk)} positions was answered with {shape}")
            if pooling == "last":
                total = hidden[-1]
            else:
                part = hidden.sum(axis=0, dtype=np.float64)
                total = part if total is None else total + part
    finally:
        pipeline.free(rid)
    assert total is not None
    pooled = total / len(tokens) if pooling == "mean" else total
    yield Embedded(normalized(pooled), len(tokens))


def embed(
    pipeline: Pipeline, ids: Sequence[int], context_length: int, pooling: str = "mean", request_id: str | None = None
) -> Embedded:
    """The embedding of one input, its passes run one at a time on the pipeline (see embedding())."""
    steps = embedding(pipeline, ids, context_length, pooling, request_id)
    try:
        item = next(steps)
        while isinstance(item, Pass):
            item = steps.send(pipeline.forward(item.request_id, item.tokens, item.start_pos, item.num_logits))
        return item
    finally:
        steps.close()
