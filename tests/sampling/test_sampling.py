"""Sampling parameters, filters and seeded draws; stop strings over a stream."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo_actor.errors import InvalidRequestError
from exo_actor.sampling import Sampler, SamplingParams, StopMatcher, filtered_probs


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"temperature": "hot"},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"min_p": 2.0},
        {"max_tokens": 0},
        {"seed": -3},
        {"stop": ("",)},
        {"top_k": 1.5},
        {"max_tokens": True},
        {"stop": tuple("x" * 20)},
    ],
)
def test_invalid_values_are_rejected(kwargs):
    with pytest.raises(InvalidRequestError):
        SamplingParams(**kwargs)


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32)
    assert Sampler(SamplingParams()).sample(logits) == 1
    assert filtered_probs(logits, SamplingParams()).tolist() == [0, 1, 0, 0]


logit_vectors = st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=50).map(np.array)


@settings(max_examples=200, deadline=None)
@given(logit_vectors, st.integers(0, 60), st.floats(0.01, 1.0), st.floats(0.0, 1.0), st.floats(0.05, 3.0))
def test_filters_keep_a_valid_distribution_over_the_top_tokens(logits, top_k, top_p, min_p, temp):
    p = filtered_probs(logits, SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p))
    assert np.isclose(p.sum(), 1.0) and (p >= 0).all()
    top = logits >= logits.max() - 1e-9
    assert p[top].sum() > 0  # the most likely token (or one tied with it) always survives
    kept = p > 0
    if 0 < top_k < len(logits):
        assert kept.sum() <= top_k + np.sum(logits == np.sort(logits)[-top_k]) - 1
    # whatever survives is at least as likely as whatever was cut
    if (~kept).any():
        assert logits[kept].min() >= logits[~kept].max() - 1e-9


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert (filtered_probs(logits, SamplingParams(temperature=1.0, top_p=0.7)) > 0).tolist() == [1, 1, 0, 0]
    assert (filtered_probs(logits, SamplingParams(temperature=1.0, top_p=0.79)) > 0).tolist() == [1, 1, 0, 0]
    assert (filtered_probs(logits, SamplingParams(temperature=1.0, top_p=0.81)) > 0).tolist() == [1, 1, 1, 0]
    assert (filtered_probs(logits, SamplingParams(temperature=1.0, min_p=0.5)) > 0).tolist() == [1, 1, 0, 0]


def test_seeded_draws_follow_the_distribution_and_repeat():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    params = SamplingParams(temperature=1.0, seed=123)
    a = [Sampler(params).sample(logits) for _ in range(3)]
    s1, s2 = Sampler(params), Sampler(params)
    draws1 = [s1.sample(logits) for _ in range(3000)]
    assert draws1 == [s2.sample(logits) for _ in range(3000)]
    assert len(set(a)) == 1
    freq = np.bincount(draws1, minlength=3) / 3000
    np.testing.assert_allclose(freq, [0.6, 0.3, 0.1], atol=0.04)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=6), max_size=12), st.lists(st.text(min_size=1, max_size=4), max_size=3))
def test_stop_matcher_emits_exactly_the_text_before_the_first_stop(pieces, stops):
    m = StopMatcher(tuple(stops))
    out, stopped = "", False
    for piece in pieces:
        text, stopped = m.feed(piece)
        out += text
        if stopped:
            break
    if not stopped:
        out += m.flush()
    full = "".join(pieces)
    hits = [i for i in (full.find(s) for s in stops) if i >= 0]
    assert out == (full[: min(hits)] if hits else full)
    assert stopped == bool(hits)
