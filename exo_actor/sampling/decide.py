"""From a pass's logits to the tokens it yields: penalties, the sampling filters, the draw or the
speculative acceptance rule, and the logprobs asked for. One pure function, `decide`, run wherever the
logits are: on the router when a pass's logits come back to it, or on the ring's last shard, which then
sends back a few token ids instead of the logits rows (196 KB each for a 49k vocabulary).

Everything a decision needs travels with the pass (`Sample`): the request's sampling parameters, the
drafted tokens being verified, the counts of the tokens generated so far (for the penalties) and the
seeded generator's state; the generator's new state comes back with the tokens. The same function on
the same logits with the same state gives the same tokens wherever it runs, so a request's text does
not depend on where it was sampled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..speculative.acceptance import accept_drafts
from .params import SamplingParams
from .sampler import draw, filtered_probs

MAX_COUNTS = 2048  # distinct generated tokens whose counts travel for the penalties (more: logits come back)
RNG_WORDS = 6  # a PCG64 generator's state as 64-bit words: state (2), increment (2), has_uint32, uinteger
MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the most likely alternatives at its position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Decision:
    """The tokens a pass yields: the accepted drafts then one more token (`accepted` drafts of them), each
    token's logprob when asked for, the generator's state after the draws (() when it drew nothing), and
    the vocabulary's size (the logits rows' length: drafts and counts are checked against it)."""

    tokens: tuple[int, ...]
    vocab: int
    accepted: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    rng: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Sample:
    """What choosing a pass's tokens needs, as the router holds it: `decide` runs it here; `portable`
    says whether it can travel to the last shard instead (a draft's probabilities, a dense [N, V] array,
    and very many penalty counts stay here: their logits come back)."""

    params: SamplingParams
    drafts: tuple[int, ...] = ()
    counts: Mapping[int, int] | None = None  # token -> occurrences among those generated (penalties only)
    q: np.ndarray | None = None  # the draft's probabilities [N, V] (None: a deterministic draft)
    rng: np.random.Generator | None = field(default=None)  # the request's generator (None: greedy)
    allowed: np.ndarray | None = None  # a grammar's allowed tokens [len(drafts) + 1, vocab] (None: all)
    ban: tuple[int, ...] = ()  # tokens refused (end of sequence before min_tokens, or with ignore_eos) ...
    ban_rows: int = 0  # ... in the first this many rows (the positions still under min_tokens)
    keep_logits: bool = False  # the logits rows come back whatever the decision (a prompt's logprobs)

    @property
    def portable(self) -> bool:
        local = self.q is not None or self.allowed is not None or self.keep_logits
        local = local or bool(self.params.logit_bias) or (bool(self.ban) and self.ban_rows > 0)
        return not local and (self.counts is None or len(self.counts) <= MAX_COUNTS)

    def decide(self, logits: np.ndarray) -> Decision:
        """The tokens the pass yields from its logits; draws advance the request's generator."""
        ban = self.ban if self.ban_rows > 0 else ()
        return decide(logits, self.params, self.drafts, self.counts, self.q, self.rng, self.allowed, ban, self.ban_rows)

    def adopt(self, decision: Decision) -> Decision:
        """A decision made elsewhere from this Sample's state: continue the request's generator from the
        state the draws left (the draws happened there)."""
        if self.rng is not None and decision.rng:
            self.rng.bit_generator.state = rng_state(decision.rng)
        return decision


# The Sample of a pass whose answer nobody uses (a prompt's pieces before its last): the cheapest answer a
# ring can give is one greedy token id, not a logits row.
UNUSED = Sample(SamplingParams())


def apply_penalties(logits: np.ndarray, counts: np.ndarray, params: SamplingParams) -> np.ndarray:
    """OpenAI's presence/frequency penalties over the tokens generated so far."""
    penalty = params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    return logits - penalty.astype(np.float32)


