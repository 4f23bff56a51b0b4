"""Sampling on the ring's last shard (the default) gives every request the tokens and logprobs that
sampling on the router gives (`--sample-on router`, the old path), and sends back a few bytes per token
instead of a logits row: measured from the router's socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from exo_actor.config import NodeConfig
from exo_actor.sampling import SamplingParams
from tests.cluster.harness import InProcessCluster, in_process_cluster
from tests.tiny import TinySpec, write_gguf

PROMPT = [5, 17, 42, 8, 99, 3]
CASES = {
    "greedy": {},
    "seeded": {"temperature": 0.9, "seed": 7, "top_p": 0.9},
    "penalties+logprobs": {
        "temperature": 0.7,
        "seed": 3,
        "presence_penalty": 0.8,
        "frequency_penalty": 0.4,
        "logprobs": 3,
    },
    "greedy+logprobs": {"logprobs": 5},
}
BACK = ("logits", "blogits", "sampled")  # what the last shard sends the router for a pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("shard-sampling") / "tiny.gguf"
    write_gguf(path, TinySpec(layers=6, context=1024))
    return path


def configs(tiny, sample_on: str, draft: str | None = None):  # type: ignore[no-untyped-def]
    def make(i: int) -> NodeConfig:
        return NodeConfig(
            model=str(tiny),
            engine="numpy",
            prefix_cache_mb=0,
            sample_on=sample_on,
            draft_model=draft,
            draft_tokens=4,
            adaptive_draft=False,
        )

    return make


def run(
    c: InProcessCluster, params: dict[str, Any], max_tokens: int = 40, prompt: list[int] = PROMPT
) -> tuple[list[int], list[Any]]:
    async def collect() -> tuple[list[int], list[Any]]:
        _, router = c.nodes[0].ready_router()
        stream = router.submit(prompt, SamplingParams(max_tokens=max_tokens, **params))
        tokens, lps = [], []
        async for delta in stream:
            tokens += delta.token_ids
            lps += delta.logprobs
        return tokens, lps

    return asyncio.run_coroutine_threadsafe(collect(), c.loop).result(120)


def received(c: InProcessCluster) -> dict[str, tuple[int, int]]:
    return c.call(c.nodes[0].messages_received)


@pytest.mark.parametrize("draft", [None, "ngram"], ids=["plain", "speculative"])
def test_the_last_shard_samples_what_the_router_would_and_sends_back_a_few_bytes(tiny, draft):
    results: dict[str, dict[str, Any]] = {}
    for where in ("router", "last-shard"):
        with in_process_cluster(tiny, 3, node_config=configs(tiny, where, draft)) as c:
            before = received(c)
            results[where] = {name: run(c, params) for name, params in CASES.items()}
            after = received(c)
            tokens = sum(len(t) for t, _ in results[where].values())
            got = {k: (after.get(k, (0, 0))[0] - before.get(k, (0, 0))[0]) for k in BACK}
            size = {k: (after.get(k, (0, 0))[1] - before.get(k, (0, 0))[1]) for k in BACK}
            results[where]["_messages"], results[where]["_bytes"] = got, size
            results[where]["_tokens"] = tokens
            vocab = c.nodes[0].files.args.vocab_size
    for name in CASES:
        assert results["last-shard"][name] == results["router"][name], name
    shard, router = results["last-shard"], results["router"]
    assert shard["_messages"]["sampled"] > 0 and router["_messages"]["sampled"] == 0
    # the prompts' intermediate pieces are the only logits rows left: here, none (one chunk each)
    assert shard["_messages"]["logits"] + shard["_messages"]["blogits"] == 0, shard["_messages"]
    assert shard["_tokens"] > 100
    per_token_router = sum(router["_bytes"].values()) / router["_tokens"]
    per_token_shard = sum(shard["_bytes"].values()) / shard["_tokens"]
    assert per_token_router > vocab * 4  # a float32 logits row per token, at least
    print(f"bytes back per token: router {per_token_router:.0f}, last shard {per_token_shard:.0f}")
    assert per_token_shard < 1024, (per_token_shard, shard["_bytes"])  # with logprobs included


def test_with_shard_sampling_off_the_logits_come_back(tiny):
    with in_process_cluster(tiny, 2, node_config=configs(tiny, "router")) as c:
        run(c, {}, 5)
        assert received(c).get("sampled", (0, 0))[0] == 0
        assert received(c).get("blogits", (0, 0))[0] + received(c).get("logits", (0, 0))[0] >= 5


def test_a_long_prompt_s_pieces_bring_back_no_logits_rows(tiny):
    """A 700-token prompt runs in two pieces (PREFILL_CHUNK 512): the first piece's answer is unused, and
    the last shard answers it with a token id, not a logits row; the text is the router path's."""
    prompt = [(7 * i) % 300 + 1 for i in range(700)]
    texts = {}
    for where in ("router", "last-shard"):
        with in_process_cluster(tiny, 2, node_config=configs(tiny, where)) as c:
            texts[where] = run(c, {"temperature": 0.8, "seed": 11}, 10, prompt)
            got = received(c)
            rows = got.get("logits", (0, 0))[0] + got.get("blogits", (0, 0))[0]
            assert rows == (0 if where == "last-shard" else 11), got
    assert texts["last-shard"] == texts["router"]
