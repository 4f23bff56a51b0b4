"""Tools, tool choices and tool calls as typed values, parsed from OpenAI's request shapes.

Every parser raises ToolSpecError naming the field (`param`) that is wrong, so an endpoint can answer one
400 that points at it; the values are endpoint-neutral, for the Anthropic, Ollama or Responses shapes to
build too."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InvalidRequestError

MAX_TOOLS = 128  # OpenAI's limit
NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # OpenAI's [a-zA-Z0-9_-]{1,64}, plus '.' (namespaced tools)
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


class ToolSpecError(InvalidRequestError):
    """A tool, tool choice or tool call that is malformed; `param` names where (`tools[0].function.name`)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    """A function the model may call. `parameters` is its JSON schema (an object schema)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: dict(EMPTY_PARAMETERS))
    strict: bool = False

    def openai(self) -> dict[str, Any]:
        """OpenAI's tool dict, what Hugging Face chat templates read from their `tools` variable."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolChoice:
    """`none`: tools are not offered; `auto`: the model decides (parsed afterwards); `required`: at least
    one call, enforced by a grammar; `function`: a call of `name`, enforced by a grammar."""

    mode: Literal["none", "auto", "required", "function"] = "auto"
    name: str | None = None

    @property
    def constrained(self) -> bool:
        return self.mode in ("required", "function")


@dataclass(frozen=True)
class ToolCall:
    """One call: `arguments` parsed into a dict; `arguments_json` is the JSON string OpenAI sends."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: new_call_id())

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments_json}}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _str(v: Any, param: str, *, required: bool = True) -> str | None:
    if v is None and not required:
        return None
    if not isinstance(v, str):
        raise ToolSpecError(f"'{param}' must be a string", param)
    return v


def _function(raw: Any, param: str, default_type: str | None = None) -> tuple[dict[str, Any], str]:
    """OpenAI's {"type": "function", "function": {"name": ..., ...}} wrapper: (the function dict, its name)."""
    if not isinstance(raw, dict):
        raise ToolSpecError(f"'{param}' must be an object", param)
    kind = raw.get("type", default_type)
    if kind != "function":
        raise ToolSpecError(f"'{param}.type' must be 'function', got {json.dumps(kind)}", f"{param}.type")
    fn = raw.get("function")
    if not isinstance(fn, dict):
        raise ToolSpecError(f"'{param}.function' must be an object with a 'name'", f"{param}.function")
    name = _str(fn.get("name"), f"{param}.function.name")
    assert name is not None
    return fn, name


def _tool(raw: Any, param: str) -> Tool:
    fn, name = _function(raw, param)
    if not NAME.match(name):
        raise ToolSpecError(
            f"'{param}.function.name' must be 1-64 letters, digits, '_', '-' or '.', got {json.dumps(name)}",
            f"{param}.function.name",
        )
    description = _str(fn.get("description"), f"{param}.function.description", required=False)
    parameters = fn.get("parameters")
    if parameters is None:
        parameters = dict(EMPTY_PARAMETERS)  # OpenAI: no parameters is an empty parameter list
    if not isinstance(parameters, dict):
        raise ToolSpecError(
            f"'{param}.function.parameters' must be a JSON schema object", f"{param}.function.parameters"
        )
    if parameters.get("type", "object") != "object":
        raise ToolSpecError(
            f"'{param}.function.parameters' must describe an object (type 'object')", f"{param}.function.parameters"
        )
    strict = fn.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ToolSpecError(f"'{param}.function.strict' must be a boolean", f"{param}.function.strict")
    return Tool(name, description, parameters, bool(strict))


def parse_openai_tools(raw: Any, param: str = "tools") -> list[Tool]:
    """OpenAI's `tools` array -> Tools (None or [] -> no tools); ToolSpecError naming the bad field."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ToolSpecError(f"'{param}' must be an array of tools", param)
    if len(raw) > MAX_TOOLS:
        raise ToolSpecError(f"'{param}' takes at most {MAX_TOOLS} tools, got {len(raw)}", param)
    tools = [_tool(t, f"{param}[{i}]") for i, t in enumerate(raw)]
    seen: set[str] = set()
    for i, t in enumerate(tools):
        if t.name in seen:
            raise ToolSpecError(f"two tools are named {json.dumps(t.name)}", f"{param}[{i}].function.name")
        seen.add(t.name)
    return tools


def parse_openai_tool_choice(raw: Any, tools: list[Tool], param: str = "tool_choice") -> ToolChoice:
    """OpenAI's `tool_choice` (default: auto with tools, none without); a call that cannot happen is refused."""
    if raw is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise ToolSpecError(
                f"'{param}' must be 'none', 'auto', 'required' or a function, got {json.dumps(raw)}", param
            )
        if raw == "required" and not tools:
            raise ToolSpecError(f"'{param}' is 'required' but no 'tools' were given", param)
        return ToolChoice(raw)  # type: ignore[arg-type]
    if not isinstance(raw, dict):
        raise ToolSpecError(f"'{param}' must be a string or an object", param)
    _, name = _function(raw, param)
    if name not in {t.name for t in tools}:
        raise ToolSpecError(
            f"'{param}.function.name' {json.dumps(name)} is not one of 'tools'", f"{param}.function.name"
        )
    return ToolChoice("function", name)


def parse_openai_tool_calls(raw: Any, param: str) -> list[ToolCall]:
    """An assistant message's `tool_calls` -> ToolCalls (arguments: a JSON string holding an object)."""
    if not isinstance(raw, list):
        raise ToolSpecError(f"'{param}' must be an array", param)
    calls = []
    for i, c in enumerate(raw):
        p = f"{param}[{i}]"
        cid = _str(c.get("id"), f"{p}.id") if isinstance(c, dict) else None
        fn, name = _function(c, p, default_type="function")
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise ToolSpecError(f"'{p}.function.arguments' is not valid JSON", f"{p}.function.arguments") from None
        if not isinstance(args, dict):
            raise ToolSpecError(
                f"'{p}.function.arguments' must be a JSON object (as a string)", f"{p}.function.arguments"
            )
        assert cid is not None
        calls.append(ToolCall(name, args, cid))
    return calls
