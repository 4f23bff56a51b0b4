"""Two third-party frameworks pointed at the gateway, run end to end on loopback:

- OpenAI's Agents SDK (`openai-agents`): an `Agent` with a `@function_tool`, through its Chat Completions
  model (streamed and not) and its Responses model: the tool is called with the right arguments, its
  result goes back in the next request, and the final answer uses it.
- LangChain (`langchain-openai`): `ChatOpenAI(...).with_structured_output(Model)`, by `json_schema`
  (response_format) and by `function_calling` (a forced tool), returning a validated pydantic model.

The fast tier runs both on the tiny random model (constrained decoding makes its output valid whatever its
weights); the slow tier on SmolLM2, where the answers must also be right."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import httpx
import pytest
from pydantic import BaseModel, Field

from tests.api.servers import RunningServer, thread_server
from tests.conftest import require
from tests.tiny import TinySpec, write_gguf

TINY = "tiny.gguf"
SMOLLM2 = "smollm2-135m"


class City(BaseModel):
    """A city and the country it is in."""

    name: str = Field(description="the city's name", min_length=1, max_length=20)
    country: str = Field(description="the country the city is in", min_length=1, max_length=20)


class Person(BaseModel):
    """A person: a name and an age in years."""

    name: str = Field(min_length=1, max_length=12)
    age: int = Field(ge=0, le=120)


@pytest.fixture(scope="module")
def tools_tiny(tmp_path_factory: pytest.TempPathFactory):
    """The tiny random model with room for the tools' system block (the shared tiny_server has 256 tokens;
    the block alone is longer with the tiny model's 320-token vocabulary)."""
    path = tmp_path_factory.mktemp("frameworks") / TINY
    write_gguf(path, TinySpec(context=4096))
    with thread_server(path, max_concurrent=4) as srv:
        yield srv


class Recorder:
    """The JSON bodies of the requests an SDK client sends (an httpx request hook)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.bodies.append(json.loads(request.content))


def weather_agent(
    server: RunningServer, model: str, api: str, recorder: Recorder, calls: list[str], answer: bool, **settings: Any
):
    """An Agents SDK agent on the gateway with one tool, get_weather(city), that records its calls; with
    answer=False the run ends with the tool's result (no second request)."""
    agents = require("agents")
    openai = require("openai")
    agents.set_tracing_disabled(True)  # no export of traces to OpenAI's platform

    @agents.function_tool
    def get_weather(city: Annotated[str, Field(min_length=1, max_length=12)]) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"It is sunny and 21 degrees in {city}."

    client = openai.AsyncOpenAI(
        base_url=f"{server.url}/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.AsyncClient(event_hooks={"request": [recorder]}, timeout=300),
    )
    kind = agents.OpenAIResponsesModel if api == "responses" else agents.OpenAIChatCompletionsModel
    return agents.Agent(
        name="weather",
        instructions="You answer questions about the weather using the tool.",
        model=kind(model=model, openai_client=client),
        tools=[get_weather],
        tool_use_behavior="run_llm_again" if answer else "stop_on_first_tool",
        model_settings=agents.ModelSettings(
            temperature=0, tool_choice="required", parallel_tool_calls=False, **settings
        ),
    )


def run_agent(agent: Any, question: str, stream: bool) -> Any:
    """Runner.run (or run_streamed, consuming every event) to the end; the RunResult."""
    agents = require("agents")

    async def streamed() -> Any:
        result = agents.Runner.run_streamed(agent, question, max_turns=4)
        events = [e async for e in result.stream_events()]
        assert any(e.type == "raw_response_event" for e in events)
        return result

    return asyncio.run(streamed()) if stream else agents.Runner.run_sync(agent, question, max_turns=4)


def tool_round_trip(result: Any, recorder: Recorder, api: str, answer: bool = True) -> tuple[Any, Any]:
    """The run's one tool call and its output item; with answer, checks that the request after the call
    sent the output back under the call's id."""
    items = {type(i).__name__: i for i in result.new_items}
    kinds = ["ToolCallItem", "ToolCallOutputItem", "MessageOutputItem"]
    assert [type(i).__name__ for i in result.new_items] == kinds[: 3 if answer else 2]
    call, output = items["ToolCallItem"].raw_item, items["ToolCallOutputItem"].raw_item
    assert output["call_id"] == call.call_id
    assert len(recorder.bodies) == (2 if answer else 1)
    if not answer:
        assert result.final_output == output["output"]
        return call, output
    if api == "responses":
        sent = [i for i in recorder.bodies[1]["input"] if i.get("type") == "function_call_output"]
        assert [(s["call_id"], s["output"]) for s in sent] == [(call.call_id, output["output"])]
    else:
        sent = [m for m in recorder.bodies[1]["messages"] if m["role"] == "tool"]
        assert [(s["tool_call_id"], s["content"]) for s in sent] == [(call.call_id, output["output"])]
    return call, output


