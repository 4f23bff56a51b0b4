"""Sampling on the ring's last shard: a pass's Sample as it travels (SampleSpec), the shard's choice of
tokens (Choice), and back to the Decision the generation loop continues from.

The router sends each request's sampling state with the pass; the last shard runs sampling/decide.py on
the logits it just computed and answers with a few token ids instead of the logits rows. The same
function on the same logits with the same generator state gives the same tokens as on the router.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidRequestError
from ..sampling.decide import Decision, Sample, TokenLogprob, decide, generator, rng_words
from ..sampling.params import SamplingParams
from ..transport.messages import Choice, SampleSpec


def spec_of(sample: Sample) -> SampleSpec:
    """The wire form of a portable Sample (Sample.portable)."""
    p = sample.params
    counts = [x for t, c in sorted((sample.counts or {}).items()) for x in (int(t), int(c))]
    rng = list(rng_words(sample.rng)) if sample.rng is not None else []
    return SampleSpec(
        p.temperature,
        p.top_k,
        p.top_p,
        p.min_p,
        p.presence_penalty,
        p.frequency_penalty,
        0 if p.logprobs is None else p.logprobs + 1,
        [int(t) for t in sample.drafts],
        counts,
        rng,
    )


def choose(logits: np.ndarray, spec: SampleSpec) -> Choice:
    """On the last shard: the tokens a pass yields (InvalidRequestError for a spec that cannot be one)."""
    try:
        params = SamplingParams(
            temperature=spec.temperature,
            top_k=spec.top_k,
            top_p=spec.top_p,
            min_p=spec.min_p,
            presence_penalty=spec.presence_penalty,
            frequency_penalty=spec.frequency_penalty,
            logprobs=spec.logprobs - 1 if spec.logprobs else None,
        )
        if params.greedy != (not spec.rng):
            raise ValueError("a sampled request carries its generator's state, a greedy one none")
        rng = generator(spec.rng) if spec.rng else None
        counts = dict(zip(spec.counts[::2], spec.counts[1::2])) if params.penalized else None
        d = decide(np.asarray(logits, dtype=np.float32), params, spec.drafts, counts, None, rng)
    except (ValueError, InvalidRequestError) as exc:
        raise InvalidRequestError(f"the pass's sampling state is invalid: {exc}") from None
    lps = [[lp.logprob, [i for i, _ in lp.top], [v for _, v in lp.top]] for lp in d.logprobs]
    return Choice(list(d.tokens), d.accepted, d.vocab, list(d.rng), lps)


def decision_of(choice: Choice) -> Decision:
    """The router's side: the Decision a Choice stands for."""
    lps = tuple(
        TokenLogprob(t, float(row[0]), tuple(zip((int(i) for i in row[1]), (float(v) for v in row[2]))))
        for t, row in zip(choice.tokens, choice.logprobs)
    )
    return Decision(tuple(choice.tokens), choice.vocab, choice.accepted, lps, tuple(choice.rng))
