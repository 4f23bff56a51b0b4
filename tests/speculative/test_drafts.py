"""Draft sources: prompt lookup, draft specs, vocabulary checks, a model draft's cache reuse."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from exo_actor.sampling import SamplingParams
from exo_actor.speculative.drafts import (
    DraftError,
    ModelDrafter,
    NgramDrafter,
    check_vocabulary,
    load_drafter,
    ngram_lookup,
    parse_draft_spec,
)
from exo_actor.weights import open_model
from tests.tiny import TinySpec, write_gguf


def test_ngram_continues_the_latest_match_of_the_longest_suffix():
    ctx = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert ngram_lookup(ctx, 3) == [7, 8, 5]  # the latest earlier "1 2 3" is followed by 7 8 5
    assert ngram_lookup(ctx, 10) == [7, 8, 5, 1, 2, 3]  # runs up to the end of the context
    assert ngram_lookup([4, 5, 6, 5], 2) == [6, 5]  # falls back to the last token alone
    assert ngram_lookup([1, 2, 3], 4) == []  # nothing repeats
    assert ngram_lookup([1], 4) == [] and ngram_lookup([], 4) == [] and ngram_lookup([1, 1], 0) == []
    assert NgramDrafter().propose("r", ctx, 2, SamplingParams(), np.random.default_rng()).q is None


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("llama-3.2-1b", ("llama-3.2-1b", None)), ("smollm2-135m:layers=8", ("smollm2-135m", 8))],
)
def test_draft_specs(spec, expected):
    assert parse_draft_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", ":layers=3", "m:layers=", "m:layers=0", "m:layers=x", "m:layers=-2"])
def test_bad_draft_specs(spec):
    with pytest.raises(DraftError, match="draft model"):
        parse_draft_spec(spec)


def _files(vocab: dict[str, int], size: int):
    tok = SimpleNamespace(get_vocab=lambda with_added_tokens=True: vocab)
    return SimpleNamespace(args=SimpleNamespace(vocab_size=size), tokenizer=SimpleNamespace(tokenizer=tok))


def test_vocabulary_must_match():
    a = {"a": 0, "b": 1}
    check_vocabulary(_files(a, 2), _files(dict(a), 2), "d")
    with pytest.raises(DraftError, match="vocabulary of 3 tokens"):
        check_vocabulary(_files(a, 2), _files(a, 3), "d")
    with pytest.raises(DraftError, match="another tokenizer"):
        check_vocabulary(_files(a, 2), _files({"a": 1, "b": 0}, 2), "d")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("drafts") / "t.gguf"
    write_gguf(path, TinySpec(context=64))
    return path, open_model(path)


def test_self_draft_takes_the_first_layers(tiny):
    path, files = tiny
    drafter = load_drafter(f"{path}:layers=2", files)
    assert isinstance(drafter, ModelDrafter)
    (shard,) = drafter.pipeline.shards
    assert (shard.start, shard.end, shard.is_last) == (0, 2, True)
    with pytest.raises(DraftError, match="only 4 layers"):
        load_drafter(f"{path}:layers=9", files)


def test_model_draft_reuses_its_cache_for_the_accepted_prefix(tiny):
    path, files = tiny
    drafter = load_drafter(str(path), files)
    rng = np.random.default_rng(0)
    ctx = [5, 6, 7, 8]
    first = drafter.propose("r", ctx, 3, SamplingParams(), rng)
    assert len(first.tokens) == 3 and first.q.shape == (3, files.args.vocab_size)
    assert np.allclose(first.q.sum(axis=1), 1.0)
    runner = drafter.pipeline.shards[0]
    assert runner.cached_length("r") == len(ctx) + 2  # the last drafted token is never fed
    # the target accepted one draft, then chose another token: the draft's cache rolls back to it
    ctx2 = [*ctx, first.tokens[0], (first.tokens[1] + 1) % files.args.vocab_size]
    second = drafter.propose("r", ctx2, 2, SamplingParams(), rng)
    assert runner.cached_length("r") == len(ctx2) + 1
    fresh = load_drafter(str(path), files).propose("x", ctx2, 2, SamplingParams(), rng)
    assert second.tokens == fresh.tokens  # same as drafting from scratch
    drafter.free("r")
    assert runner.cached_length("r") == 0 and "r" not in drafter.seen


def test_model_draft_respects_the_context_window(tiny):
    path, files = tiny
    drafter = load_drafter(str(path), files)
    ctx = list(range(5, 5 + 62))
    assert len(drafter.propose("r", ctx, 8, SamplingParams(), np.random.default_rng()).tokens) == 2
