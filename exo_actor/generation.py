"""The generation loop: prompt ids -> chunked prefill -> decode -> text deltas, with stats.

It drives any Pipeline (shards chained in one process now; a ring of remote shards later), so the
loop itself knows nothing of engines or sockets.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .engines import ShardRunner
from .errors import ContextLengthError
from .sampling import Sampler, SamplingParams, StopMatcher
from .tokenizer import IncrementalDetokenizer, TextTokenizer

PREFILL_CHUNK = 512  # prompt tokens per forward: bounds attention memory on long prompts


class Pipeline(Protocol):
    def forward(self, request_id: str, tokens: np.ndarray, start_pos: int, num_logits: int = 1) -> np.ndarray:
        """Token ids at positions [start_pos, ...) -> logits [num_logits, V] of the last positions."""
        ...

    def free(self, request_id: str) -> None: ...


class LocalPipeline:
    """Shards chained in one process: the output of each is the input of the next."""

    def __init__(self, shards: Sequence[ShardRunner]) -> None:
        if not shards or not shards[0].is_first or not shards[-1].is_last:
            raise ValueError("a pipeline needs shards covering the model from first to last layer")
        for a, b in zip(shards, shards[1:]):
            if a.end != b.start:
                raise ValueError(f"shards [{a.start},{a.end}) and [{b.start},{b.end}) are not contiguous")
        self.shards = list(shards)

    def forward(self, request_id: str, tokens: np.ndarray, start_pos: int, num_logits: int = 1) -> np.ndarray:
        x = tokens
        for shard in self.shards:
            x = shard.forward(request_id, x, start_pos, num_logits)
        return x

    def free(self, request_id: str) -> None:
        for shard in self.shards:
            shard.free(request_id)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float = 0.0  # seconds, request start -> first token sampled
    decode_seconds: float = 0.0  # first token -> last token

    @property
    def decode_tokens_per_second(self) -> float:
        steps = self.completion_tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the most likely alternatives at its position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Delta:
    """A piece of generated text. The last one of a request has finish_reason set."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (EOS or stop string) or "length"
    stats: GenerationStats | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


def token_logprob(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """log softmax(logits)[token] and the `top` most likely tokens with theirs."""
    z = logits.astype(np.float64)
    logp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
    best = np.argpartition(-logp, top)[:top] if 0 < top < logp.size else np.arange(min(top, logp.size))
    best = best[np.argsort(-logp[best], kind="stable")]
    return TokenLogprob(token, float(logp[token]), tuple((int(i), float(logp[i])) for i in best))


def apply_penalties(logits: np.ndarray, counts: np.ndarray, params: SamplingParams) -> np.ndarray:
    """OpenAI's presence/frequency penalties over the tokens generated so far."""
    penalty = params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    return logits - penalty.astype(np.float32)


def generate(
    pipeline: Pipeline,
    tokenizer: TextTokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    context_length: int,
    request_id: str | None = None,
) -> Iterator[Delta]:
    """Generate a completion for prompt_ids, yielding text deltas as tokens arrive."""
    if not prompt_ids:
        raise ContextLengthError("the prompt is empty")
    if len(prompt_ids) >= context_length:
        raise ContextLengthError(
            f"the prompt has {len(prompt_ids)} tokens; the model's context window is {context_length}"
        )
    rid = request_id or uuid.uuid4().hex
    max_new = min(params.max_tokens, context_length - len(prompt_ids))
    stats = GenerationStats(prompt_tokens=len(prompt_ids))
    sampler, stopper, detok = Sampler(params), StopMatcher(params.stop), IncrementalDetokenizer(tokenizer)
    t0 = time.perf_counter()
    try:
        prompt = np.asarray(prompt_ids, dtype=np.int64)
        for start in range(0, len(prompt), PREFILL_CHUNK):
            logits = pipeline.forward(rid, prompt[start : start + PREFILL_CHUNK], start)
        pos, finish = len(prompt), "length"
        counts = np.zeros(logits.shape[-1], dtype=np.float32) if params.penalized else None
        for step in range(max_new):
            row = logits[-1] if counts is None else apply_penalties(logits[-1], counts, params)
            token = sampler.sample(row)
            if counts is not None:
                counts[token] += 1
            lp = [token_logprob(row, token, params.logprobs)] if params.logprobs is not None else []
            now = time.perf_counter()
            if step == 0:
                stats.time_to_first_token = now - t0
            stats.decode_seconds = now - t0 - stats.time_to_first_token
            stats.completion_tokens += 1
            if token in tokenizer.stop_ids:
                finish = "stop"
                break
            text, stopped = stopper.feed(detok.add(token))
            if stopped:
                yield Delta(text, [token], logprobs=lp)
                finish = "stop"
                break
            yield Delta(text, [token], logprobs=lp)  # every token, even one that completes no character yet
            if step + 1 < max_new:
                logits = pipeline.forward(rid, np.array([token], dtype=np.int64), pos)
                pos += 1
        tail = "" if finish == "stop" else stopper.feed(detok.flush())[0] + stopper.flush()
        yield Delta(tail, [], finish_reason=finish, stats=stats)
    finally:
        pipeline.free(rid)
