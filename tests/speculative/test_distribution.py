"""Speculative sampling is lossless: with a tiny random target and a different tiny random draft over a
3-token vocabulary, sequences generated with speculation follow the target's own distribution.

The exact law of 4-token continuations (81 outcomes) is computed from the target; 4,000 seeded runs
(seeds 0..3999, so the test is deterministic) are compared with it by a chi-square test whose
threshold, 124.8, is the 0.999 quantile for 80 degrees of freedom. The same test with an acceptance
rule that keeps every draft must fail it.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import pytest

from exo_actor.engines.numpy_engine import NumpyShardRunner
from exo_actor.models.config import ModelArgs
from exo_actor.models.llama import LlamaShard
from exo_actor.runtime.generation import LocalPipeline, generate
from exo_actor.sampling import SamplingParams, filtered_probs
from exo_actor.speculative import Speculation
from exo_actor.speculative.drafts import ModelDrafter
from exo_actor.tokenizer import TextTokenizer
from exo_actor.weights.base import load_shard_weights
from tests.tiny import TinySpec, hf_config, make_weights, tiny_tokenizer

V, LENGTH, RUNS, CHI2_999_DF80 = 3, 4, 4000, 124.8
PROMPT = [0, 1, 2, 1]
PARAMS = dict(temperature=0.9, min_p=0.05, max_tokens=LENGTH)


class _Dict:
    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self.t = tensors

    def has(self, name: str) -> bool:
        return name in self.t

    def get(self, name: str) -> np.ndarray:
        return self.t[name]


def tiny_pipeline(seed: int, layers: int = 2) -> LocalPipeline:
    spec = TinySpec(layers=layers, hidden_size=32, intermediate=48, seed=seed, context=32, tied=False)
    weights = make_weights(spec, V)
    weights["lm_head.weight"] *= 2  # logits of order 1: distributions far from uniform and from one-hot
    args = ModelArgs.from_hf_dict(hf_config(spec, V))
    shard = LlamaShard(args, 0, layers, load_shard_weights(args, _Dict(weights), 0, layers))
    return LocalPipeline([NumpyShardRunner(shard)])


@lru_cache(maxsize=1)
def tokenizer() -> TextTokenizer:
    return TextTokenizer(tiny_tokenizer(), None, None, frozenset(), None)


def exact_law(pipe: LocalPipeline, params: SamplingParams) -> dict[tuple[int, ...], float]:
    law = {}
    for seq in itertools.product(range(V), repeat=LENGTH):
        prob = 1.0
        for i in range(LENGTH):
            ctx = PROMPT + list(seq[:i])
            rid = "x" + ",".join(map(str, ctx))
            logits = pipe.forward(rid, np.array(ctx), 0)
            pipe.free(rid)
            prob *= filtered_probs(logits[-1], params)[seq[i]]
        law[seq] = prob
    return law


def chi_square(counts: dict[tuple[int, ...], int], law: dict[tuple[int, ...], float], n: int) -> float:
    stat, pooled_obs, pooled_exp = 0.0, 0.0, 0.0
    for seq, p in law.items():
        e, o = p * n, counts.get(seq, 0)
        if e < 5:  # pool rare outcomes so the chi-square approximation holds
            pooled_obs, pooled_exp = pooled_obs + o, pooled_exp + e
        else:
            stat += (o - e) ** 2 / e
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
    if any(law.get(seq, 0.0) == 0.0 for seq in counts):
        return float("inf")  # a sequence the target can never produce (its filters remove a token)
    return stat


def sample(target: LocalPipeline, spec: Speculation | None) -> dict[tuple[int, ...], int]:
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(RUNS):
        params = SamplingParams(seed=seed, **PARAMS)
        ids = [t for d in generate(target, tokenizer(), PROMPT, params, 32, speculation=spec) for t in d.token_ids]
        counts[tuple(ids)] = counts.get(tuple(ids), 0) + 1
    return counts


@pytest.fixture(scope="module")
def models():
    target, draft = tiny_pipeline(seed=1), tiny_pipeline(seed=2, layers=1)
    law = exact_law(target, SamplingParams(**PARAMS))
    return target, draft, law


def _speculation(draft: LocalPipeline) -> Speculation:
    return Speculation(ModelDrafter("tiny-draft", draft, 32), max_draft=2, adaptive=False)


def test_the_draft_differs_from_the_target(models):
    """Otherwise the broken-rule check below would prove nothing."""
    target, draft, _ = models
    pt = filtered_probs(target.forward("a", np.array(PROMPT), 0)[-1], SamplingParams(**PARAMS))
    pd = filtered_probs(draft.forward("a", np.array(PROMPT), 0)[-1], SamplingParams(**PARAMS))
    target.free("a"), draft.free("a")
    assert 0.5 * np.abs(pt - pd).sum() > 0.2


def test_speculative_sampling_follows_the_target(models):
    target, draft, law = models
    spec = _speculation(draft)
    stat = chi_square(sample(target, spec), law, RUNS)
    assert stat < CHI2_999_DF80, stat
    assert 0.0 < spec.acceptance_rate < 1.0  # both branches of the rule ran
    assert spec.passes > RUNS


def test_plain_sampling_passes_the_same_test(models):
    target, _, law = models
    assert chi_square(sample(target, None), law, RUNS) < CHI2_999_DF80


def test_a_rule_that_accepts_every_draft_fails_it(models, monkeypatch):
    target, draft, law = models

    def accept_all(p, q, drafted, uniform, draw):
        return len(drafted), draw(p[len(drafted)])

    monkeypatch.setattr("exo_actor.sampling.decide.accept_drafts", accept_all)
    assert chi_square(sample(target, _speculation(draft)), law, RUNS) > CHI2_999_DF80