def structured(server: RunningServer, model: str, schema: type[BaseModel], method: str, prompt: str, **kw: Any):
    """LangChain's ChatOpenAI(...).with_structured_output(schema, method=...) on the gateway, invoked once;
    (the parsed model, the raw AIMessage)."""
    lc = require("langchain_openai")
    llm = lc.ChatOpenAI(
        model=model, base_url=f"{server.url}/v1", api_key="unused", temperature=0, max_retries=0, timeout=300, **kw
    )
    out = llm.with_structured_output(schema, method=method, include_raw=True).invoke(prompt)
    assert out["parsing_error"] is None, out["parsing_error"]
    assert isinstance(out["parsed"], schema)
    return out["parsed"], out["raw"]


# The random model's answer after the tool result runs to max_tokens: the Responses model raises on an
# `incomplete` response, and streamed, its whitespace-only text is dropped (so the SDK sees no output);
# those runs stop at the tool's result. The answer leg runs on Chat Completions, and on SmolLM2 below.
TINY_RUNS = [("chat", False, True), ("chat", True, False), ("responses", False, False)]


@pytest.mark.parametrize("api,stream,answer", TINY_RUNS)
def test_agent_tool_round_trip_tiny(tools_tiny, api, stream, answer):
    """tool_choice required on the tiny model: a call whose argument fits the tool's schema, the tool run
    by the SDK; with answer, its result sent back and a final text answer."""
    recorder, calls = Recorder(), []
    agent = weather_agent(tools_tiny, TINY, api, recorder, calls, answer, max_tokens=200)
    result = run_agent(agent, "What is the weather in Paris?", stream)
    call, output = tool_round_trip(result, recorder, api, answer)
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": calls[0]}
    assert len(calls) == 1 and 1 <= len(calls[0]) <= 12
    assert output["output"] == f"It is sunny and 21 degrees in {calls[0]}."
    assert recorder.bodies[0]["tool_choice"] == "required"
    if answer:  # the SDK forces the tool on the first turn only: the second may answer (choice auto)
        assert recorder.bodies[1].get("tool_choice", "auto") == "auto" and isinstance(result.final_output, str)


def test_langchain_json_schema_tiny(tiny_server):
    """with_structured_output by json_schema: the random model's output is a valid Person."""
    person, raw = structured(tiny_server, TINY, Person, "json_schema", "Ada is 36.", max_tokens=100)
    assert Person.model_validate_json(raw.content) == person
    assert raw.response_metadata["finish_reason"] == "stop"


def test_langchain_function_calling_tiny(tools_tiny):
    """with_structured_output by function_calling: a forced call of the schema's function, validated."""
    person, raw = structured(tools_tiny, TINY, Person, "function_calling", "Ada is 36.", max_tokens=100)
    assert [c["name"] for c in raw.tool_calls] == ["Person"] and Person(**raw.tool_calls[0]["args"]) == person
    assert raw.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.slow
@pytest.mark.ring
@pytest.mark.parametrize("api,stream", [("chat", False), ("chat", True), ("responses", False)])
def test_agent_weather_smollm2(smollm2_server, api, stream):
    """SmolLM2 asked for the weather calls get_weather(city="Paris") and answers with the tool's result."""
    recorder, calls = Recorder(), []
    agent = weather_agent(smollm2_server, SMOLLM2, api, recorder, calls, answer=True)
    result = run_agent(agent, "What is the weather in Paris?", stream)
    call, _ = tool_round_trip(result, recorder, api)
    assert calls == ["Paris"] and json.loads(call.arguments) == {"city": "Paris"}
    assert "21 degrees" in result.final_output and "sunny" in result.final_output  # only the tool said so


@pytest.mark.slow
@pytest.mark.ring
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_smollm2(smollm2_server, method):
    """SmolLM2 extracts the city and its country from a sentence into a validated City."""
    city, _ = structured(
        smollm2_server, SMOLLM2, City, method, "Paris is the capital of France. Give the city and its country."
    )
    assert city.name == "Paris" and city.country.lower() == "france"
