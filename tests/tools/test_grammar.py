"""call_grammar: the grammar accepts a call of an offered tool with valid arguments, in the family's format,
and refuses other names, invalid arguments, and a second call unless parallel calls are allowed."""

from __future__ import annotations

import json

import pytest

from exo_actor.sampling.grammar import Constraint
from exo_actor.tokenizer import TextTokenizer
from exo_actor.tools import Tool, ToolCall, ToolChoice, ToolSpecError, call_grammar
from tests.tiny import tiny_tokenizer

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [Tool("get_weather", None, CITY), Tool("get_time")]
TOK = TextTokenizer(tiny_tokenizer(), "<|im_start|>", "<|im_end|>", frozenset({2}), None)


def accepts(grammar: str, text: str) -> bool:
    """The grammar takes `text` whole and may stop after it."""
    c = Constraint(grammar, TOK)
    ok = all(c.matcher.consume_token(t) for t in TOK.encode(text))
    return ok and bool(c.matcher.is_accepting())


def compact(calls: list[ToolCall], family: str) -> str:
    """Calls as the grammar writes them: compact JSON in the family's framing."""
    key = "parameters" if family == "llama3" else "arguments"
    objs = [json.dumps({"name": c.name, key: c.arguments}, separators=(",", ":")) for c in calls]
    if family == "hermes":
        return "\n".join(f"<tool_call>\n{o}\n</tool_call>" for o in objs)
    if family == "llama3":
        return "; ".join(objs)
    return objs[0] if len(objs) == 1 else "[" + ", ".join(objs) + "]"


@pytest.mark.parametrize("family", ["hermes", "llama3", "generic"])
def test_valid_calls_are_accepted_and_others_refused(family):
    one = [ToolCall("get_weather", {"city": "Paris"})]
    two = [*one, ToolCall("get_time", {})]
    required = call_grammar(TOOLS, ToolChoice("required"), False, family)
    assert accepts(required, compact(one, family))
    assert not accepts(required, compact(two, family))  # one call only
    assert not accepts(required, compact([ToolCall("get_weather", {"town": "Paris"})], family))
    assert not accepts(required, compact([ToolCall("get_weather", {"city": 3})], family))
    assert not accepts(required, compact([ToolCall("launch", {})], family))
    assert not accepts(required, "Sure! " + compact(one, family))
    assert accepts(call_grammar(TOOLS, ToolChoice("required"), True, family), compact(two, family))
    for parallel in (False, True):  # a named function: exactly one call
        named = call_grammar(TOOLS, ToolChoice("function", "get_time"), parallel, family)
        assert accepts(named, compact([ToolCall("get_time", {})], family))
        assert not accepts(named, compact([ToolCall("get_time", {})] * 2, family))
        assert not accepts(named, compact(one, family))


def test_a_schema_llguidance_refuses_is_named():
    bad = Tool("bad", None, {"type": "object", "properties": {"x": {"type": "nonsense"}}})
    with pytest.raises(ToolSpecError) as err:
        call_grammar([TOOLS[0], bad], ToolChoice("required"), False, "hermes")
    assert err.value.param == "tools[1].function.parameters"
