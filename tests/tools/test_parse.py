"""parse_tool_calls: every family on hand-written outputs; malformed or unknown calls stay content; any
text parses without raising; calls written in a family's format parse back to themselves."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exo_actor.tools import Tool, ToolCall, parse_tool_calls
from exo_actor.tools.formats import format_calls

TOOLS = [Tool("get_weather"), Tool("get_time")]


def summary(calls: list[ToolCall]) -> list[tuple[str, dict]]:
    return [(c.name, c.arguments) for c in calls]


def test_hermes_several_calls_and_the_text_around_them():
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": {"zone": 1}}</tool_call>'
    )
    content, calls = parse_tool_calls(text, "hermes", TOOLS)
    assert content == "Let me check."
    assert summary(calls) == [("get_weather", {"city": "Paris"}), ("get_time", {"zone": 1})]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    assert json.loads(calls[0].openai()["function"]["arguments"]) == {"city": "Paris"}


def test_smollm2_writes_a_list_in_one_block():
    text = (
        '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {}}]</tool_call>'
    )
    content, calls = parse_tool_calls(text, "hermes", TOOLS)
    assert content is None
    assert summary(calls) == [("get_weather", {"city": "Paris"}), ("get_time", {})]


def test_an_unclosed_last_block_still_counts_when_its_json_is_whole():
    content, calls = parse_tool_calls('<tool_call>{"name": "get_time", "arguments": {"zone": 3}}', "hermes", TOOLS)
    assert content is None and summary(calls) == [("get_time", {"zone": 3})]


def test_llama3_python_tag_and_bare_json():
    tagged = 'Sure.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    content, calls = parse_tool_calls(tagged, "llama3", TOOLS)
    assert content == "Sure." and summary(calls) == [("get_weather", {"city": "Oslo"})]
    bare = '{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "get_time", "parameters": {"zone": 2}}'
    content, calls = parse_tool_calls(bare, "llama3", TOOLS)
    assert content is None and summary(calls) == [("get_weather", {"city": "Oslo"}), ("get_time", {"zone": 2})]


def test_generic_object_list_and_openai_shapes():
    for text, expected in [
        ('{"name": "get_time", "arguments": {"zone": 1}}', [("get_time", {"zone": 1})]),
        (
            '  [{"name": "get_time", "parameters": {}}, '
            '{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}]',
            [("get_time", {}), ("get_weather", {"city": "Rome"})],
        ),
        (
            '{"type": "function", "function": {"name": "get_time", "arguments": {"zone": 0}}}',
            [("get_time", {"zone": 0})],
        ),
    ]:
        content, calls = parse_tool_calls(text, "generic", TOOLS)
        assert content is None and summary(calls) == expected, text
    # a bare JSON call also counts for a family whose own markers are absent
    assert summary(parse_tool_calls('{"name": "get_time", "arguments": {}}', "hermes", TOOLS)[1]) == [("get_time", {})]


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Paris is sunny.",
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>',  # not one of the tools
        '<tool_call>{"name": "get_time", "arguments": [1, 2]}</tool_call>',  # arguments not an object
        '<tool_call>{"name": "get_time", "arguments": "{broken"}</tool_call>',
        "<tool_call>[]</tool_call>",
        '{"name": "get_time", "arguments": {}} and then some text',
        '{"city": "Paris"}',
        "<tool_call>",
        "",
    ],
)
def test_malformed_or_unknown_calls_stay_content(text):
    for family in ("hermes", "llama3", "generic"):
        assert parse_tool_calls(text, family, TOOLS) == (text, []), family


def test_a_malformed_block_stays_while_a_good_one_is_taken():
    text = '<tool_call>oops</tool_call>\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    content, calls = parse_tool_calls(text, "hermes", TOOLS)
    assert content == "<tool_call>oops</tool_call>" and summary(calls) == [("get_time", {})]


def test_no_tools_means_no_calls():
    text = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    assert parse_tool_calls(text, "hermes", []) == (text, [])


PIECES = [
    "<tool_call>",
    "</tool_call>",
    "<|python_tag|>",
    '{"name": "get_time", "arguments": {"zone": 1}}',
    '{"name": "get_weather", "parameters": {}}',
    '{"name": "nope", "arguments": {}}',
    "[",
    "]",
    "{",
    "}",
    ",",
    ";",
    " ",
    "\n",
    "<tool",
    "hello",
    '"',
]
texts = st.lists(st.sampled_from(PIECES) | st.text(max_size=3), max_size=12).map("".join)


@given(texts)
def test_any_text_parses_without_raising(text):
    for family in ("hermes", "llama3", "generic"):
        content, calls = parse_tool_calls(text, family, TOOLS)
        assert calls or content == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
calls_strategy = st.lists(
    st.builds(
        ToolCall,
        st.sampled_from(["get_weather", "get_time"]),
        st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    ),
    min_size=1,
    max_size=3,
)


@given(calls_strategy, st.sampled_from(["hermes", "llama3", "generic"]))
def test_calls_written_in_a_format_parse_back(calls, family):
    content, parsed = parse_tool_calls(format_calls(calls, family), family, TOOLS)
    assert content is None and summary(parsed) == summary(calls)
