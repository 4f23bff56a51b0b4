"""The choices of one prompt on a ring (n > 1): later choices copy the first one's prompt caches on every
shard instead of prefilling, and each gets exactly the tokens it gets alone; a choice whose source has
already finished prefills the prompt itself."""

from __future__ import annotations

import pytest

from exo_actor.runtime.generation import generate
from exo_actor.runtime.local import load_local
from exo_actor.sampling import SamplingParams
from tests.cluster.harness import in_process_cluster
from tests.cluster.test_node import caches
from tests.tiny import TinySpec, write_gguf

PROMPT = [5, 17, 42, 8, 99, 3, 61, 20, 11, 7]
SEEDS = [100, 101, 102]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("fork") / "tiny.gguf"
    write_gguf(path, TinySpec(layers=6, context=96))
    return path


def _alone(tiny, seed: int) -> list[int]:
    files, pipeline = load_local(str(tiny))
    params = SamplingParams(max_tokens=20, temperature=0.9, seed=seed)
    return [t for d in generate(pipeline, files.tokenizer, PROMPT, params, 96) for t in d.token_ids]


def test_later_choices_copy_the_prompt_caches_on_every_shard(tiny):
    expected = [_alone(tiny, s) for s in SEEDS]
    with in_process_cluster(tiny, 3) as c:
        _, router = c.nodes[0].ready_router()

        async def choices(free_leader_first: bool) -> tuple[list[list[int]], list[int]]:
            leader = router.submit(PROMPT, SamplingParams(max_tokens=20, temperature=0.9, seed=SEEDS[0]))
            it = leader.__aiter__()  # one iterator throughout: dropping one cancels the stream
            first = await it.__anext__()
            tokens = [list(first.token_ids)]
            if free_leader_first:  # the source is gone before its copies reach the shards: they replay
                async for d in it:
                    tokens[0] += d.token_ids
            streams = [
                router.submit(PROMPT, SamplingParams(max_tokens=20, temperature=0.9, seed=s), fork=leader.request_id)
                for s in SEEDS[1:]
            ]
            cached = []
            for s in streams:
                out: list[int] = []
                async for d in s:
                    out += d.token_ids
                    if d.stats is not None:
                        cached.append(d.stats.cached_tokens)
                tokens.append(out)
            if not free_leader_first:
                async for d in it:
                    tokens[0] += d.token_ids
            return tokens, cached

        got, cached = c.run(choices(False))
        assert got == expected
        assert cached == [len(PROMPT) - 1] * 2  # each copy prefilled only the prompt's last token
        got, _ = c.run(choices(True))
        assert got == expected
        c.wait(lambda: caches(c) == [0, 0, 0], "every shard to free the choices' caches")
