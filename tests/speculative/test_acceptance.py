"""The acceptance rule alone: exactness of the first emitted token's law, greedy behaviour, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from exo_actor.sampling.sampler import draw
from exo_actor.speculative import accept_drafts, expected_tokens
from exo_actor.speculative.speculation import RateEstimate, Speculation, choose_draft_length


def _dist(rng: np.random.Generator, v: int) -> np.ndarray:
    p = rng.dirichlet(np.ones(v))
    p[rng.integers(v)] = 0.0  # a token the filters removed
    return p / p.sum()


@pytest.mark.parametrize("deterministic", [False, True])
def test_emitted_token_follows_the_target(deterministic):
    """Whatever the draft proposes, the first emitted token is distributed as p[0] (V=5, 40k trials,
    seed 7; the chi-square statistic must stay under 18.5, the 0.999 quantile for 4 degrees of freedom)."""
    rng = np.random.default_rng(7)
    V, trials = 5, 40_000
    p = np.stack([_dist(rng, V) for _ in range(3)])
    q = np.stack([_dist(rng, V) for _ in range(2)])
    counts = np.zeros(V)
    for _ in range(trials):
        if deterministic:  # prompt lookup: a fixed guess, q one-hot
            drafted = [1, 3]
            k, nxt = accept_drafts(p, None, drafted, rng.random, lambda d: draw(d, rng))
        else:
            drafted = [draw(q[0], rng), draw(q[1], rng)]
            k, nxt = accept_drafts(p, q, drafted, rng.random, lambda d: draw(d, rng))
        counts[drafted[0] if k >= 1 else nxt] += 1
    expected = p[0] * trials
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token with target probability 0 was emitted"
    chi2 = (((counts - expected) ** 2)[keep] / expected[keep]).sum()
    assert chi2 < 18.5, (chi2, counts, expected)


def test_greedy_accepts_exactly_the_argmax_prefix():
    V = 6
    target = [4, 1, 2, 5]
    p = np.zeros((4, V))
    p[np.arange(4), target] = 1.0
    argmax = lambda d: int(np.argmax(d))  # noqa: E731
    assert accept_drafts(p, None, [4, 1, 2], lambda: 0.0, argmax) == (3, 5)  # all accepted + bonus
    assert accept_drafts(p, None, [4, 3, 2], lambda: 0.0, argmax) == (1, 1)  # stops at the mismatch
    assert accept_drafts(p, None, [0, 1, 2], lambda: 0.0, argmax) == (0, 4)
    q = np.full((3, V), 1 / V)
    assert accept_drafts(p, q, [4, 1, 0], lambda: 0.0, argmax) == (2, 2)


def test_rows_must_match_the_draft():
    with pytest.raises(ValueError, match="target rows"):
        accept_drafts(np.ones((2, 4)) / 4, None, [1, 2], lambda: 0.5, lambda d: 0)


def test_expected_tokens_matches_the_geometric_sum():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def test_draft_length_follows_acceptance_and_costs():
    flat = [1.0] * 5  # verification costs the same for any length (latency-bound ring)
    assert choose_draft_length(0.9, 4, flat, 0.0) == 4
    assert choose_draft_length(0.0, 4, flat, 0.0) == 0  # nothing is ever accepted: don't draft
    steep = [1.0, 2.0, 3.0, 4.0, 5.0]  # verification cost grows with length (compute-bound)
    assert choose_draft_length(0.5, 4, steep, 0.0) == 0
    assert choose_draft_length(0.95, 4, [1.0, 1.2, 1.4, 1.6, 1.8], 0.0) == 4


def test_speculation_probes_again_after_idle_passes():
    spec = Speculation(drafter=None, max_draft=4)  # type: ignore[arg-type]
    assert spec.draft_length(0.9, 4, idle_passes=0) == 0  # a plain pass first: the cost to beat
    spec.record_pass(1, 0.01, 1)
    assert spec.draft_length(0.9, 4, idle_passes=0) == 4  # longer passes not measured yet: try them
    spec.record_pass(5, 0.05, 1)
    assert spec.draft_length(0.0, 4, idle_passes=0) == 0
    assert spec.draft_length(0.0, 4, idle_passes=spec.probe_every) == 2
    spec.record_draft(2, 0, 0.5)  # drafting costs more than it could ever save: no more probes
    assert spec.draft_length(0.0, 4, idle_passes=1000) == 0
    fixed = Speculation(drafter=None, max_draft=3, adaptive=False)  # type: ignore[arg-type]
    assert fixed.draft_length(0.0, 10, 0) == 3 and fixed.draft_length(0.0, 1, 0) == 1


def test_rate_estimate_counts_trials_up_to_the_rejection():
    r = RateEstimate(0.0, 0.0)
    r.observe(drafted=4, accepted=4, decay=1.0)
    r.observe(drafted=4, accepted=1, decay=1.0)  # 1 success, then the rejection: 2 trials
    assert r.rate == pytest.approx(5 / 6)


def test_malformed_drafts_are_cut_or_dropped():
    from exo_actor.runtime.generation import _usable

    q = np.full((3, 5), 0.2)
    assert _usable([1, 2, 3], q, 5) == ([1, 2, 3], q)
    assert _usable([1, 7, 3], None, 5) == ([1], None)  # a token outside the vocabulary ends the draft
    assert _usable([1, 2], np.full((2, 6), 0.1), 5) == ([], None)  # probabilities over another vocabulary
    assert _usable([1, 2, 3], np.full((2, 5), 0.2), 5) == ([], None)  # fewer rows than tokens
