"""Ollama's API through the official `ollama` Python client against a real uvicorn gateway (tiny model):
chat and generate, streamed and not, list, show, ps, version, `format` enforced; errors in Ollama's shape.
Tools: calls parsed into `message.tool_calls` (whole and streamed), tool results rendered, bad fields refused."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api import test_tools as chat_tools
from tests.conftest import require


@pytest.fixture(scope="module")
def client(tiny_server):
    ollama = require("ollama")
    return ollama.Client(host=tiny_server.url)


def model(tiny_server) -> str:  # type: ignore[no-untyped-def]
    return str(httpx.get(tiny_server.url + "/v1/models", timeout=30).json()["data"][0]["id"])


def test_chat_streamed_and_not(client, tiny_server):
    name = model(tiny_server)
    msgs = [{"role": "user", "content": "hello there"}]
    r = client.chat(model=name, messages=msgs, options={"temperature": 0, "num_predict": 12}, stream=False)
    assert r.done and r.done_reason in ("stop", "length") and r.message.role == "assistant"
    assert r.eval_count and r.eval_count <= 12 and r.prompt_eval_count > 0
    parts = list(client.chat(model=name, messages=msgs, options={"temperature": 0, "num_predict": 12}, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == r.message.content  # greedy: the same text either way


def test_generate_with_a_seed_is_repeatable(client, tiny_server):
    name = model(tiny_server)
    opts = {"temperature": 0.9, "seed": 5, "num_predict": 10}
    a = client.generate(model=name, prompt="once upon a time", options=opts)
    b = "".join(p.response for p in client.generate(model=name, prompt="once upon a time", options=opts, stream=True))
    assert a.response == b and a.done


def test_format_json_is_enforced(client, tiny_server):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    r = client.generate(
        model=model(tiny_server),
        prompt="answer",
        format=schema,
        options={"temperature": 1, "seed": 2, "num_predict": 40},
    )
    assert json.loads(r.response)["ok"] in (True, False)


def test_list_show_ps_version(client, tiny_server):
    name = model(tiny_server)
    assert [m.model for m in client.list().models] == [name]
    shown = client.show(name)
    assert shown.details.family == "llama" and shown.modelinfo["general.architecture"] == "llama"
    assert [m.model for m in client.ps().models] == [name]
    assert httpx.get(tiny_server.url + "/api/version", timeout=30).json()["version"]


def test_errors_are_ollama_shaped(client, tiny_server):
    ollama = require("ollama")
    name = model(tiny_server)
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404
    for body, needle in [
        ({"model": name, "messages": "hi"}, "'messages' must be a list"),
        ({"model": name, "messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"model": name, "prompt": "x", "options": {"temperature": "hot"}}, "options.temperature"),
        ({"model": name, "prompt": "x", "options": {"stop": [""]}}, "options.stop"),
        ({"model": name, "prompt": "x", "format": "yaml"}, "format"),
        ({"model": name, "prompt": "x", "stream": "yes"}, "'stream'"),
    ]:
        path = "/api/chat" if "messages" in body else "/api/generate"
        r = httpx.post(tiny_server.url + path, json=body, timeout=30)
        assert r.status_code == 400 and needle in r.json()["error"], (body, r.text)
    empty = httpx.post(tiny_server.url + "/api/generate", json={"model": name}, timeout=30).json()
    assert empty["done"] and empty["done_reason"] == "load"  # Ollama's way to load a model


# --- tools ---------------------------------------------------------------------------------------------------

TOOL_MODEL = chat_tools.MODEL
# the chat tests' fixture: the tiny model with room for the tools' system block (tiny_server's 256 tokens are too
# few with the tiny 320-token vocabulary); one server for this module
tools_server = chat_tools.tools_server
TOOLS = chat_tools.TOOLS  # OpenAI's function shape, which Ollama's `tools` take as they are
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def get_time(zone: int) -> str:
    """The time in a time zone.

    Args:
      zone: hours from UTC
    """
    return f"12:00 UTC{zone:+d}"


@pytest.fixture(scope="module")
def tool_client(tools_server):
    return require("ollama").Client(host=tools_server.url)


def test_calls_are_parsed_into_ollamas_tool_calls():
    """Model text (hand-written) -> message.tool_calls, whole and streamed in pieces."""
    from exo_actor.api.ollama_chat import stream_messages, tool_calls_json
    from exo_actor.tools import ToolChoice, ToolUse, parse_openai_tools

    use = ToolUse(tuple(parse_openai_tools(TOOLS)), ToolChoice("auto"))
    text = (
        "Let me look.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": 1}}\n</tool_call>'
    )
    expected = [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}},
        {"function": {"name": "get_time", "arguments": {"zone": 1}}},
    ]
    content, calls = use.parse(text)
    assert content == "Let me look." and tool_calls_json(calls) == expected
    streamer = use.streamer()
    assert streamer is not None
    messages = [m for i in range(0, len(text), 7) for m in stream_messages(streamer.feed(text[i : i + 7]))]
    messages += stream_messages(streamer.finish())
    assert "".join(m["content"] for m in messages) == "Let me look."
    with_calls = [m for m in messages if "tool_calls" in m]
    assert [c for m in with_calls for c in m["tool_calls"]] == expected
    assert all(m["content"] == "" and m["role"] == "assistant" for m in with_calls)
    # text that is no call of a known tool stays content
    assert use.parse('<tool_call>{"name": "unknown", "arguments": {}}</tool_call>')[1] == []


def test_tool_messages_are_matched_to_their_calls():
    from exo_actor.api.ollama_chat import chat_messages

    history = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}},
                {"function": {"name": "get_time", "arguments": {"zone": 1}}},
            ],
        },
        {"role": "tool", "content": "13:00", "tool_name": "get_time"},
        {"role": "tool", "content": "22 C"},
    ]
    out = chat_messages(history)
    calls = out[1]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Paris", "unit": "celsius"}, {"zone": 1}]
    assert (out[2]["tool_call_id"], out[2]["name"]) == (calls[1]["id"], "get_time")  # by name
    assert (out[3]["tool_call_id"], out[3]["name"]) == (calls[0]["id"], "get_weather")  # the one left


@pytest.mark.parametrize("stream", [False, True])
def test_chat_with_tools_through_the_client(tool_client, stream):
    """A dict tool and a Python function (the client converts it) are offered; the answer is content or calls
    of those tools, in Ollama's shapes."""
    opts = {"temperature": 1, "num_predict": 40}
    plain = tool_client.chat(model=TOOL_MODEL, messages=ASK, options=opts | {"num_predict": 1}, stream=False)
    for seed in range(3):
        args = dict(model=TOOL_MODEL, messages=ASK, tools=[TOOLS[0], get_time], options=opts | {"seed": seed})
        if stream:
            parts = list(tool_client.chat(**args, stream=True))
            assert parts[-1].done and not any(p.done for p in parts[:-1])
            calls = [c for p in parts for c in p.message.tool_calls or []]
            done = parts[-1]
        else:
            done = tool_client.chat(**args, stream=False)
            calls = list(done.message.tool_calls or [])
        assert done.done_reason in ("stop", "length")
        assert done.prompt_eval_count > plain.prompt_eval_count  # the tools are in the prompt
        for call in calls:
            assert call.function.name in ("get_weather", "get_time") and isinstance(call.function.arguments, dict)


