"""Parsing OpenAI's tools, tool_choice and tool_calls: the values, and a ToolSpecError naming the field."""

from __future__ import annotations

import pytest

from exo_actor.tools import (
    ToolChoice,
    ToolSpecError,
    parse_openai_tool_calls,
    parse_openai_tool_choice,
    parse_openai_tools,
)
from exo_actor.tools.spec import EMPTY_PARAMETERS

FN = {
    "type": "function",
    "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True},
}


def test_tools_parse_with_defaults():
    tools = parse_openai_tools([FN, {"type": "function", "function": {"name": "g"}}])
    assert [t.name for t in tools] == ["f", "g"] and tools[0].strict and tools[0].description == "d"
    assert tools[1].parameters == EMPTY_PARAMETERS and tools[1].openai()["function"]["parameters"] == EMPTY_PARAMETERS
    assert parse_openai_tools(None) == [] and parse_openai_tools([]) == []


def test_tool_choice_defaults_and_forms():
    tools = parse_openai_tools([FN])
    assert parse_openai_tool_choice(None, tools) == ToolChoice("auto")
    assert parse_openai_tool_choice(None, []) == ToolChoice("none")
    assert parse_openai_tool_choice("none", []) == ToolChoice("none")
    assert parse_openai_tool_choice({"type": "function", "function": {"name": "f"}}, tools) == ToolChoice(
        "function", "f"
    )
    assert ToolChoice("required").constrained and not ToolChoice("auto").constrained


def test_tool_calls_take_json_strings_or_objects():
    raw = [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "b", "function": {"name": "g", "arguments": ""}},
        {"id": "c", "function": {"name": "h", "arguments": {"y": 2}}},
    ]
    calls = parse_openai_tool_calls(raw, "m")
    assert [(c.id, c.name, c.arguments) for c in calls] == [("a", "f", {"x": 1}), ("b", "g", {}), ("c", "h", {"y": 2})]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ([{"type": "function", "function": {"name": "x" * 65}}], "tools[0].function.name"),
        ([1], "tools[0]"),
        ([FN] * 129, "tools"),
    ],
)
def test_bad_tools_name_the_field(raw, param):
    with pytest.raises(ToolSpecError) as err:
        parse_openai_tools(raw)
    assert err.value.param == param
