"""OpenAI's Responses API (POST /v1/responses) through the official `openai` SDK against a real uvicorn gateway:
text and item input, instructions, previous_response_id chaining and the bounded store, streaming semantic
events, max_output_tokens, structured output, function tools (function_call items, streamed, and a
function_call_output round trip), and one 400 naming the param for every bad field. Response objects and
stream events are validated strictly against the SDK's own pydantic types."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field, TypeAdapter

from exo_actor.api import GatewayConfig
from exo_actor.api.response_store import ResponseStore
from exo_actor.api.responses_input import parse_input
from tests.api.schemas import validate
from tests.api.servers import thread_server
from tests.conftest import require
from tests.tiny import TinySpec, write_gguf

openai = require("openai")
from openai.types.responses import Response, ResponseStreamEvent  # noqa: E402

EVENTS = TypeAdapter(ResponseStreamEvent)
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "pet": {"enum": ["cat", "dog"]},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}


class Pet(BaseModel):
    kind: Literal["cat", "dog"]
    age: int = Field(ge=0, le=30)


WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "the weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Oslo"]}, "days": {"type": "integer", "minimum": 1, "maximum": 3}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}
CLOCK = {"type": "function", "name": "clock", "parameters": {"type": "object", "properties": {}}}


# fields OpenAI's published schema requires that the SDK's types do not declare
PUBLISHED_ONLY = {"response.function_call_arguments.done": {"name"}}


def strict(model: BaseModel, where: str = "", allowed: set[str] | frozenset[str] = frozenset()) -> None:
    """No field anywhere in the parsed object that the SDK's types do not declare (they allow extras)."""
    extra = set(model.model_extra or {}) - (allowed if not where else set())
    assert not extra, f"unexpected fields at {where or 'top'}: {sorted(extra)}"
    for name in type(model).model_fields:
        value = getattr(model, name)
        for i, v in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(v, BaseModel):
                strict(v, f"{where}.{name}[{i}]")


def valid_response(data: dict[str, Any]) -> Response:
    """The response validated by OpenAI's published JSON Schema and, strictly, by the SDK's pydantic type."""
    validate(data, "Response")
    r = Response.model_validate(data)  # raises on a missing required field or a wrong type
    strict(r)
    return r


def valid_event(kind: str, data: dict[str, Any]) -> None:
    """A stream event validated like a response (its `event:` line named its type)."""
    assert data["type"] == kind
    validate(data, "ResponseStreamEvent")
    strict(EVENTS.validate_python(data), allowed=PUBLISHED_ONLY.get(kind, set()))


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def name(tiny_server) -> str:
    return str(httpx.get(tiny_server.url + "/v1/models", timeout=30).json()["data"][0]["id"])


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    """A tiny model with room for a tools block in its prompt (the tiny_server's context is 256)."""
    path = tmp_path_factory.mktemp("responses") / "tiny-2k.gguf"
    write_gguf(path, TinySpec(context=2048))
    with thread_server(path, max_concurrent=4) as srv:
        srv.name = str(httpx.get(srv.url + "/v1/models", timeout=30).json()["data"][0]["id"])
        srv.client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        yield srv


