"""Ollama's /api/chat shapes in the gateway's terms: `messages` (system/user/assistant/tool; assistant
`tool_calls` as [{function: {name, arguments (an object)}}], `tool` messages with an optional `tool_name`) as
Hugging Face-shaped chat messages, `tools` (OpenAI's function shape) as exo_actor.tools values, and calls
back as Ollama's `message.tool_calls`.

Ollama's messages carry no call ids: a `tool` message answers the earliest unanswered call of the assistant
turn before it (the one named `tool_name`, if given), and gets that call's id for the chat template."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..tools import StreamEvent, Tool, ToolCall, ToolSpecError, parse_openai_tools
from .errors import invalid

ROLES = ("system", "user", "assistant", "tool")


def parse_tools(raw: Any) -> list[Tool]:
    """`tools` ([{type: "function", function: {name, description, parameters}}]); a 400 naming the bad field."""
    try:
        return parse_openai_tools(raw)
    except ToolSpecError as exc:
        raise invalid(str(exc), exc.param) from None


def tool_calls_json(calls: Iterable[ToolCall]) -> list[dict[str, Any]]:
    """Calls as Ollama's `message.tool_calls` (arguments as an object, not a JSON string)."""
    return [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def stream_messages(events: Iterable[StreamEvent]) -> list[dict[str, Any]]:
    """The `message` of each streamed chunk, in order: content as it comes, calls found together in one chunk."""
    out: list[dict[str, Any]] = []
    calls: list[ToolCall] = []
    for e in [*events, StreamEvent()]:  # an empty event at the end sends the last calls
        if e.call is not None:
            calls.append(e.call)
            continue
        if calls:
            out.append({"role": "assistant", "content": "", "tool_calls": tool_calls_json(calls)})
            calls = []
        if e.content:
            out.append({"role": "assistant", "content": e.content})
    return out


def _calls(raw: Any, at: str, i: int) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise invalid(f"{at} must be a list of calls ({{function: {{name, arguments}}}})", at)
    out = []
    for j, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        where = f"{at}[{j}].function"
        if not isinstance(fn, dict):
            raise invalid(f"{where} must be an object with 'name' and 'arguments'", where)
        name, args = fn.get("name"), fn.get("arguments", {})
        if not isinstance(name, str) or not name:
            raise invalid(f"{where}.name must be a non-empty string", f"{where}.name")
        if not isinstance(args, dict):
            raise invalid(f"{where}.arguments must be an object", f"{where}.arguments")
        out.append({"id": f"call_{i}_{j}", "type": "function", "function": {"name": name, "arguments": args}})
    return out


def chat_messages(raw: Any) -> list[dict[str, Any]]:
    """Ollama's `messages` as the chat template's messages (tool results matched to their calls)."""
    if not isinstance(raw, list):
        raise invalid("'messages' must be a list", "messages")
    out: list[dict[str, Any]] = []
    waiting: list[tuple[str, str]] = []  # (id, name) of the last assistant turn's calls not yet answered
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content", ""), str):
            raise invalid(f"messages[{i}] must have a role ({', '.join(ROLES)}) and text content", "messages")
        if m.get("images"):
            raise invalid(f"messages[{i}] has images; this model reads text only", "messages")
        message: dict[str, Any] = {"role": m["role"], "content": m.get("content", "")}
        if m["role"] == "assistant" and m.get("tool_calls") is not None:
            calls = _calls(m["tool_calls"], f"messages[{i}].tool_calls", i)
            waiting = [(c["id"], c["function"]["name"]) for c in calls]
            if calls:
                message["tool_calls"] = calls
        if m["role"] == "tool":
            name = m.get("tool_name")
            if name is not None and not isinstance(name, str):
                raise invalid(f"messages[{i}].tool_name must be a string", f"messages[{i}].tool_name")
            k = next((k for k, (_, n) in enumerate(waiting) if not name or n == name), None)
            cid, called = waiting.pop(k) if k is not None else (f"call_{i}", name or "")
            message.update(tool_call_id=cid, name=called)
        out.append(message)
    return out
