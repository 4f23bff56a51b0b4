"""Tool calls in OpenAI's chat shapes: the message's `tool_calls` and the stream's deltas."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .spec import ToolCall
from .stream import StreamEvent


def message_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [c.openai() for c in calls]


def stream_deltas(events: Iterable[StreamEvent]) -> list[dict[str, Any]]:
    """chat.completion.chunk deltas for streamed events: content as `content`; a call as OpenAI sends one,
    its id, type and name first (arguments ""), then the arguments."""
    out: list[dict[str, Any]] = []
    for e in events:
        if e.call is None:
            out.append({"content": e.content})
            continue
        head = {"index": e.index, "id": e.call.id, "type": "function"}
        out.append({"tool_calls": [{**head, "function": {"name": e.call.name, "arguments": ""}}]})
        out.append({"tool_calls": [{"index": e.index, "function": {"arguments": e.call.arguments_json}}]})
    return out