def post(srv: Any, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(srv.url + "/v1/responses", json=body, timeout=60)


def sse(srv: Any, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event line, data) of every event of a streamed response."""
    out = []
    with httpx.stream("POST", srv.url + "/v1/responses", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                assert kind is not None, "a data line without its event line"
                out.append((kind, json.loads(line[6:])))
                kind = None
    return out


def test_text_input_with_instructions(client, name, tiny_server):
    r = client.responses.create(model=name, input="hello there", instructions="be brief", max_output_tokens=8)
    assert r.object == "response" and r.model == name and r.instructions == "be brief"
    assert [o.type for o in r.output] == ["message"] and r.output[0].role == "assistant"
    assert r.output_text == r.output[0].content[0].text and r.output[0].content[0].type == "output_text"
    u = r.usage
    assert 0 < u.output_tokens <= 8 and u.total_tokens == u.input_tokens + u.output_tokens
    assert r.status == ("incomplete" if u.output_tokens == 8 else "completed")
    bare = client.responses.create(model=name, input="hello there", max_output_tokens=8)
    assert r.usage.input_tokens > bare.usage.input_tokens  # the instructions were in the prompt
    raw = post(tiny_server, {"model": name, "input": "hello there", "instructions": "be brief", "max_output_tokens": 8})
    assert raw.status_code == 200
    valid_response(raw.json())


def test_item_input_is_the_same_conversation_as_text(client, name):
    text = client.responses.create(model=name, input="hello there", max_output_tokens=6, temperature=0)
    items = client.responses.create(
        model=name,
        input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]}],
        max_output_tokens=6,
        temperature=0,
    )
    assert items.output_text == text.output_text and items.usage.input_tokens == text.usage.input_tokens
    convo = [
        {"role": "developer", "content": "answer in French"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "bonjour"}]},
        {"role": "user", "content": "and again?"},
    ]
    longer = client.responses.create(model=name, input=convo, max_output_tokens=4, temperature=0)
    assert longer.usage.input_tokens > text.usage.input_tokens


def test_previous_response_id_continues_the_conversation(client, name):
    first = client.responses.create(model=name, input="hi", instructions="be brief", max_output_tokens=5, temperature=0)
    second = client.responses.create(
        model=name, input="more please", previous_response_id=first.id, max_output_tokens=5, temperature=0
    )
    assert second.previous_response_id == first.id
    # the same turn written out by hand (instructions belong to their own turn only, as OpenAI does)
    spelled = client.responses.create(
        model=name,
        input=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "more please"},
        ],
        max_output_tokens=5,
        temperature=0,
    )
    assert second.usage.input_tokens == spelled.usage.input_tokens
    assert second.output_text == spelled.output_text
    third = client.responses.create(model=name, input="x", previous_response_id=second.id, max_output_tokens=2)
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens


def test_store_false_is_not_kept_and_unknown_ids_are_400(client, name):
    gone = client.responses.create(model=name, input="hi", store=False, max_output_tokens=2)
    for rid in (gone.id, "resp_nosuchresponse"):
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(model=name, input="again", previous_response_id=rid, max_output_tokens=2)
        assert err.value.body["param"] == "previous_response_id" and rid in err.value.body["message"]
        assert err.value.body["code"] == "previous_response_not_found"


def test_streaming_events_in_order_and_typed(client, name, tiny_server):
    body = {"model": name, "input": "tell me a story", "max_output_tokens": 12, "temperature": 0}
    events = sse(tiny_server, body)
    kinds = [k for k, _ in events]
    for kind, data in events:
        valid_event(kind, data)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    deltas = [d["delta"] for k, d in events if k == "response.output_text.delta"]
    assert deltas and kinds == TEXT_EVENTS[:4] + ["response.output_text.delta"] * len(deltas) + TEXT_EVENTS[5:] + [
        f"response.{events[-1][1]['response']['status']}"
    ]
    final = valid_response(events[-1][1]["response"])
    assert final.output_text == "".join(deltas) == events[-4][1]["text"]
    assert len({d["response"]["id"] for k, d in events if "response" in d}) == 1
    # the SDK's own stream helper accumulates the same response; greedy, so the same text as not streamed
    with client.responses.stream(model=name, input="tell me a story", max_output_tokens=12, temperature=0) as s:
        texts = [e.delta for e in s if e.type == "response.output_text.delta"]
    plain = client.responses.create(model=name, input="tell me a story", max_output_tokens=12, temperature=0)
    assert "".join(texts) == final.output_text == plain.output_text


def test_max_output_tokens_makes_it_incomplete(client, name, tiny_server):
    # the tiny random model, greedy, does not stop within 3 tokens on this prompt (it repeats one token)
    r = client.responses.create(model=name, input="tell me a story", max_output_tokens=3, temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and r.output[0].status == "incomplete"
    stream = client.responses.create(
        model=name, input="tell me a story", max_output_tokens=3, temperature=0, stream=True
    )
    last = list(stream)[-1]
    assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == r.output_text


def test_json_schema_output_validates(client, name, tiny_server):
    fmt = {"type": "json_schema", "name": "person", "schema": SCHEMA, "strict": True}
    for _ in range(3):  # sampled at temperature 1 from a random model: only the grammar keeps it valid
        r = client.responses.create(model=name, input="a person", text={"format": fmt}, max_output_tokens=150)
        assert r.status == "completed", r.output_text
        jsonschema.validate(json.loads(r.output_text), SCHEMA)
        assert r.text.format.type == "json_schema" and r.text.format.name == "person"
    parsed = client.responses.parse(model=name, input="a pet", text_format=Pet, max_output_tokens=100)
    assert isinstance(parsed.output_parsed, Pet)  # the SDK's own schema from a pydantic model, parsed back
    events = sse(tiny_server, {"model": name, "input": "x", "text": {"format": fmt}, "max_output_tokens": 150})
    done = valid_response(events[-1][1]["response"])
    assert done.status == "completed" and done.text.format.schema_ == SCHEMA
    jsonschema.validate(json.loads("".join(d["delta"] for k, d in events if k == "response.output_text.delta")), SCHEMA)


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"model": None}, "model"),
        ({"input": None}, "input"),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"input": ["hi"]}, "input[0]"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0]"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
        ({"instructions": 3}, "instructions"),
        ({"previous_response_id": 3}, "previous_response_id"),
        ({"store": "yes"}, "store"),
        ({"stream": 1}, "stream"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": 10**6}, "max_output_tokens"),
        ({"max_output_tokens": "8"}, "max_output_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format"),
        ({"text": {"format": {"type": "json_schema", "schema": SCHEMA}}}, "text.format.name"),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nonsense"}}}},
            "text.format.schema",
        ),
        ({"text": "json"}, "text"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [CLOCK]}, "tool_choice.name"),
        ({"tools": [CLOCK, CLOCK]}, "tools[1].name"),
        ({"tools": [{**CLOCK, "parameters": "x"}]}, "tools[0].parameters"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{x"}]}, "input[0].arguments"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"background": True}, "background"),
        ({"truncation": "middle"}, "truncation"),
        ({"input": "x" * 2000}, "input"),
    ],
)
def test_bad_fields_are_one_400_naming_the_param(tiny_server, name, patch, param):
    body = {"model": name, "input": "hi", "max_output_tokens": 4}
    body.update(patch)
    body = {k: v for k, v in body.items() if v is not None}
    r = post(tiny_server, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model="no-such-model", input="hi")
    assert err.value.body["param"] == "model"


def test_function_items_render_as_a_tool_round_trip(client, name):
    call = {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city": "Paris"}'}
    result = {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"}
    ask = {"role": "user", "content": "weather in Paris?"}
    r = client.responses.create(model=name, input=[ask, call, result], max_output_tokens=3, temperature=0)
    alone = client.responses.create(model=name, input=[ask], max_output_tokens=3, temperature=0)
    assert r.usage.input_tokens > alone.usage.input_tokens  # the call and its result are in the prompt


def test_a_named_tool_choice_is_a_function_call_item(tools_server):
    client, name = tools_server.client, tools_server.name
    choice = {"type": "function", "name": "weather"}
    r = client.responses.create(
        model=name, input="weather in Paris?", tools=[CLOCK, WEATHER], tool_choice=choice, max_output_tokens=300
    )
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and all(c.name == "weather" and c.call_id and c.status == "completed" for c in calls), r.output
    for c in calls:  # sampled from a random model: only the grammar makes the arguments valid
        jsonschema.validate(json.loads(c.arguments), WEATHER["parameters"])
    assert r.tools[1].name == "weather" and r.tool_choice.name == "weather"
    raw = post(tools_server, {"model": name, "input": "hi", "tools": [WEATHER], "tool_choice": choice})
    valid_response(raw.json())
    # the call's result goes back as a function_call_output item, continuing the stored conversation
    answer = {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"sky": "clear"}'}
    after = client.responses.create(
        model=name, input=[answer], previous_response_id=r.id, tools=[CLOCK, WEATHER], max_output_tokens=4
    )
    assert after.usage.input_tokens > r.usage.input_tokens + r.usage.output_tokens - 2


def test_a_required_call_streams_as_function_call_events(tools_server):
    client, name = tools_server.client, tools_server.name
    body = {"model": name, "input": "weather?", "tools": [WEATHER], "tool_choice": "required", "max_output_tokens": 300}
    body["parallel_tool_calls"] = False
    events = sse(tools_server, body)
    for kind, data in events:
        valid_event(kind, data)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    kinds = [k for k, _ in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ], kinds
    done = events[-2][1]["item"]
    assert done["type"] == "function_call" and done["id"] == events[2][1]["item"]["id"]
    assert done["arguments"] == events[3][1]["delta"] == events[4][1]["arguments"]
    jsonschema.validate(json.loads(done["arguments"]), WEATHER["parameters"])
    assert valid_response(events[-1][1]["response"]).output[0].call_id == done["call_id"]
    with client.responses.stream(**{k: v for k, v in body.items() if k != "stream"}) as s:
        final = s.get_final_response()
    assert final.output[0].type == "function_call" and final.output[0].name == "weather"


def test_tool_choice_none_leaves_the_tools_out(tools_server):
    client, name = tools_server.client, tools_server.name
    plain = client.responses.create(model=name, input="hi", max_output_tokens=2)
    offered = client.responses.create(model=name, input="hi", tools=[WEATHER], max_output_tokens=2)
    hidden = client.responses.create(model=name, input="hi", tools=[WEATHER], tool_choice="none", max_output_tokens=2)
    assert offered.usage.input_tokens > plain.usage.input_tokens == hidden.usage.input_tokens
    assert hidden.tool_choice == "none" and plain.tool_choice == "auto" and offered.tool_choice == "auto"


def test_input_items_become_chat_messages():
    items = [
        {"role": "developer", "content": "d"},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"x": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "ok"}]},
    ]
    assert parse_input(items) == [
        {"role": "system", "content": "d"},
        {"role": "user", "content": "ab"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": {"x": 1}}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]


def test_the_store_evicts_least_recently_used_by_count_and_tokens():
    store = ResponseStore(max_responses=3, max_tokens=100)
    for i in range(3):
        assert store.put(f"r{i}", [{"role": "user", "content": str(i)}], 10)
    assert store.get("r0") is not None  # r0 is now the most recently used
    store.put("r3", [], 10)
    assert "r1" not in store and all(k in store for k in ("r0", "r2", "r3"))
    assert len(store) == 3 and store.tokens == 30
    store.put("big", [], 85)  # over the token budget with the others: the oldest go until it fits
    assert "big" in store and store.tokens <= 100 and len(store) == 2
    assert not store.put("huge", [], 101) and "huge" not in store


def test_a_failure_mid_stream_is_an_error_event_then_response_failed(tiny_gguf):
    # a timeout far shorter than the generation: it fails after the stream (HTTP 200) has started
    with thread_server(tiny_gguf, GatewayConfig(request_timeout=0.01)) as srv:
        name = httpx.get(srv.url + "/v1/models", timeout=30).json()["data"][0]["id"]
        events = sse(srv, {"model": name, "input": "tell me a long story", "max_output_tokens": 200})
        kinds = [k for k, _ in events]
        assert kinds[:2] == ["response.created", "response.in_progress"]
        assert kinds[-2:] == ["error", "response.failed"], kinds
        for kind, data in events:
            valid_event(kind, data)
        assert events[-2][1]["code"] == "timeout" and "did not finish" in events[-2][1]["message"]
        assert events[-1][1]["response"]["status"] == "failed"
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        typed = list(client.responses.create(model=name, input="a long story", max_output_tokens=200, stream=True))
        assert typed[-2].type == "error" and typed[-1].type == "response.failed"


def test_requests_are_counted_in_metrics(client, name, tiny_server):
    client.responses.create(model=name, input="hi", max_output_tokens=2)
    text = httpx.get(tiny_server.url + "/metrics", timeout=30).text
    assert 'exo_requests_total{endpoint="responses",status="200"}' in text


@pytest.mark.slow
@pytest.mark.ring
def test_smollm2_answers_through_responses(smollm2_server):
    client = openai.OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="unused", max_retries=0)
    r = client.responses.create(
        model="smollm2-135m", input="What is the capital of France?", temperature=0, max_output_tokens=40
    )
    assert "Paris" in r.output_text, r.output_text
    with client.responses.stream(
        model="smollm2-135m", input="What is the capital of France?", temperature=0, max_output_tokens=40
    ) as s:
        final = s.get_final_response()
    assert final.output_text == r.output_text


@pytest.mark.slow
@pytest.mark.ring
def test_smollm2_calls_a_function_and_reads_its_result(smollm2_server):
    client = openai.OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="unused", max_retries=0)
    ask = "What is the weather in Paris for the next 2 days?"
    r = client.responses.create(
        model="smollm2-135m", input=ask, tools=[WEATHER], tool_choice="required", temperature=0, max_output_tokens=80
    )
    call = next(o for o in r.output if o.type == "function_call")
    assert call.name == "weather" and json.loads(call.arguments)["city"] in ("Paris", "Oslo")
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"forecast": "sunny, 21 C"}'}
    answer = client.responses.create(
        model="smollm2-135m",
        input=[result],
        previous_response_id=r.id,
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_output_tokens=60,
    )
    assert answer.output[0].type == "message" and answer.output_text.strip(), answer.output
