"""Parsing and validation of a /v1/responses request body into a typed request (one 400 naming the param).

The input (a string, or a list of items: messages with text parts, `function_call` and `function_call_output`)
becomes chat messages in the form the chat template takes: a `function_call` is an assistant message's
`tool_calls` entry, a `function_call_output` a `tool` message. `instructions` is a system message for this
turn only (as OpenAI does, it is not carried to the next turn by `previous_response_id`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..sampling.grammar import GrammarError, response_format_grammar
from ..tools import Tool, ToolChoice, ToolSpecError, parse_openai_tool_choice, parse_openai_tools
from .errors import ApiError, invalid
from .requests import _get, _range

ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text")


@dataclass(frozen=True)
class ResponsesRequest:
    model: str
    input: list[dict[str, Any]]  # this turn's messages, chat-shaped (without instructions)
    instructions: str | None
    previous_response_id: str | None
    store: bool
    stream: bool
    max_output_tokens: int | None
    temperature: float
    top_p: float
    text_format: dict[str, Any]  # as echoed in the response's `text.format`
    grammar: str | None
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice = field(default_factory=lambda: ToolChoice("none"))
    tool_choice_echo: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    metadata: dict[str, str] = field(default_factory=dict)


def _parts_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"'{param}' must be a string or an array of input_text parts", param)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise invalid(
                f"{param}[{j}] must be an input_text or output_text part, got {kind!r}; this model reads text only",
                f"{param}[{j}]",
            )
        texts.append(part["text"])
    return "".join(texts)


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ROLES:
        raise invalid(f"{param}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{param}.role")
    text = _parts_text(item.get("content"), f"{param}.content")
    return {"role": "system" if role == "developer" else role, "content": text}


def _required_str(item: dict[str, Any], key: str, param: str) -> str:
    v = item.get(key)
    if not isinstance(v, str) or not v:
        raise invalid(f"'{param}.{key}' must be a non-empty string", f"{param}.{key}")
    return v


def _function_call(item: dict[str, Any], param: str) -> dict[str, Any]:
    raw = item.get("arguments")
    try:
        arguments = (json.loads(raw) if raw.strip() else {}) if isinstance(raw, str) else None
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise invalid(f"'{param}.arguments' must be a JSON object as a string", f"{param}.arguments")
    call_id, name = _required_str(item, "call_id", param), _required_str(item, "name", param)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _function_output(item: dict[str, Any], param: str) -> dict[str, Any]:
    call_id = _required_str(item, "call_id", param)
    output = _parts_text(item.get("output"), f"{param}.output")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def parse_input(value: Any) -> list[dict[str, Any]]:
    """`input` (a string or a list of items) -> chat messages; function calls join the assistant message before
    them (its text, then its parallel calls), as chat's `tool_calls` do."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise invalid("'input' must be a string or a non-empty array of input items", "input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"{param} must be an object", param)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            call = _function_call(item, param)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # its text, then its calls: one chat message
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(_function_output(item, param))
        else:
            raise invalid(
                f"{param}.type must be message, function_call or function_call_output, got {kind!r}", f"{param}.type"
            )
    return messages


def _grammar(response_format: dict[str, Any], param: str) -> str | None:
    """The grammar of chat's equivalent `response_format` (the same constrained decoding)."""
    try:
        return response_format_grammar(response_format)
    except GrammarError as exc:
        raise invalid(str(exc), param) from None


