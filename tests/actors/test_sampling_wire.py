"""Sampling on the last shard chooses exactly the tokens the router would: the Sample travels as a
SampleSpec, the shard's Choice comes back in a Sampled message, and the request's generator continues
from the same state as if it had drawn here."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo_actor.actors.sampling_wire import choose, decision_of, spec_of
from exo_actor.errors import InvalidRequestError
from exo_actor.sampling import SamplingParams
from exo_actor.sampling.decide import Sample, decide, generator, rng_words
from exo_actor.transport.messages import Forward, Sampled, decode

VOCAB = 40


@st.composite
def cases(draw):  # type: ignore[no-untyped-def]
    greedy = draw(st.booleans())
    params = SamplingParams(
        temperature=0.0 if greedy else draw(st.floats(0.2, 2.0)),
        top_k=draw(st.integers(0, VOCAB)),
        top_p=draw(st.floats(0.05, 1.0)),
        min_p=draw(st.floats(0.0, 0.5)),
        presence_penalty=draw(st.floats(-2.0, 2.0)),
        frequency_penalty=draw(st.sampled_from([0.0, 0.5, -1.0])),
        logprobs=draw(st.one_of(st.none(), st.integers(0, 5))),
        seed=draw(st.integers(0, 2**32)),
    )
    drafts = draw(st.lists(st.integers(0, VOCAB - 1), max_size=4))
    counts = draw(st.dictionaries(st.integers(0, VOCAB - 1), st.integers(1, 5), max_size=8))
    logits = np.random.default_rng(draw(st.integers(0, 2**32))).normal(0, 3, (len(drafts) + 1, VOCAB))
    return params, drafts, counts if params.penalized else None, logits.astype(np.float32)


def over_the_wire(logits: np.ndarray, sample: Sample):  # type: ignore[no-untyped-def]
    """Router -> last shard -> router, through the real codec."""
    spec = spec_of(sample)
    fwd = Forward("r", "n0", "n0", 1, 7, len(sample.drafts) + 1, np.zeros(1, np.int64), "", 0, [spec])
    got = decode([bytes(f) for f in fwd.encode()])
    assert isinstance(got, Forward)
    choice = choose(logits, got.sample[0])
    back = decode([bytes(f) for f in Sampled("n2", ["r"], [7], [choice]).encode()])
    assert isinstance(back, Sampled)
    return sample.adopt(decision_of(back.choices[0]))


@settings(max_examples=300, deadline=None)
@given(cases())
def test_the_last_shard_decides_what_the_router_would(case):  # type: ignore[no-untyped-def]
    params, drafts, counts, logits = case
    here_rng = None if params.greedy else np.random.default_rng(params.seed)
    there_rng = None if params.greedy else np.random.default_rng(params.seed)
    here = decide(logits, params, drafts, counts, None, here_rng)
    there = over_the_wire(logits, Sample(params, tuple(drafts), counts, None, there_rng))
    assert there.tokens == here.tokens and there.accepted == here.accepted and there.vocab == VOCAB
    assert there.logprobs == here.logprobs
    if here_rng is not None and there_rng is not None:  # the generator continues from the same state
        assert there_rng.bit_generator.state == here_rng.bit_generator.state
        assert there_rng.random() == here_rng.random()


@given(st.integers(0, 2**64 - 1), st.integers(0, 50))
def test_a_generator_state_survives_its_words(seed, skip):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    rng.random(skip)
    rng.integers(0, 2**32, dtype=np.uint32)  # leaves a buffered half word (has_uint32)
    copy = generator(rng_words(rng))
    assert copy.bit_generator.state == rng.bit_generator.state
    assert copy.random(4).tolist() == rng.random(4).tolist()


def test_samples_that_cannot_travel_keep_their_logits_coming_back():
    params = SamplingParams(temperature=0.7, seed=1, presence_penalty=0.5)
    assert Sample(params, (), {1: 1}, None, np.random.default_rng(1)).portable
    assert not Sample(params, (1,), None, np.ones((1, VOCAB)), np.random.default_rng(1)).portable  # a draft's q
    many = {t: 1 for t in range(5000)}
    assert not Sample(params, (), many, None, np.random.default_rng(1)).portable


def test_a_spec_that_is_not_a_request_fails_as_an_invalid_request():
    logits = np.zeros((1, VOCAB), np.float32)
    greedy = spec_of(Sample(SamplingParams()))
    sampled = spec_of(Sample(SamplingParams(temperature=1.0), rng=np.random.default_rng(3)))
    two_rows = np.zeros((2, VOCAB), np.float32)
    for bad, rows, needle in [
        (dataclass_replace(greedy, temperature=500.0), logits, "temperature"),
        (dataclass_replace(greedy, rng=sampled.rng), logits, "generator"),
        (dataclass_replace(sampled, rng=[]), logits, "generator"),
        (dataclass_replace(greedy, drafts=[VOCAB + 3]), two_rows, "vocabulary"),
        (dataclass_replace(greedy, drafts=[1, 2]), two_rows, "logits rows"),
    ]:
        with pytest.raises(InvalidRequestError, match=needle):
            choose(rows, bad)


def dataclass_replace(obj, **changes):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.replace(obj, **changes)
