"""Constrained decoding (sampling/grammar.py with llguidance): schemas compile or fail with one clear
error, masks cut drafts the grammar refuses, and generation on a tiny random model always yields JSON that
parses and validates, greedy or sampled, with or without drafts."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from exo_actor.runtime.generation import generate
from exo_actor.runtime.local import load_local
from exo_actor.sampling import SamplingParams
from exo_actor.sampling.decide import decide
from exo_actor.sampling.grammar import Constraint, GrammarError, json_grammar, response_format_grammar
from exo_actor.speculative import Speculation
from exo_actor.speculative.speculation import Proposal
from tests.tiny import TinySpec, write_gguf

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}, "required": ["kind"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "pet", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("grammar") / "tiny.gguf"
    write_gguf(path, TinySpec(context=512))
    return load_local(str(path))


def test_response_formats_compile_or_fail_with_one_clear_error():
    assert response_format_grammar(None) is None and response_format_grammar({"type": "text"}) is None
    assert response_format_grammar({"type": "json_object"})
    assert response_format_grammar({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
    for bad, needle in [
        ("json", "must be an object"),
        ({"type": "yaml"}, "text, json_object or json_schema"),
        ({"type": "json_schema"}, "'name' and a 'schema'"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}}, "JSON schema object"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}, "cannot be used"),
    ]:
        with pytest.raises(GrammarError, match=needle):
            response_format_grammar(bad)


def test_a_plan_cuts_the_drafts_the_grammar_refuses_and_leaves_the_matcher_as_it_was(tiny):
    files, _ = tiny
    c = Constraint(json_grammar(SCHEMA), files.tokenizer)
    first = c.plan([])[1]
    brace = files.tokenizer.encode('{"')
    kept, rows = c.plan([*brace, brace[0], 5])  # '{"' is allowed; a second '{' inside a key is not
    assert kept == brace and rows.shape == (len(brace) + 1, first.shape[1])
    assert np.array_equal(c.plan([])[1], first)  # rolled back
    assert not first[0, files.tokenizer.encode("x")[0]]  # the output must start with "{"


def test_masked_tokens_are_never_chosen():
    logits = np.zeros((2, 10), np.float32)
    logits[:, 3] = 50.0  # the favourite, but not allowed
    allowed = np.zeros((2, 10), bool)
    allowed[:, [1, 7]] = True
    for seed in range(20):
        d = decide(
            logits, SamplingParams(temperature=1.5, seed=seed), (7,), allowed=allowed, rng=np.random.default_rng(seed)
        )
        assert all(t in (1, 7) for t in d.tokens)
    assert decide(logits[:1], SamplingParams(), allowed=allowed[:1]).tokens[0] in (1, 7)


class BadDrafter:
    """Drafts tokens the grammar mostly refuses: they must be cut, never accepted."""

    name = "bad"

    def propose(self, rid, context, n, params, rng):  # type: ignore[no-untyped-def]
        return Proposal([int(rng.integers(3, 300)) for _ in range(n)], None)

    def free(self, rid):  # type: ignore[no-untyped-def]
        pass


@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "bad-drafts"])
def test_a_random_model_always_writes_valid_json(tiny, speculative):
    files, pipe = tiny
    grammar = json_grammar(SCHEMA)
    spec = Speculation(BadDrafter(), 4, adaptive=False) if speculative else None  # type: ignore[arg-type]
    for seed in range(12):
        params = SamplingParams(temperature=1.0, seed=seed, max_tokens=200, grammar=grammar)
        deltas = list(generate(pipe, files.tokenizer, [5, 6, 7], params, 512, speculation=spec))
        text = "".join(d.text for d in deltas)
        assert deltas[-1].finish_reason == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)
