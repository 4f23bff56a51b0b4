"""Tool calling on POST /v1/chat/completions through a real gateway on loopback and the official openai
client: validation (one 400 naming the field), calls enforced by a grammar for tool_choice required or a
named function (always a valid call, greedy or sampled, streamed or not), tool results sent back, and
requests without tools unchanged. The slow tier runs a full round trip on SmolLM2."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from tests.api.schemas import validate
from tests.api.servers import thread_server
from tests.conftest import require
from tests.tiny import TinySpec, write_gguf

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
CLOCK = {
    "type": "object",
    "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time", "description": "The time in a zone", "parameters": CLOCK}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
MODEL = "tiny.gguf"


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    """The tiny random model with a context long enough for the tools' system block (the shared tiny_server
    has 256 tokens; the block alone is longer with the tiny 320-token vocabulary)."""
    path = tmp_path_factory.mktemp("tools") / MODEL
    write_gguf(path, TinySpec(context=4096))
    with thread_server(path, max_concurrent=4) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(tools_server):
    openai = require("openai")
    return openai.OpenAI(base_url=f"{tools_server.url}/v1", api_key="unused", max_retries=0)


def post(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": ASK, **body}, timeout=120)


def check_call(call: Any, allowed: set[str]) -> None:
    """One tool call (SDK object) names an allowed function and its arguments validate against its schema."""
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in allowed
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


BAD = [
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    (
        {"tools": [TOOLS[0], {"type": "function", "function": {"name": "f", "description": 3}}]},
        "tools[1].function.description",
    ),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools[0].function.parameters"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
        "tools[0].function.parameters",
    ),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]}, "tools[0].function.strict"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": 3}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "file"}}, "tool_choice.type"),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice.function"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    (
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}},
                    },
                }
            ],
            "tool_choice": "required",
        },
        "tools[0].function.parameters",
    ),
    ({"messages": [{"role": "tool", "content": "22 C"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "tool_calls": {}}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"type": "function"}]}]}, "messages[0].tool_calls[0].id"),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}],
                }
            ]
        },
        "messages[0].tool_calls[0].function.arguments",
    ),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                }
            ]
        },
        "messages[0].tool_calls[0].function.arguments",
    ),
    (
        {
            "messages": [
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"arguments": "{}"}}]}
            ]
        },
        "messages[0].tool_calls[0].function.name",
    ),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[p for _, p in BAD])
def test_every_bad_field_is_one_400_naming_it(tools_server, body, param):
    r = post(tools_server.url, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    validate(r.json(), "ErrorResponse")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    ("choice", "parallel"),
    [
        ("required", False),
        ("required", True),
        ({"type": "function", "function": {"name": "get_time"}}, False),
        ({"type": "function", "function": {"name": "get_weather"}}, True),
    ],
    ids=["required", "required-parallel", "named", "named-parallel"],
)
def test_required_and_named_always_give_a_valid_call(client, choice, parallel, stream):
    allowed = {choice["function"]["name"]} if isinstance(choice, dict) else set(SCHEMAS)
    for temperature, seed in [(0, None), (1, 1), (1, 2), (1, 3), (1, 4)]:
        args: dict[str, Any] = dict(
            model=MODEL,
            messages=ASK,
            tools=TOOLS,
            tool_choice=choice,
            parallel_tool_calls=parallel,
            temperature=temperature,
            seed=seed,
            max_tokens=1500,
        )
        if stream:
            with client.chat.completions.stream(**args) as s:
                for _ in s:
                    pass
                done = s.get_final_completion()
        else:
            done = client.chat.completions.create(**args)
            validate(done.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
        choice0 = done.choices[0]
        calls = choice0.message.tool_calls
        assert choice0.finish_reason == "tool_calls", (temperature, seed, choice0)
        assert calls and (parallel and choice == "required" or len(calls) == 1), calls  # named: one call
        assert choice0.message.content is None, choice0.message.content
        for call in calls:
            check_call(call, allowed)
        assert len({c.id for c in calls}) == len(calls)


def test_streamed_chunks_follow_openais_shapes(tools_server):
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "stream": True}
    with httpx.stream("POST", f"{tools_server.url}/v1/chat/completions", json=body | {"temperature": 0}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    for e in events:
        validate(e, "CreateChatCompletionStreamResponse")
    deltas = [e["choices"][0]["delta"] for e in events]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["arguments"] == ""
    arguments = "".join(c["function"]["arguments"] for c in calls)
    jsonschema.validate(json.loads(arguments), SCHEMAS[calls[0]["function"]["name"]])
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"][0]["finish_reason"]] == ["tool_calls"]


def test_tool_results_are_accepted(client):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"},
    ]
    for tools in (TOOLS, None):
        extra = {"tools": tools} if tools else {}
        r = client.chat.completions.create(model=MODEL, messages=history, max_tokens=8, temperature=0, **extra)
        assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
        assert r.usage.prompt_tokens > 0


def test_requests_without_tools_are_unchanged(tools_server):
    plain = post(tools_server.url, temperature=0, max_tokens=12).json()
    message = plain["choices"][0]["message"]
    assert "tool_calls" not in message and isinstance(message["content"], str)
    assert plain["choices"][0]["finish_reason"] in ("stop", "length")
    # tool_choice none: the tools are not offered (not in the prompt), so the answer is the same
    none = post(tools_server.url, temperature=0, max_tokens=12, tools=TOOLS, tool_choice="none").json()
    assert none["choices"][0]["message"] == message
    assert none["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    offered = post(tools_server.url, temperature=0, max_tokens=12, tools=TOOLS).json()
    assert offered["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]  # the tools' system block


@pytest.mark.parametrize("stream", [False, True])
def test_auto_answers_are_always_valid(tools_server, stream):
    for seed in range(4):
        body = {"tools": TOOLS, "temperature": 1, "seed": seed, "max_tokens": 40, "stream": stream}
        if not stream:
            r = post(tools_server.url, **body)
            assert r.status_code == 200, r.text
            validate(r.json(), "CreateChatCompletionResponse")
            continue
        with httpx.stream(
            "POST", f"{tools_server.url}/v1/chat/completions", json={"model": MODEL, "messages": ASK, **body}
        ) as r:
            assert r.status_code == 200
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        for e in events:
            validate(e, "CreateChatCompletionStreamResponse")


# --- SmolLM2 (slow): a full round trip with the official client ---------------------------------------------

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "The city's name"}},
    "required": ["city"],
    "additionalProperties": False,
}
GET_WEATHER = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Get the current weather in a city", "parameters": CITY},
    }
]
PARIS = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def slow_ring(test: Any) -> Any:
    """SmolLM2 served by `exo-actor start` (a process): the slow and ring tiers."""
    return pytest.mark.ring(pytest.mark.slow(test))


@pytest.fixture(scope="module")
def smol(smollm2_server):
    openai = require("openai")
    return openai.OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="unused", max_retries=0)


@slow_ring
def test_a_full_round_trip_on_smollm2(smol):
    r = smol.chat.completions.create(
        model="smollm2-135m", messages=PARIS, tools=GET_WEATHER, tool_choice="required", temperature=0, max_tokens=60
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, CITY)
    assert "paris" in args["city"].lower(), args
    history = [
        *PARIS,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"city": "Paris", "weather": "sunny, 22 C"})},
    ]
    answer = smol.chat.completions.create(
        model="smollm2-135m", messages=history, tools=GET_WEATHER, temperature=0, max_tokens=80
    )
    final = answer.choices[0]
    assert final.finish_reason == "stop" and final.message.content and not final.message.tool_calls, final


@slow_ring
def test_the_sdks_stream_accumulates_a_call_on_smollm2(smol):
    with smol.chat.completions.stream(
        model="smollm2-135m", messages=PARIS, tools=GET_WEATHER, tool_choice="required", temperature=0, max_tokens=60
    ) as stream:
        kinds = {type(event).__name__ for event in stream}
        done = stream.get_final_completion()
    assert "FunctionToolCallArgumentsDoneEvent" in kinds, kinds
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), CITY)


@slow_ring
@pytest.mark.parametrize("stream", [False, True])
def test_auto_on_smollm2_is_content_or_calls_never_an_error(smol, stream):
    for seed in range(3):
        args: dict[str, Any] = dict(
            model="smollm2-135m", messages=PARIS, tools=GET_WEATHER, temperature=1, seed=seed, max_tokens=60
        )
        if stream:  # the SDK's accumulation (its get_final_completion refuses a length-cut answer)
            with smol.chat.completions.stream(**args) as s:
                for _ in s:
                    pass
                done: Any = s.current_completion_snapshot
        else:
            done = smol.chat.completions.create(**args)
        choice = done.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                assert call.function.name == "get_weather"
                assert isinstance(json.loads(call.function.arguments), dict)
        else:
            assert choice.finish_reason in ("stop", "length") and choice.message.content is not None
