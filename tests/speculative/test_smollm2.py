"""Temperature 0 on the real SmolLM2-135M: speculative output is token-for-token plain decoding, for
every draft source; caches roll back to the accepted length after every pass."""

from __future__ import annotations

import numpy as np
import pytest

from exo_actor.runtime.generation import LocalPipeline, generate
from exo_actor.runtime.local import load_local
from exo_actor.sampling import SamplingParams
from exo_actor.speculative import Speculation
from exo_actor.speculative.drafts import ModelDrafter, load_drafter
from exo_actor.tokenizer import chat_prompt_ids

pytestmark = pytest.mark.slow

PARAGRAPH = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He polished the great lens, "
    "trimmed the wick and lit the lamp, and then he sat by the window with a cup of tea, watching the "
    "ships pass safely beyond the rocks."
)
GROUNDED = [{"role": "user", "content": f"Rewrite this paragraph in the past perfect tense:\n\n{PARAGRAPH}"}]
OPEN = [{"role": "user", "content": "List three facts about the planet Mars."}]


class CheckedPipeline:
    """A pipeline that checks, before every pass, that every shard caches exactly the positions
    before the pass (so rejected drafts were rolled back) and records the truncations."""

    def __init__(self, inner: LocalPipeline) -> None:
        self.inner, self.truncations, self.passes = inner, 0, 0

    def forward(self, rid, tokens, start_pos, num_logits=1):
        if start_pos > 0:
            lengths = [s.cached_length(rid) for s in self.inner.shards]
            assert lengths == [start_pos] * len(lengths), (lengths, start_pos)
        self.passes += 1
        return self.inner.forward(rid, tokens, start_pos, num_logits)

    def truncate(self, rid, length):
        self.truncations += 1
        self.inner.truncate(rid, length)
        assert [s.cached_length(rid) for s in self.inner.shards] == [length] * len(self.inner.shards)

    def free(self, rid):
        self.inner.free(rid)


@pytest.fixture(scope="module")
def target():
    return load_local("smollm2-135m", shards=3)


@pytest.fixture(scope="module")
def plain(target):
    files, pipe = target
    out = {}
    for name, messages in (("grounded", GROUNDED), ("open", OPEN)):
        ids = chat_prompt_ids(files.tokenizer, messages)
        out[name] = _tokens(pipe, files, ids, SamplingParams(max_tokens=48), None)
    return out


def _tokens(pipe, files, ids, params, spec):
    deltas = list(generate(pipe, files.tokenizer, ids, params, files.args.max_position_embeddings, speculation=spec))
    return [t for d in deltas for t in d.token_ids], deltas[-1].stats


@pytest.mark.parametrize("draft", ["ngram", "smollm2-135m", "smollm2-135m:layers=8"])
@pytest.mark.parametrize("prompt", ["grounded", "open"])
def test_greedy_speculation_equals_plain_decoding(target, plain, draft, prompt):
    files, pipe = target
    spec = Speculation(load_drafter(draft, files), max_draft=4, adaptive=False)
    ids = chat_prompt_ids(files.tokenizer, GROUNDED if prompt == "grounded" else OPEN)
    checked = CheckedPipeline(pipe)
    got, stats = _tokens(checked, files, ids, SamplingParams(max_tokens=48), spec)
    expected, _ = plain[prompt]
    assert got == expected, files.tokenizer.decode(got)
    assert stats.draft_tokens > 0 and stats.decode_passes == checked.passes - 1
    if draft == "smollm2-135m":  # the target as its own draft: every draft is accepted
        assert stats.acceptance_rate == 1.0 and stats.tokens_per_pass > 4.5
    if draft == "ngram" and prompt == "grounded":
        assert stats.tokens_per_pass > 1.5  # the rewrite copies most of the paragraph
    for shard in pipe.shards:
        assert shard.cached_length("any") == 0 and not shard.caches  # freed at the end
    if isinstance(spec.drafter, ModelDrafter):
        assert not spec.drafter.seen and not spec.drafter.pipeline.shards[0].caches


def test_rejections_roll_back_every_cache(target):
    """The 8-layer self-draft is often wrong: every pass after a rejection starts from the accepted
    length on all three shards (CheckedPipeline asserts it), and the draft's cache follows."""
    files, pipe = target
    drafter = load_drafter("smollm2-135m:layers=8", files)
    spec = Speculation(drafter, max_draft=4, adaptive=False)
    ids = chat_prompt_ids(files.tokenizer, OPEN)
    checked = CheckedPipeline(pipe)
    gen = generate(checked, files.tokenizer, ids, SamplingParams(max_tokens=40), 2048, "r1", spec)
    for _ in gen:
        if "r1" in drafter.seen:
            assert drafter.pipeline.shards[0].cached_length("r1") == len(drafter.seen["r1"])
    assert 0 < spec.acceptance_rate < 1 and checked.truncations >= spec.passes - 1  # the last may not draft


def test_penalties_and_sampling_settings_keep_greedy_exact(target):
    files, pipe = target
    ids = chat_prompt_ids(files.tokenizer, GROUNDED)
    params = SamplingParams(max_tokens=40, frequency_penalty=0.6, presence_penalty=0.3, logprobs=2)
    plain_deltas = list(generate(pipe, files.tokenizer, ids, params, 2048))
    spec = Speculation(load_drafter("ngram", files), max_draft=4, adaptive=False)
    spec_deltas = list(generate(pipe, files.tokenizer, ids, params, 2048, speculation=spec))
    assert [d.token_ids for d in spec_deltas] == [d.token_ids for d in plain_deltas]
    for a, b in zip(plain_deltas, spec_deltas):
        for x, y in zip(a.logprobs, b.logprobs):
            assert x.token_id == y.token_id and abs(x.logprob - y.logprob) < 1e-3


def test_sampled_speculation_is_reproducible_with_a_seed(target):
    files, pipe = target
    ids = chat_prompt_ids(files.tokenizer, OPEN)
    params = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.95, seed=11)
    spec = Speculation(load_drafter("smollm2-135m:layers=8", files), max_draft=3)
    a, _ = _tokens(pipe, files, ids, params, spec)
    b, _ = _tokens(pipe, files, ids, params, spec)
    assert a == b and len(a) > 0


def test_adaptive_length_stops_drafting_when_drafts_are_poor(target):
    """A draft that is never right: the router stops drafting after a few passes."""
    files, pipe = target

    class Wrong:
        name = "wrong"

        def propose(self, rid, context, n, params, rng):
            from exo_actor.speculative import Proposal

            return Proposal([(context[-1] + 7) % 1000] * n, None)

        def free(self, rid):
            pass

    spec = Speculation(Wrong(), max_draft=4)
    ids = chat_prompt_ids(files.tokenizer, OPEN)
    got, stats = _tokens(pipe, files, ids, SamplingParams(max_tokens=48), spec)
    assert stats.accepted_tokens == 0
    assert stats.draft_tokens < 48  # it drafted at first, then mostly stopped (with rare probes)
    assert np.isclose(stats.tokens_per_pass, 1.0)