def test_tool_results_are_rendered(tool_client):
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}
    history = [*ASK, {"role": "assistant", "content": "", "tool_calls": [call]}]

    def prompt_tokens(result: str) -> int:
        msgs = [*history, {"role": "tool", "content": result, "tool_name": "get_weather"}]
        r = tool_client.chat(model=TOOL_MODEL, messages=msgs, tools=TOOLS, options={"num_predict": 2}, stream=False)
        assert r.done and r.message.role == "assistant"
        return int(r.prompt_eval_count)

    short = prompt_tokens("22 C")
    assert prompt_tokens("22 C, sunny, light wind from the west") > short
    without = tool_client.chat(model=TOOL_MODEL, messages=ASK, tools=TOOLS, options={"num_predict": 2})
    assert short > without.prompt_eval_count  # the call and its result are in the prompt


def test_show_lists_the_tools_capability(tool_client):
    assert "tools" in tool_client.show(TOOL_MODEL).capabilities


BAD_TOOLS = [
    ({"tools": {"type": "function"}}, "'tools' must be an array"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools[0].function.parameters"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "two tools are named"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": {}}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"name": "f"}]}]}, "messages[0].tool_calls[0].function"),
    (
        {"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]},
        "messages[0].tool_calls[0].function.name",
    ),
    (
        {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}]},
        "messages[0].tool_calls[0].function.arguments",
    ),
    ({"messages": [{"role": "tool", "content": "x", "tool_name": 3}]}, "messages[0].tool_name"),
    ({"messages": [{"role": "tool", "content": ["x"]}]}, "messages[0] must have a role"),
]


@pytest.mark.parametrize(("body", "needle"), BAD_TOOLS, ids=[n for _, n in BAD_TOOLS])
def test_every_bad_tool_field_is_one_400_naming_it(tools_server, body, needle):
    r = httpx.post(tools_server.url + "/api/chat", json={"model": TOOL_MODEL, "messages": ASK, **body}, timeout=30)
    assert r.status_code == 400 and needle in r.json()["error"], (body, r.text)


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_comes_back_as_message_tool_calls(tool_client, stream):
    """Ollama has no tool_choice; `format` holding the output to a call object ({"name", "arguments"}, which
    the parser takes as a call) makes the tiny model write one, to see it come back through the client."""
    jsonschema = require("jsonschema")
    call_schema = {
        "type": "object",
        "properties": {"name": {"const": "get_time"}, "arguments": chat_tools.CLOCK},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    for seed in range(3):
        args = dict(model=TOOL_MODEL, messages=ASK, tools=TOOLS, format=call_schema)
        opts = {"temperature": 1, "seed": seed, "num_predict": 400}
        if stream:
            parts = list(tool_client.chat(**args, options=opts, stream=True))
            with_calls = [p for p in parts if p.message.tool_calls]
            assert len(with_calls) == 1 and not with_calls[0].done, parts  # one chunk, once complete
            calls, done = with_calls[0].message.tool_calls, parts[-1]
            assert "".join(p.message.content for p in parts) == ""
        else:
            done = tool_client.chat(**args, options=opts, stream=False)
            calls = done.message.tool_calls
            assert done.message.content == ""
        assert done.done and done.done_reason == "stop"
        assert [c.function.name for c in calls] == ["get_time"]
        jsonschema.validate(dict(calls[0].function.arguments), chat_tools.CLOCK)
