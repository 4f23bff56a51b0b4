"""The generation loop: prompt ids -> chunked prefill -> decode -> text deltas, with stats.

It drives any Pipeline (shards chained in one process, or a ring of remote shards), so the loop
itself knows nothing of engines or sockets. `generation()` is the loop as a coroutine: it yields a
Pass whenever it needs a forward pass and is sent back the logits, so a scheduler can run the passes
of many requests together (continuous batching: actors/router.py); `generate()` runs the passes one
at a time and yields only the text.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..engines import Pass, ShardRunner
from ..errors import ContextLengthError
from ..sampling import SamplingParams, StopMatcher
from ..sampling.decide import UNUSED, Decision, Sample, TokenLogprob, apply_penalties, token_logprob
from ..sampling.grammar import Constraint
from ..speculative import RateEstimate, Speculation
from ..tokenizer import IncrementalDetokenizer, TextTokenizer
from .prefix_cache import PrefixCache

__all__ = [
    "Delta",
    "GenerationStats",
    "Pipeline",
    "TokenLogprob",
    "apply_penalties",
    "generate",
    "generation",
    "token_logprob",
]

PREFILL_CHUNK = 512  # prompt tokens per forward: bounds attention memory on long prompts
LOGPROB_CHUNK = 128  # ... when every position's logits come back (a prompt's logprobs): 25 MB for 49k tokens


class Pipeline(Protocol):
    def forward(self, request_id: str, tokens: np.ndarray, start_pos: int, num_logits: int = 1) -> np.ndarray:
        """Token ids at positions [start_pos, ...) -> logits [num_logits, V] of the last positions."""
        ...

    def forward_batch(self, passes: Sequence[Pass]) -> list[np.ndarray | Exception]:
        """Several requests' passes at once (their single-token decode steps batched together); one
        result per pass: its logits, or the error that ended that request alone."""
        ...

    def truncate(self, request_id: str, length: int) -> None:
        """Forget a request's positions >= length on every shard (rejected drafts)."""
        ...

    def free(self, request_id: str) -> None: ...

    def adopt(self, source: str, request_id: str, length: int) -> int:
        """Give request_id the KV caches of finished request `source`, cut to `length` positions, on
        every shard (the prefix cache); returns the positions it starts with."""
        ...

    def fork(self, source: str, request_id: str, length: int) -> int:
        """Give request_id a copy of running request `source`'s first `length` cached positions on every
        shard (another choice of the same prompt); returns the positions it starts with."""
        ...


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

    def forward_batch(self, passes: Sequence[Pass]) -> list[np.ndarray | Exception]:
        results: list[np.ndarray | Exception] = [p.tokens for p in passes]
        live = dict(enumerate(p.tokens for p in passes))  # passes not failed on an earlier shard -> their input
        for shard in self.shards:
            steps = [Pass(passes[i].request_id, x, passes[i].start_pos, passes[i].num_logits) for i, x in live.items()]
            for i, out in zip(list(live), shard.forward_batch(steps)):
                results[i] = out
                if isinstance(out, Exception):
                    del live[i]
                else:
                    live[i] = out
        return results

    def truncate(self, request_id: str, length: int) -> None:
        for shard in self.shards:
            shard.truncate(request_id, length)

    def free(self, request_id: str) -> None:
        for shard in self.shards:
            shard.free(request_id)

    def adopt(self, source: str, request_id: str, length: int) -> int:
        return min(shard.adopt(source, request_id, length) for shard in self.shards)

    def fork(self, source: str, request_id: str, length: int) -> int:
        got = min(shard.fork(source, request_id, length) for shard in self.shards)
        if got < length:  # a shard lacks it: start from nothing everywhere
            for shard in self.shards:
                shard.free(request_id)
            return 0
        return got


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float = 0.0  # seconds, request start -> first token sampled
    decode_seconds: float = 0.0  # first token -> last token
    decode_passes: int = 0  # forward passes after the prompt (one per token without speculation)
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache (not prefilled)
    draft_tokens: int = 0  # tokens drafted for verification
    accepted_tokens: int = 0  # drafted tokens the target accepted

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return (self.completion_tokens - 1) / self.decode_passes if self.decode_passes else 1.0

    @property
    def decode_tokens_per_second(self) -> float:
        steps = self.completion_tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0


