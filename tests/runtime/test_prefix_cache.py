"""The prefix KV cache: bookkeeping (pure), exactness of a continued prompt, eviction, and a chat's
next turn through the gateway reporting its cached tokens."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from exo_actor.engines import get_engine
from exo_actor.runtime.generation import LocalPipeline, generate
from exo_actor.runtime.prefix_cache import PrefixCache, common_prefix
from exo_actor.sampling import SamplingParams
from exo_actor.speculative import Speculation
from exo_actor.speculative.drafts import NgramDrafter
from exo_actor.weights import open_model
from tests.conftest import require
from tests.tiny import TinySpec, write_gguf


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([1, 2], [1, 2]) == 2


def test_take_finds_the_longest_prefix_and_leaves_the_last_token():
    c = PrefixCache(budget_tokens=100)
    assert c.keep("a", [1, 2, 3]) == [] and c.keep("b", [1, 2, 3, 4, 5]) == []
    assert c.take([9, 9]) == (None, 0)
    assert c.take([1, 2, 3, 4, 5]) == ("b", 4)  # the whole prompt is cached: its last token is prefilled
    assert "b" not in c.entries  # taken: its caches now belong to the new request
    assert c.take([1, 2, 7]) == ("a", 2)
    assert c.info()["hits"] == 2 and c.info()["misses"] == 1 and c.info()["reused_tokens"] == 6


def test_keep_evicts_least_recently_used_within_the_budget():
    c = PrefixCache(budget_tokens=10)
    assert c.keep("a", [1] * 4) == [] and c.keep("b", [2] * 4) == []
    assert c.keep("c", [3] * 4) == ["a"]  # 12 > 10: the oldest goes
    assert c.keep("big", [4] * 11) == ["big"]  # alone over the budget: not kept
    assert c.keep("e", []) == ["e"]
    assert list(c.entries) == ["b", "c"] and c.tokens == 8
    assert sorted(c.clear()) == ["b", "c"] and c.tokens == 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("prefix") / "tiny.gguf"
    write_gguf(path, TinySpec(layers=4, context=512))
    files = open_model(path)
    return files, LocalPipeline([get_engine("numpy").load_shard(files, a, b) for a, b in ((0, 2), (2, 4))])


def _run(pipe, files, ids, prefix=None, spec=None, max_tokens=12):
    out = list(generate(pipe, files.tokenizer, ids, SamplingParams(max_tokens=max_tokens), 512, None, spec, prefix))
    return [t for d in out for t in d.token_ids], out[-1].stats


@pytest.mark.parametrize("speculative", [False, True])
def test_the_next_turn_prefills_only_its_new_tokens_and_generates_the_same(tiny, speculative):
    files, pipe = tiny
    spec = Speculation(NgramDrafter(), 4, adaptive=False) if speculative else None
    turn1 = list(range(10, 40)) * 2
    plain1, _ = _run(pipe, files, turn1, spec=spec)
    turn2 = turn1 + plain1[:-1] + [50, 51, 52, 53]  # the reply as generated, then a new user message
    plain2, _ = _run(pipe, files, turn2, spec=spec)
    cache = PrefixCache(budget_tokens=10_000)
    got1, stats1 = _run(pipe, files, turn1, cache, spec)
    assert got1 == plain1 and stats1.cached_tokens == 0
    kept = next(iter(cache.entries.values()))
    assert len(kept) == len(turn1) + len(plain1) - 1  # everything handed out but the last token
    got2, stats2 = _run(pipe, files, turn2, cache, spec)
    assert got2 == plain2
    assert stats2.cached_tokens == common_prefix(kept, turn2) >= len(turn1) + len(plain1) - 2
    assert all(len(s.caches) == 1 for s in pipe.shards)  # only turn 2's entry is held
    for rid in cache.clear():
        pipe.free(rid)
    assert all(not s.caches for s in pipe.shards)


def test_eviction_frees_the_shards_caches(tiny):
    files, pipe = tiny
    cache = PrefixCache(budget_tokens=60)
    for k in range(4):
        _run(pipe, files, [k + 5] * 30, cache, max_tokens=4)  # 33 tokens kept each: room for one
    assert len(cache.entries) == 1
    assert all(set(s.caches) == set(cache.entries) for s in pipe.shards)
    for rid in cache.clear():
        pipe.free(rid)


def test_a_chat_turn_through_the_gateway_reports_cached_tokens(tmp_path):
    from tests.api.servers import thread_server

    OpenAI = require("openai").OpenAI

    model = tmp_path / "tiny.gguf"
    write_gguf(model, TinySpec(layers=4, context=512))
    with thread_server(model) as srv:
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused")
        messages = [{"role": "user", "content": "hello there, tell me a story " * 8}]
        first = client.chat.completions.create(model=str(model), messages=messages, max_tokens=12, temperature=0)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        messages += [
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "and then?"},
        ]
        second = client.chat.completions.create(model=str(model), messages=messages, max_tokens=12, temperature=0)
        cached = second.usage.prompt_tokens_details.cached_tokens
        assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens
        info = httpx.get(srv.url + "/v1/cluster").json()["prefix_cache"]
        assert info["hits"] == 1 and info["entries"] == 1 and info["reused_tokens"] == cached
        metrics = httpx.get(srv.url + "/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith("exo_prompt_tokens_cached_total"))
        assert float(line.split()[-1]) == cached
        assert np.isclose(
            float(
                next(x for x in metrics.splitlines() if x.startswith("exo_prompt_tokens_prefilled_total")).split()[-1]
            ),
            first.usage.prompt_tokens + second.usage.prompt_tokens - cached,
        )
