"""The generation loop on a tiny model: max tokens, EOS, stop strings, context limits, cleanup."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from exo_actor.engines.numpy_engine import NumpyEngine
from exo_actor.errors import ContextLengthError
from exo_actor.runtime.generation import LocalPipeline, apply_penalties, generate
from exo_actor.sampling import SamplingParams
from exo_actor.weights import open_model
from tests.tiny import TinySpec, write_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "m.gguf"
    write_gguf(path, TinySpec(context=64))
    files = open_model(path)
    return files, LocalPipeline([NumpyEngine().load_shard(files, 0, 2), NumpyEngine().load_shard(files, 2, 4)])


def _run(tiny, params, prompt=(5, 6, 7), tokenizer=None):
    files, pipe = tiny
    deltas = list(
        generate(pipe, tokenizer or files.tokenizer, list(prompt), params, files.args.max_position_embeddings)
    )
    return "".join(d.text for d in deltas), deltas[-1], [t for d in deltas for t in d.token_ids]


def test_max_tokens_ends_with_length(tiny):
    text, last, ids = _run(tiny, SamplingParams(max_tokens=12))
    assert last.finish_reason == "length" and last.stats.completion_tokens == 12 and len(ids) == 12
    assert text == tiny[0].tokenizer.decode(ids)


def test_eos_ends_with_stop(tiny):
    _, _, ids = _run(tiny, SamplingParams(max_tokens=12))
    tok = dataclasses.replace(tiny[0].tokenizer, stop_ids=frozenset({ids[3]}))
    text, last, got = _run(tiny, SamplingParams(max_tokens=12), tokenizer=tok)
    assert last.finish_reason == "stop" and got == ids[: ids.index(ids[3])]


def test_stop_string_cuts_the_text(tiny):
    text, _, _ = _run(tiny, SamplingParams(max_tokens=20))
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip()
    cut, last, _ = _run(tiny, SamplingParams(max_tokens=20, stop=(stop,)))
    assert last.finish_reason == "stop" and cut == text[: text.index(stop)]


def test_context_window(tiny):
    files, pipe = tiny
    with pytest.raises(ContextLengthError, match="context window is 64"):
        _run(tiny, SamplingParams(), prompt=[5] * 64)
    _, last, ids = _run(tiny, SamplingParams(max_tokens=50), prompt=[5] * 60)
    assert last.finish_reason == "length" and len(ids) == 4  # clipped to the window
    with pytest.raises(ContextLengthError):
        _run(tiny, SamplingParams(), prompt=[])


def test_caches_are_freed_even_when_the_consumer_stops_early(tiny):
    files, pipe = tiny
    stream = generate(pipe, files.tokenizer, [5, 6], SamplingParams(max_tokens=30), 64, request_id="early")
    next(stream)
    assert pipe.shards[0].cached_length("early") > 0
    stream.close()
    assert all("early" not in s.caches for s in pipe.shards)


def test_penalties_follow_openais_definition():
    logits = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    counts = np.array([0, 1, 3], dtype=np.float32)
    got = apply_penalties(logits, counts, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25))
    np.testing.assert_allclose(got, [1.0, 2.0 - 0.25 - 0.5, 3.0 - 0.75 - 0.5])
    assert got.dtype == np.float32


def test_frequency_penalty_changes_a_repetitive_greedy_output(tiny):
    _, _, plain = _run(tiny, SamplingParams(max_tokens=30))
    _, _, penalized = _run(tiny, SamplingParams(max_tokens=30, frequency_penalty=2.0))
    assert len(set(penalized)) > len(set(plain))  # the random model repeats itself; the penalty spreads it out


def test_logprobs_are_log_softmax_with_sorted_alternatives(tiny):
    files, pipe = tiny
    deltas = list(generate(pipe, files.tokenizer, [5, 6, 7], SamplingParams(max_tokens=3, logprobs=4), 64))
    lps = [lp for d in deltas for lp in d.logprobs]
    assert len(lps) == 3
    logits = pipe.forward("check", np.array([5, 6, 7]), 0)[-1].astype(np.float64)
    pipe.free("check")
    ref = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    first = lps[0]
    assert first.token_id == int(np.argmax(logits)) and abs(first.logprob - ref[first.token_id]) < 1e-5
    assert [i for i, _ in first.top] == list(np.argsort(-ref)[:4])
    assert all(a >= b for (_, a), (_, b) in zip(first.top, first.top[1:]))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    return z - z.max() - np.log(np.exp(z - z.max()).sum())


@pytest.mark.parametrize("length", [1, 3, 40])
def test_prompt_logprobs_are_each_positions_log_softmax(tiny, length):
    files, pipe = tiny
    prompt = [int(t) for t in np.random.default_rng(length).integers(3, 60, size=length)]
    deltas = list(generate(pipe, files.tokenizer, prompt, SamplingParams(max_tokens=2, prompt_logprobs=3), 64))
    lps = deltas[0].prompt_logprobs
    assert lps is not None and len(lps) == length and lps[0] is None
    assert all(d.prompt_logprobs is None for d in deltas[1:])
    rows = pipe.forward("ref", np.array(prompt), 0, len(prompt))
    pipe.free("ref")
    for i in range(1, length):
        ref = _log_softmax(rows[i - 1])
        lp = lps[i]
        assert lp is not None and lp.token_id == prompt[i]
        assert abs(lp.logprob - ref[prompt[i]]) < 1e-4
        assert [t for t, _ in lp.top] == list(np.argsort(-ref, kind="stable")[:3])
    # the completion is the one a request without prompt logprobs gets
    plain = [t for d in generate(pipe, files.tokenizer, prompt, SamplingParams(max_tokens=2), 64) for t in d.token_ids]
    assert [t for d in deltas for t in d.token_ids] == plain


def test_prompt_logprobs_over_several_pieces(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, TinySpec(context=512))
    files = open_model(path)
    pipe = LocalPipeline([NumpyEngine().load_shard(files, 0, 4)])
    prompt = [int(t) for t in np.random.default_rng(7).integers(3, 60, size=300)]  # 3 pieces of LOGPROB_CHUNK
    deltas = list(generate(pipe, files.tokenizer, prompt, SamplingParams(max_tokens=1, prompt_logprobs=0), 512))
    lps = deltas[0].prompt_logprobs
    rows = pipe.forward("ref", np.array(prompt), 0, len(prompt))
    assert lps is not None and len(lps) == 300
    got = np.array([lp.logprob for lp in lps[1:] if lp is not None])
    ref = np.array([_log_softmax(rows[i - 1])[prompt[i]] for i in range(1, 300)])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert all(lp is not None and lp.top == () for lp in lps[1:])
    assert pipe.shards[0].caches == {"ref": pipe.shards[0].caches["ref"]}  # the request's caches were freed


def test_min_tokens_and_ignore_eos_hold_back_the_end(tiny):
    _, _, ids = _run(tiny, SamplingParams(max_tokens=12))
    eos = ids[3]
    tok = dataclasses.replace(tiny[0].tokenizer, stop_ids=frozenset({eos}))
    _, last, got = _run(tiny, SamplingParams(max_tokens=12), tokenizer=tok)
    assert last.finish_reason == "stop" and len(got) == ids.index(eos) < 8
    _, last, got = _run(tiny, SamplingParams(max_tokens=12, min_tokens=8), tokenizer=tok)
    assert len(got) >= 8 and eos not in got[:8]
    assert last.finish_reason == "stop" or len(got) == 12
    _, last, got = _run(tiny, SamplingParams(max_tokens=12, ignore_eos=True), tokenizer=tok)
    assert last.finish_reason == "length" and len(got) == 12 and eos not in got


def test_logit_bias_steers_greedy_decoding(tiny):
    _, _, plain = _run(tiny, SamplingParams(max_tokens=6))
    _, _, forced = _run(tiny, SamplingParams(max_tokens=6, logit_bias=((9, 100.0),)))
    assert forced == [9] * 6 != plain
    _, _, banned = _run(tiny, SamplingParams(max_tokens=6, logit_bias=((plain[0], -100.0),)))
    assert banned[0] != plain[0]
