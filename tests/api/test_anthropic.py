"""Anthropic's Messages API through the official `anthropic` SDK against a real uvicorn gateway (tiny model):
messages and streaming, system prompts, stop sequences, usage; errors in Anthropic's shape. Tool use: calls
enforced by a grammar for tool_choice any/tool (always a valid tool_use, streamed or not), tool_result round
trips, one 400 per bad field; the slow tier runs a round trip on SmolLM2."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api import test_tools as chat_tools
from tests.conftest import require


@pytest.fixture(scope="module")
def client(tiny_server):  # the SDK (2.x) takes sampling fields through extra_body
    anthropic = require("anthropic")
    return anthropic.Anthropic(base_url=tiny_server.url, api_key="unused", max_retries=0)


def model(tiny_server) -> str:  # type: ignore[no-untyped-def]
    return str(httpx.get(tiny_server.url + "/v1/models", timeout=30).json()["data"][0]["id"])


def test_a_message_and_the_same_message_streamed(client, tiny_server):
    name = model(tiny_server)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    r = client.messages.create(
        model=name, max_tokens=12, messages=msgs, system="be brief", extra_body={"temperature": 0}
    )
    assert r.type == "message" and r.role == "assistant" and r.content[0].type == "text"
    assert r.stop_reason in ("end_turn", "max_tokens") and 0 < r.usage.output_tokens <= 12 and r.usage.input_tokens > 0
    with client.messages.stream(
        model=name, max_tokens=12, messages=msgs, system="be brief", extra_body={"temperature": 0}
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == r.content[0].text == final.content[0].text  # greedy: the same text either way
    assert final.stop_reason == r.stop_reason and final.usage.output_tokens == r.usage.output_tokens


def test_max_tokens_is_reported(client, tiny_server):
    r = client.messages.create(
        model=model(tiny_server),
        max_tokens=3,
        messages=[{"role": "user", "content": "tell me a story"}],
        extra_body={"temperature": 0.9},
    )
    assert r.usage.output_tokens <= 3 and r.stop_reason in ("max_tokens", "end_turn")


def test_errors_are_anthropic_shaped(client, tiny_server):
    anthropic = require("anthropic")
    name = model(tiny_server)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model=name, max_tokens=5, messages=[{"role": "tool", "content": "hi"}])
    assert "role" in err.value.body["error"]["message"] and err.value.body["type"] == "error"
    for body, needle in [
        ({"model": name, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": name, "max_tokens": 5, "messages": []}, "messages"),
        (
            {"model": name, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "text blocks",
        ),
        (
            {"model": name, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5},
            "temperature",
        ),
        (
            {"model": name, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f"}]},
            "tools",
        ),
    ]:
        r = httpx.post(tiny_server.url + "/v1/messages", json=body, timeout=30)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"


# --- tool use ----------------------------------------------------------------------------------------------

WEATHER, CLOCK = chat_tools.WEATHER, chat_tools.CLOCK  # the same argument schemas as the chat tests
TOOLS = [
    {"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER},
    {"name": "get_time", "description": "The time in a zone", "input_schema": CLOCK},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL_MODEL = chat_tools.MODEL
# the chat tests' fixture: the tiny model with room for the tools' system block (tiny_server's 256 tokens are too
# few with the tiny 320-token vocabulary); one server for this module
tools_server = chat_tools.tools_server


@pytest.fixture(scope="module")
def tool_client(tools_server):
    anthropic = require("anthropic")
    return anthropic.Anthropic(base_url=tools_server.url, api_key="unused", max_retries=0)


def check_tool_uses(message, allowed: set[str], parallel: bool) -> list:  # type: ignore[no-untyped-def]
    """The message is calls only (stop_reason tool_use), each of an allowed tool with input valid for it."""
    jsonschema = require("jsonschema")
    uses = [b for b in message.content if b.type == "tool_use"]
    assert message.stop_reason == "tool_use" and uses, message
    assert parallel or len(uses) == 1, uses
    assert all(b.type == "tool_use" for b in message.content), message.content
    for b in uses:
        assert b.id.startswith("toolu_") and b.name in allowed, b
        jsonschema.validate(b.input, SCHEMAS[b.name])
    assert len({b.id for b in uses}) == len(uses)
    return uses


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    "choice",
    [
        {"type": "any"},
        {"type": "any", "disable_parallel_tool_use": True},
        {"type": "tool", "name": "get_time"},
        {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    ],
    ids=["any", "any-single", "tool", "tool-single"],
)
def test_any_and_a_named_tool_always_give_valid_tool_use(tool_client, choice, stream):
    allowed = {choice["name"]} if "name" in choice else set(SCHEMAS)
    parallel = not choice.get("disable_parallel_tool_use", False)
    for temperature in (0, 1, 1, 1):  # greedy, then sampled (Anthropic's API has no seed)
        extra = {"temperature": temperature}
        args = dict(model=TOOL_MODEL, max_tokens=1500, messages=ASK, tools=TOOLS, tool_choice=choice, extra_body=extra)
        if stream:
            with tool_client.messages.stream(**args) as s:
                for _ in s:
                    pass
                message = s.get_final_message()
        else:
            message = tool_client.messages.create(**args)
        check_tool_uses(message, allowed, parallel)


def sse(url: str, body: dict) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    """(event, data) pairs of a streamed /v1/messages."""
    with httpx.stream("POST", f"{url}/v1/messages", json=body | {"stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        lines = [line for line in r.iter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert len(names) == len(datas) and all(n == d["type"] for n, d in zip(names, datas))
    events = require("pydantic").TypeAdapter(require("anthropic").types.RawMessageStreamEvent)
    for name, data in zip(names, datas):  # the SDK's own typed models, validated (they raise on a bad shape)
        if name != "ping":
            events.validate_python(data)
    return list(zip(names, datas))


def test_streamed_tool_use_follows_anthropics_events(tools_server):
    body = {"model": TOOL_MODEL, "max_tokens": 1500, "messages": ASK, "tools": TOOLS, "temperature": 0}
    events = sse(tools_server.url, body | {"tool_choice": {"type": "tool", "name": "get_weather"}})
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    start = next(d for n, d in events if n == "content_block_start")
    assert start["index"] == 0 and start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["input"] == {} and start["content_block"]["id"].startswith("toolu_")
    assert start["content_block"]["name"] == "get_weather"
    deltas = [d["delta"] for n, d in events if n == "content_block_delta" and d["index"] == 0]
    assert deltas and all(d["type"] == "input_json_delta" for d in deltas)
    require("jsonschema").validate(json.loads("".join(d["partial_json"] for d in deltas)), WEATHER)
    assert ("content_block_stop", {"type": "content_block_stop", "index": 0}) in events
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    whole = httpx.post(f"{tools_server.url}/v1/messages", json=body | {"tool_choice": {"type": "any"}}, timeout=120)
    message = require("anthropic").types.Message.model_validate(whole.json())
    check_tool_uses(message, set(SCHEMAS), True)


def test_a_round_trip_with_tool_results(tool_client):
    first = tool_client.messages.create(
        model=TOOL_MODEL, max_tokens=1500, messages=ASK, tools=TOOLS, tool_choice={"type": "any"}
    )
    uses = check_tool_uses(first, set(SCHEMAS), True)
    history = [*ASK, {"role": "assistant", "content": [b.model_dump() for b in first.content]}]

    def answer(results: list[dict]) -> object:  # type: ignore[type-arg]
        msgs = [*history, {"role": "user", "content": results}]
        return tool_client.messages.create(
            model=TOOL_MODEL, max_tokens=8, messages=msgs, tools=TOOLS, extra_body={"temperature": 0}
        )

    short = answer([{"type": "tool_result", "tool_use_id": b.id, "content": "22 C"} for b in uses])
    assert short.stop_reason in ("end_turn", "max_tokens", "tool_use") and short.usage.output_tokens > 0
    assert short.usage.input_tokens > first.usage.input_tokens  # the calls and their results are in the prompt
    blocks = [{"type": "text", "text": "22 C, sunny, light wind from the west"}]
    longer = answer([{"type": "tool_result", "tool_use_id": b.id, "content": blocks} for b in uses])
    assert longer.usage.input_tokens > short.usage.input_tokens  # the result's text is what grew
    failed = answer([{"type": "tool_result", "tool_use_id": b.id, "content": "22 C", "is_error": True} for b in uses])
    assert failed.usage.input_tokens > short.usage.input_tokens  # marked as an error
    with_text = [
        *[{"type": "tool_result", "tool_use_id": b.id, "content": "22 C"} for b in uses],
        {"type": "text", "text": "and tomorrow?"},
    ]
    assert answer(with_text).usage.input_tokens > short.usage.input_tokens
    with tool_client.messages.stream(
        model=TOOL_MODEL,
        max_tokens=8,
        messages=[*history, {"role": "user", "content": with_text}],
        tools=TOOLS,
        extra_body={"temperature": 0},
    ) as s:
        final = s.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use") and final.content


def test_tool_choice_none_leaves_the_tools_out(tool_client):
    def input_tokens(**extra: object) -> int:
        r = tool_client.messages.create(model=TOOL_MODEL, max_tokens=4, messages=ASK, **extra)
        assert r.stop_reason in ("end_turn", "max_tokens", "tool_use")
        return int(r.usage.input_tokens)

    plain = input_tokens()
    assert input_tokens(tools=TOOLS, tool_choice={"type": "none"}) == plain
    assert input_tokens(tools=TOOLS) > plain  # auto: the tools' block is in the prompt


def test_auto_answers_are_text_or_valid_tool_use(tool_client):
    for _ in range(3):
        for stream in (False, True):
            args = dict(model=TOOL_MODEL, max_tokens=40, messages=ASK, tools=TOOLS, extra_body={"temperature": 1})
            if stream:
                with tool_client.messages.stream(**args) as s:
                    message = s.get_final_message()
            else:
                message = tool_client.messages.create(**args)
            if message.stop_reason == "tool_use":
                check_tool_uses(message, set(SCHEMAS), True)
            else:
                assert [b.type for b in message.content] == ["text"], message


USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "unit": "celsius"}}
BAD_TOOLS = [
    ({"tools": {"name": "f"}}, "tools must be a list"),
    ({"tools": ["f"]}, "tools[0] must be an object"),
    ({"tools": [{"name": "f"}]}, "tools[0].input_schema is required"),
    ({"tools": [{"name": "a b", "input_schema": WEATHER}]}, "'tools[0].name' must be 1-64"),
    ({"tools": [{"input_schema": WEATHER}]}, "'tools[0].name' must be a string"),
    ({"tools": [{"name": "f", "description": 3, "input_schema": WEATHER}]}, "'tools[0].description'"),
    ({"tools": [{"name": "f", "input_schema": []}]}, "'tools[0].input_schema' must be a JSON schema"),
    ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}, "'tools[0].input_schema' must describe"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "two tools are named"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"tools": TOOLS, "tool_choice": "any"}, "tool_choice must be an object"),
    ({"tools": TOOLS, "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ({"tool_choice": {"type": "any"}}, "no tools were given"),
    ({"tools": TOOLS, "tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "any", "disable_parallel_tool_use": "yes"}}, "disable_parallel"),
    (
        {
            "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}],
            "tool_choice": {"type": "any"},
        },
        "tools[0].input_schema",
    ),
    ({"messages": [{"role": "assistant", "content": [{**USE, "id": ""}]}]}, "messages[0].content[0].id"),
    ({"messages": [{"role": "assistant", "content": [{**USE, "name": 3}]}]}, "messages[0].content[0].name"),
    ({"messages": [{"role": "assistant", "content": [{**USE, "input": "{}"}]}]}, "messages[0].content[0].input"),
    ({"messages": [{"role": "assistant", "content": [USE, USE]}]}, "messages[0].content[1].id"),
    ({"messages": [{"role": "assistant", "content": [{"type": "image"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "messages[0].content[0].tool_use_id"),
    (
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]}]},
        "matches no tool_use",
    ),
    (
        {
            "messages": [
                {"role": "assistant", "content": [USE]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": 3}]},
            ]
        },
        "messages[1].content[0].content",
    ),
    (
        {
            "messages": [
                {"role": "assistant", "content": [USE]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "image"}]}],
                },
            ]
        },
        "messages[1].content[0].content[0]",
    ),
    (
        {
            "messages": [
                {"role": "assistant", "content": [USE]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": "no"}]},
            ]
        },
        "messages[1].content[0].is_error",
    ),
    ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content[0] must be a content block"),
]


@pytest.mark.parametrize(("body", "needle"), BAD_TOOLS, ids=[n for _, n in BAD_TOOLS])
def test_every_bad_tool_field_is_one_400_naming_it(tools_server, body, needle):
    full = {"model": TOOL_MODEL, "max_tokens": 5, "messages": ASK, **body}
    r = httpx.post(tools_server.url + "/v1/messages", json=full, timeout=30)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], (body, r.text)
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"


# --- SmolLM2 (slow): a full round trip with the official SDK ----------------------------------------------

CITY = chat_tools.CITY  # closed (additionalProperties false): else SmolLM2 invents arguments until max_tokens
GET_WEATHER = [{"name": "get_weather", "description": "Get the current weather in a city", "input_schema": CITY}]
PARIS = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def smol(smollm2_server):
    anthropic = require("anthropic")
    return anthropic.Anthropic(base_url=smollm2_server.url, api_key="unused", max_retries=0)


@pytest.mark.slow
@pytest.mark.ring
def test_a_full_tool_round_trip_on_smollm2(smol):
    first = smol.messages.create(
        model="smollm2-135m",
        max_tokens=60,
        messages=PARIS,
        tools=GET_WEATHER,
        tool_choice={"type": "any"},
        extra_body={"temperature": 0},
    )
    assert first.stop_reason == "tool_use", first
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and "paris" in use.input["city"].lower(), use
    history = [
        *PARIS,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 22 degrees Celsius"}],
        },
    ]
    with smol.messages.stream(
        model="smollm2-135m", max_tokens=80, messages=history, tools=GET_WEATHER, extra_body={"temperature": 0}
    ) as s:
        final = s.get_final_message()
    assert final.stop_reason == "end_turn", final
    assert [b.type for b in final.content] == ["text"] and final.content[0].text.strip(), final


# --- the request and response shapes, without a server -----------------------------------------------------


def test_tool_use_and_tool_result_blocks_become_the_conversations_calls_and_results():
    from exo_actor.api.anthropic_input import chat_messages

    body = {
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [
            *ASK,
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "x"},
                    {"type": "text", "text": "Looking."},
                    USE,
                    {**USE, "id": "toolu_2", "name": "get_time", "input": {"zone": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "13:00"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no data", "is_error": True},
                    {"type": "text", "text": "thanks"},
                ],
            },
        ],
    }
    assert chat_messages(body) == [
        {"role": "system", "content": "be brief"},
        *ASK,
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": USE["input"]}},
                {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": {"zone": 1}}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_2", "name": "get_time", "content": "13:00"},
        {"role": "tool", "tool_call_id": "toolu_1", "name": "get_weather", "content": "Error: no data"},
        {"role": "user", "content": "thanks"},
    ]


def test_streamed_blocks_are_numbered_and_one_call_at_most_without_parallel():
    from exo_actor.api.anthropic_output import StreamedBlocks, content_blocks
    from exo_actor.tools import ToolCall

    calls = [ToolCall("get_time", {"zone": 1}), ToolCall("get_time", {"zone": 2})]
    for parallel in (True, False):
        blocks = StreamedBlocks(parallel)
        events = blocks.text("Sure.") + blocks.call(calls[0]) + blocks.call(calls[1]) + blocks.finish()
        starts = [d for n, d in events if n == "content_block_start"]
        stops = [d["index"] for n, d in events if n == "content_block_stop"]
        assert [s["index"] for s in starts] == stops == list(range(3 if parallel else 2))
        assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use", "tool_use"][: len(starts)]
        jsons = [d["delta"]["partial_json"] for n, d in events if d.get("delta", {}).get("type") == "input_json_delta"]
        assert [json.loads(j) for j in jsons] == [c.arguments for c in calls][: blocks.calls]
    empty = StreamedBlocks()
    assert [n for n, _ in empty.finish()] == ["content_block_start", "content_block_stop"]  # an empty text block
    assert content_blocks(None, []) == [{"type": "text", "text": ""}]
    assert [b["type"] for b in content_blocks("Sure.", calls)] == ["text", "tool_use", "tool_use"]
