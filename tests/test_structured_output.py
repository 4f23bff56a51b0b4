"""Structured output on the embedded SmolLM2: 100 seeded runs at temperature 1 against a nested JSON
schema all parse and validate, plain and with speculative decoding (the gateway's side:
tests/api/test_structured.py)."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from exo_actor.actors.router import RouterActor
from exo_actor.runtime.local import load_local
from exo_actor.sampling import SamplingParams
from exo_actor.sampling.grammar import json_grammar
from exo_actor.speculative import Speculation
from exo_actor.speculative.drafts import NgramDrafter
from exo_actor.tokenizer import chat_prompt_ids

pytestmark = pytest.mark.slow
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["name", "age", "address", "hobbies"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a fictional person as JSON with name, age, address and hobbies."}]


@pytest.fixture(scope="module")
def smollm2_torch(smollm2_path):
    return load_local("smollm2-135m", engine="torch")


@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "speculative"])
def test_a_hundred_sampled_runs_all_parse_and_validate(smollm2_torch, speculative):
    files, pipe = smollm2_torch
    ids = chat_prompt_ids(files.tokenizer, ASK)
    grammar = json_grammar(PERSON)
    spec = Speculation(NgramDrafter(), 4, adaptive=False) if speculative else None
    # the 100 runs go through a router together: continuous batching, as a server runs them
    context = files.args.max_position_embeddings
    router = RouterActor(pipe, files.tokenizer, context, max_concurrent=100, speculation=spec)
    router.start()

    async def run(seed: int) -> tuple[str, str | None]:
        params = SamplingParams(temperature=1.0, seed=seed, max_tokens=160, grammar=grammar)
        deltas = [d async for d in router.submit(ids, params)]
        return "".join(d.text for d in deltas), deltas[-1].finish_reason

    async def all_runs() -> list[tuple[str, str | None]]:
        return await asyncio.gather(*(run(seed) for seed in range(100)))

    try:
        results = asyncio.run(all_runs())
    finally:
        router.stop()
    for text, _ in results:
        jsonschema.validate(json.loads(text), PERSON)
    assert [finish for _, finish in results] == ["stop"] * 100
    if spec is not None:
        assert spec.drafted > 0  # the drafts were verified under the grammar