def _text_format(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """`text.format` -> (the format echoed in the response, the grammar enforcing it or None)."""
    text = _get(body, "text", dict, {})
    fmt = text.get("format")
    if fmt is None:
        return {"type": "text"}, None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise invalid("'text.format.type' must be text, json_object or json_schema", "text.format")
    if fmt["type"] != "json_schema":
        return {"type": fmt["type"]}, _grammar({"type": fmt["type"]}, "text.format")
    name, schema = fmt.get("name"), fmt.get("schema")
    if not isinstance(name, str) or not name:
        raise invalid("'text.format.name' is required for json_schema: a non-empty string", "text.format.name")
    if not isinstance(schema, dict):
        raise invalid("'text.format.schema' must be a JSON schema object", "text.format.schema")
    grammar = _grammar({"type": "json_schema", "json_schema": {"name": name, "schema": schema}}, "text.format.schema")
    echo = {"type": "json_schema", "name": name, "schema": schema, "strict": bool(fmt.get("strict", False))}
    if isinstance(fmt.get("description"), str):
        echo["description"] = fmt["description"]
    return echo, grammar


def _chat_shaped_tools(raw: Any) -> Any:
    """Responses' flat function tools in chat's shape, to reuse chat's validation (other types pass through
    unchanged, so its error names them)."""
    if not isinstance(raw, list):
        return raw
    return [
        {"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
        if isinstance(t, dict) and t.get("type") == "function"
        else t
        for t in raw
    ]


def _tools(body: dict[str, Any]) -> tuple[list[Tool], ToolChoice]:
    """`tools` and `tool_choice` through exo_actor.tools' parsers; the error's param in Responses' names."""
    raw_choice = body.get("tool_choice")
    if isinstance(raw_choice, dict) and raw_choice.get("type") == "function" and "function" not in raw_choice:
        raw_choice = {"type": "function", "function": {"name": raw_choice.get("name")}}
    try:
        tools = parse_openai_tools(_chat_shaped_tools(body.get("tools")))
        return tools, parse_openai_tool_choice(raw_choice, tools)
    except ToolSpecError as exc:
        raise tool_error(exc) from None


def tool_error(exc: ToolSpecError) -> ApiError:
    """exo_actor.tools' error (named in chat's shape, `tools[0].function.name`) in Responses' flat names."""

    def flat(text: str) -> str:
        return text.replace(".function.", ".").replace(".function", "")

    return invalid(flat(str(exc)), flat(exc.param))


def tool_dict(tool: Tool) -> dict[str, Any]:
    """A tool as Responses echoes it."""
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict,
    }


def choice_echo(choice: ToolChoice, given: bool) -> str | dict[str, Any]:
    """`tool_choice` as Responses echoes it ("auto", OpenAI's default, when the request gave none)."""
    if choice.mode == "function":
        return {"type": "function", "name": choice.name}
    return choice.mode if given else "auto"


def _metadata(body: dict[str, Any]) -> dict[str, str]:
    meta = _get(body, "metadata", dict, {})
    if len(meta) > 16 or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise invalid("'metadata' must be an object of at most 16 string values", "metadata")
    return dict(meta)


def _unsupported(body: dict[str, Any]) -> None:
    if body.get("background"):
        raise invalid("'background' responses are not supported by this server", "background")
    for key in ("conversation", "prompt"):
        if body.get(key) is not None:
            raise invalid(f"'{key}' is not supported by this server", key)
    truncation = _get(body, "truncation", str, "disabled")
    if truncation not in ("disabled", "auto"):
        raise invalid("'truncation' must be disabled or auto", "truncation")


def parse_responses(body: dict[str, Any]) -> ResponsesRequest:
    """The typed request; token limits are checked later, once the prompt is rendered."""
    model = _get(body, "model", str, None)
    if not model:
        raise invalid("'model' is required", "model")
    if "input" not in body:
        raise invalid("'input' is required: a string or an array of input items", "input")
    messages = parse_input(body["input"])
    instructions = _get(body, "instructions", str, None)
    previous = _get(body, "previous_response_id", str, None)
    max_output = _get(body, "max_output_tokens", int, None)
    if max_output is not None and max_output < 1:
        raise invalid(f"'max_output_tokens' must be a positive integer, got {max_output}", "max_output_tokens")
    _unsupported(body)
    text_format, grammar = _text_format(body)
    tools, choice = _tools(body)
    return ResponsesRequest(
        model=model,
        input=messages,
        instructions=instructions,
        previous_response_id=previous or None,
        store=bool(_get(body, "store", bool, True)),
        stream=bool(_get(body, "stream", bool, False)),
        max_output_tokens=max_output,
        temperature=_range(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_range(body, "top_p", 0.0, 1.0, 1.0),
        text_format=text_format,
        grammar=grammar,
        tools=tools,
        tool_choice=choice,
        tool_choice_echo=choice_echo(choice, body.get("tool_choice") is not None),
        parallel_tool_calls=bool(_get(body, "parallel_tool_calls", bool, True)),
        metadata=_metadata(body),
    )