def token_logprob(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """log softmax(logits)[token] and the `top` most likely tokens with theirs."""
    z = logits.astype(np.float64)
    logp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
    best = np.argpartition(-logp, top)[:top] if 0 < top < logp.size else np.arange(min(top, logp.size))
    best = best[np.argsort(-logp[best], kind="stable")]
    return TokenLogprob(token, float(logp[token]), tuple((int(i), float(logp[i])) for i in best))


def decide(
    logits: np.ndarray,
    params: SamplingParams,
    drafts: Sequence[int] = (),
    counts: Mapping[int, int] | None = None,
    q: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    allowed: np.ndarray | None = None,
    ban: Sequence[int] = (),
    ban_rows: int = 0,
) -> Decision:
    """The tokens a pass yields. `logits` ends with one row per drafted token plus one (the rows of the
    positions that predict them); penalties count the tokens generated so far plus the drafts before each
    row. Without drafts: one token, the argmax (greedy) or a draw; with drafts: the acceptance rule
    (speculative/acceptance.py) keeps a prefix of them and adds the token after it. `allowed` (a grammar's
    tokens at each of those rows; tokens past its width are refused) sets the others to -inf first, and so
    do `ban` (tokens refused in the first `ban_rows` rows, unless nothing else is left) and the request's
    logit_bias (added to the logits before everything else, as OpenAI does)."""
    n = len(drafts)
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] < n + 1:
        raise ValueError(f"{n} drafted tokens need {n + 1} logits rows, the pass has {logits.shape[:1]}")
    if not params.greedy and rng is None:
        raise ValueError("a sampled request needs its generator")
    vocab = logits.shape[1]
    if any(not 0 <= t < vocab for t in [*drafts, *(counts or ())]):
        raise ValueError("drafted tokens and penalty counts must lie in the vocabulary")
    dense = None
    if counts is not None:
        dense = np.zeros(vocab, dtype=np.float32)
        for t, c in counts.items():
            dense[t] = c

    mask = None
    if allowed is not None:
        if allowed.ndim != 2 or allowed.shape[0] != n + 1:
            raise ValueError(f"{n} drafted tokens need {n + 1} rows of allowed tokens")
        mask = np.zeros((n + 1, vocab), dtype=bool)
        width = min(vocab, allowed.shape[1])
        mask[:, :width] = allowed[:, :width]

    bias = None
    if params.logit_bias:
        bias = np.zeros(vocab, dtype=np.float32)
        for t, b in params.logit_bias:
            if t < vocab:
                bias[t] += b
    banned = [t for t in ban if 0 <= t < vocab]

    def row(i: int) -> np.ndarray:
        r = logits[logits.shape[0] - n - 1 + i]
        if bias is not None:
            r = r + bias
        if dense is not None:
            c = dense.copy()
            for t in drafts[:i]:
                c[t] += 1
            r = apply_penalties(r, c, params)
        if mask is not None:
            r = np.where(mask[i], r, np.float32(-np.inf)).astype(np.float32)
        if banned and i < ban_rows:
            kept = r.copy()
            kept[banned] = -np.inf
            if np.isfinite(kept).any():  # a grammar that allows nothing else wins
                r = kept
        return r

    rows = [row(i) for i in range(n + 1)]
    if not n:
        accepted = 0
        token = int(np.argmax(rows[0])) if params.greedy else draw(filtered_probs(rows[0], params), rng)  # type: ignore[arg-type]
    else:
        p = np.stack([filtered_probs(r, params) for r in rows])
        qd = None if q is None else q[:n]
        if params.greedy:
            accepted, token = accept_drafts(p, qd, drafts, lambda: 0.0, _argmax)
        else:
            assert rng is not None
            accepted, token = accept_drafts(p, qd, drafts, rng.random, lambda probs: draw(probs, rng))
    tokens = (*drafts[:accepted], token)
    lps: tuple[TokenLogprob, ...] = ()
    if params.logprobs is not None:
        lps = tuple(token_logprob(rows[i], t, params.logprobs) for i, t in enumerate(tokens))
    return Decision(tuple(int(t) for t in tokens), vocab, accepted, lps, rng_words(rng) if rng is not None else ())


def rng_words(rng: np.random.Generator) -> tuple[int, ...]:
    """A PCG64 generator's state as RNG_WORDS unsigned 64-bit words (what msgpack carries)."""
    state = rng.bit_generator.state
    if state.get("bit_generator") != "PCG64":
        raise ValueError(f"only PCG64 generators travel, not {state.get('bit_generator')}")
    s, inc = state["state"]["state"], state["state"]["inc"]
    return (s >> 64, s & MASK64, inc >> 64, inc & MASK64, int(state["has_uint32"]), int(state["uinteger"]))


def rng_state(words: Sequence[int]) -> dict[str, object]:
    """The PCG64 state dict of rng_words' words (ValueError when they cannot be one)."""
    if len(words) != RNG_WORDS or any(not 0 <= w <= MASK64 for w in words) or words[4] not in (0, 1):
        raise ValueError(f"a generator's state is {RNG_WORDS} 64-bit words")
    return {
        "bit_generator": "PCG64",
        "state": {"state": (words[0] << 64) | words[1], "inc": (words[2] << 64) | words[3]},
        "has_uint32": words[4],
        "uinteger": words[5] & 0xFFFFFFFF,
    }


def generator(words: Sequence[int]) -> np.random.Generator:
    """A generator continuing from rng_words' words."""
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = rng_state(words)
    return rng


def _argmax(p: np.ndarray) -> int:
    return int(np.argmax(p))