@dataclass
class Delta:
    """A piece of generated text. The last one of a request has finish_reason set."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (EOS or stop string) or "length"
    stats: GenerationStats | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    # the prompt's tokens' logprobs (None for the first, which nothing predicts), on the first Delta of a
    # request that asked for them (SamplingParams.prompt_logprobs)
    prompt_logprobs: list[TokenLogprob | None] | None = None


def generate(
    pipeline: Pipeline,
    tokenizer: TextTokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    context_length: int,
    request_id: str | None = None,
    speculation: Speculation | None = None,
    prefix: PrefixCache | None = None,
) -> Iterator[Delta]:
    """Generate a completion for prompt_ids, yielding text deltas as tokens arrive (its passes run
    one at a time on the pipeline; see generation())."""
    steps = generation(pipeline, tokenizer, prompt_ids, params, context_length, request_id, speculation, prefix)
    try:
        item = next(steps)
        while True:
            if isinstance(item, Pass):
                item = steps.send(pipeline.forward(item.request_id, item.tokens, item.start_pos, item.num_logits))
            else:
                yield item
                item = next(steps)
    except StopIteration:
        return
    finally:
        steps.close()


Steps = Generator["Pass | Delta", "np.ndarray | Decision | None", None]


def generation(
    pipeline: Pipeline,
    tokenizer: TextTokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    context_length: int,
    request_id: str | None = None,
    speculation: Speculation | None = None,
    prefix: PrefixCache | None = None,
    fork: str | None = None,
) -> Steps:
    """The generation of one request as a coroutine: yields a Pass when it needs a forward pass (send
    it the logits) and a Delta for each piece of text (send None, or call next()).

    With a PrefixCache the prompt continues the longest cached prefix (prefilling only the rest), and
    a request that completes keeps its KV caches there for the next turn instead of freeing them.
    `fork` names a running request with the same prompt (another choice of it): this one starts from a
    copy of its prompt's caches. Closing it early frees the request's caches on the pipeline."""
    if not prompt_ids:
        raise ContextLengthError("the prompt is empty")
    if len(prompt_ids) >= context_length:
        raise ContextLengthError(
            f"the prompt has {len(prompt_ids)} tokens; the model's context window is {context_length}"
        )
    rid = request_id or uuid.uuid4().hex
    max_new = min(params.max_tokens, context_length - len(prompt_ids))
    stats = GenerationStats(prompt_tokens=len(prompt_ids))
    stopper, detok = StopMatcher(params.stop), IncrementalDetokenizer(tokenizer)
    seeded = params.seed is not None and params.temperature > 0
    if params.draft_tokens == 0 or (speculation is not None and speculation.automatic and seeded):
        speculation = None
    t0 = time.perf_counter()
    context = list(prompt_ids)  # grows with every token handed out
    cached = 0
    if fork is not None and params.prompt_logprobs is None:  # the last prompt token runs again: its logits
        cached = pipeline.fork(fork, rid, len(prompt_ids) - 1)
    elif prefix is not None and params.prompt_logprobs is None:  # cached positions would have no logits
        source, length = prefix.take(context)
        if source is not None:
            cached = pipeline.adopt(source, rid, length)
    stats.cached_tokens = cached
    constraint = Constraint(params.grammar, tokenizer) if params.grammar else None
    tokens = _tokens(
        pipeline, rid, context, params, max_new, context_length, stats, speculation, cached, constraint, tokenizer
    )
    completed = False
    prompt_lps: list[TokenLogprob | None] | None = None
    try:
        finish = "length"
        step = 0
        item = next(tokens)
        while True:
            if isinstance(item, Pass):  # hand the pass to whoever runs them, the logits back down
                answer = yield item
                assert answer is not None, "a Pass is answered with its logits or its Decision"
                item = tokens.send(answer)
                continue
            if isinstance(item, list):  # the prompt's logprobs: they go with the next Delta
                prompt_lps = item
                item = next(tokens)
                continue
            token, logprob = item
            lp = [logprob] if logprob is not None else []
            now = time.perf_counter()
            if step == 0:
                stats.time_to_first_token = now - t0
            stats.decode_seconds = now - t0 - stats.time_to_first_token
            stats.completion_tokens += 1
            if token in tokenizer.stop_ids:
                finish = "stop"
                break
            text, stopped = stopper.feed(detok.add(token))
            yield Delta(
                text, [token], logprobs=lp, prompt_logprobs=prompt_lps
            )  # every token, even one completing no character
            prompt_lps = None
            if stopped or (constraint is not None and constraint.done):  # a grammar that is complete ends it
                finish = "stop"
                break
            step += 1
            if step >= max_new:
                break
            item = next(tokens)
        tail = "" if finish == "stop" else stopper.feed(detok.flush())[0] + stopper.flush()
        completed = True
        yield Delta(tail, [], finish_reason=finish, stats=stats, prompt_logprobs=prompt_lps)
    finally:
        tokens.close()
        to_free = [rid]
        if completed and prefix is not None:
            # every token handed out but the last has its KV on the pipeline (and maybe some drafts
            # past a stop: cut them), so the cache holds exactly context[:n]
            n = len(prompt_ids) + stats.completion_tokens - 1
            pipeline.truncate(rid, n)
            to_free = prefix.keep(rid, context[:n])
        for r in to_free:
            pipeline.free(r)
        if speculation is not None:
            speculation.drafter.free(rid)


def _tokens(
    pipeline: Pipeline,
    rid: str,
    context: list[int],
    params: SamplingParams,
    max_new: int,
    context_length: int,
    stats: GenerationStats,
    spec: Speculation | None,
    cached: int = 0,
    constraint: Constraint | None = None,
    tokenizer: TextTokenizer | None = None,
) -> Generator[Pass | tuple[int, TokenLogprob | None] | list[TokenLogprob | None], np.ndarray | Decision | None, None]:
    """(token, its logprob when asked for) for each generated token, computed lazily: the pass for the
    next token is yielded (and its answer awaited) only when the caller asks for it. A pass that yields
    tokens carries a Sample: whoever runs it may decide the tokens where the logits are (the ring's last
    shard) and answer with the Decision, or answer with the logits and the decision is made here.
    With params.prompt_logprobs every prompt position's logits come back, and the prompt's logprobs are
    yielded (a list) before the first token."""
    rng = None if params.greedy else np.random.default_rng(params.seed)
    counts: dict[int, int] | None = {} if params.penalized else None
    prompt = np.asarray(context, dtype=np.int64)
    # end-of-sequence tokens refused until min_tokens (or always with ignore_eos)
    ban = (
        tuple(sorted(tokenizer.stop_ids)) if tokenizer is not None and (params.ignore_eos or params.min_tokens) else ()
    )

    def ban_rows(rows: int) -> int:
        made = len(context) - len(prompt)  # tokens generated so far: the first row predicts the next one
        return rows if params.ignore_eos else max(0, min(rows, params.min_tokens - made))

    allowed = constraint.plan([])[1] if constraint is not None else None
    sample = Sample(params, (), _copy(counts), None, rng, allowed, ban, ban_rows(1))
    if params.prompt_logprobs is None:
        starts = list(range(cached, len(prompt), PREFILL_CHUNK))  # positions < cached: the prefix cache
        for start in starts[:-1]:
            yield Pass(rid, prompt[start : start + PREFILL_CHUNK], start, 1, UNUSED)  # its answer is unused
        decision = _decided((yield Pass(rid, prompt[starts[-1] :], starts[-1], 1, sample)), sample)
    else:
        lps: list[TokenLogprob | None] = [None]  # nothing predicts the first token
        keep = Sample(SamplingParams(), keep_logits=True)
        starts = list(range(0, len(prompt), LOGPROB_CHUNK))
        for start in starts:
            piece = prompt[start : start + LOGPROB_CHUNK]
            last = start == starts[-1]
            todo = dataclasses.replace(sample, keep_logits=True) if last else keep
            answer = yield Pass(rid, piece, start, len(piece), todo)
            if not isinstance(answer, np.ndarray) or answer.shape[0] != len(piece):
                raise ValueError("a pass asking for every position's logits was answered without them")
            for j, row in enumerate(answer[: len(piece) - 1 if last else len(piece)]):
                lps.append(token_logprob(row, int(prompt[start + j + 1]), params.prompt_logprobs))
        yield lps
        decision = _decided(answer, todo)
    if constraint is not None:
        constraint.advance(decision.tokens)
    vocab = decision.vocab

    def emit(token: int) -> None:
        context.append(token)
        if counts is not None:
            counts[token] = counts.get(token, 0) + 1

    token = decision.tokens[0]
    emit(token)
    yield token, decision.logprobs[0] if decision.logprobs else None
    pos = len(prompt)  # positions cached on the pipeline; `token` at `pos` is not yet
    draft_rng = np.random.default_rng(None if params.seed is None else [params.seed, 1])
    rate = RateEstimate.starting_at(spec.rate_prior) if spec is not None else None
    idle, probe_every, drafted_before = 0, spec.probe_every if spec else 0, False
    # The adaptive length depends on timings: a seeded sampled request drafts a fixed length instead,
    # so that its random draws, and so its text, are the same every time.
    fixed = spec is not None and (not spec.adaptive or (params.seed is not None and not params.greedy))
    max_draft = params.draft_tokens if params.draft_tokens is not None else spec.max_draft if spec else 0
    while True:
        drafted: list[int] = []
        q = None
        if spec is not None and rate is not None:
            limit = min(max_draft, max_new - stats.completion_tokens - 1, context_length - pos - 1)
            if fixed:
                n = max(0, limit)
            else:
                n = spec.draft_length(rate.rate, limit, idle, probe_every)
            if n and idle >= probe_every:  # a probe: if drafting still does not pay, wait twice as long
                probe_every = min(probe_every * 2, 512)
            elif n:
                probe_every = spec.probe_every
            if n > 0:
                t = time.perf_counter()
                proposal = spec.drafter.propose(rid, context, n, params, draft_rng)
                drafted, q = _usable(proposal.tokens[:n], proposal.q, vocab)
                draft_time = time.perf_counter() - t
        allowed = None
        if constraint is not None:  # drafts the grammar refuses are cut before the pass
            drafted, allowed = constraint.plan(drafted)
            q = None if q is None else q[: len(drafted)]
        block = np.array([token, *drafted], dtype=np.int64)
        sample = Sample(params, tuple(drafted), _copy(counts), q, rng, allowed, ban, ban_rows(len(block)))
        t = time.perf_counter()
        decision = _decided((yield Pass(rid, block, pos, len(block), sample)), sample)
        pass_time = time.perf_counter() - t
        stats.decode_passes += 1
        if not drafted:
            idle += 1
        else:
            idle = 0
            k = decision.accepted
            pipeline.truncate(rid, pos + 1 + k)  # drop the rejected drafts' KV on every shard
            stats.draft_tokens += len(drafted)
            stats.accepted_tokens += k
            assert spec is not None and rate is not None
            rate.observe(len(drafted), k)
            spec.record_draft(len(drafted), k, draft_time if drafted_before else None)
            drafted_before = True
        if spec is not None:
            spec.record_pass(len(block), pass_time, len(decision.tokens))
        pos += len(decision.tokens)
        for i, tok in enumerate(decision.tokens):
            token = tok
            if constraint is not None:  # token by token: the loop above may end at any of them
                constraint.advance([tok])
            emit(tok)
            yield tok, decision.logprobs[i] if decision.logprobs else None


def _decided(answer: np.ndarray | Decision | None, sample: Sample) -> Decision:
    """The tokens of a pass from its answer: a Decision made where the logits were, or the logits."""
    if isinstance(answer, Decision):
        if len(answer.tokens) != answer.accepted + 1 or answer.accepted > len(sample.drafts):
            raise ValueError(f"a decision of {len(answer.tokens)} tokens for {len(sample.drafts)} drafts")
        return sample.adopt(answer)
    assert answer is not None, "a Pass is answered with its logits or its Decision"
    return sample.decide(answer)


def _copy(counts: dict[int, int] | None) -> dict[int, int] | None:
    return None if counts is None else dict(counts)


def _usable(tokens: list[int], q: np.ndarray | None, vocab: int) -> tuple[list[int], np.ndarray | None]:
    """A draft cut before its first token outside the vocabulary; none if its probabilities do not
    match the target's vocabulary (a draft from elsewhere is never trusted to be well-formed)."""
    if q is not None and (q.ndim != 2 or q.shape[1] != vocab or q.shape[0] < len(tokens)):
        return [], None
    good = next((i for i, t in enumerate(tokens) if not 0 <= t < vocab), len(tokens))
    return tokens[:good], q
