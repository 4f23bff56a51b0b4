"""A Messages response's content in Anthropic's shapes: text and `tool_use` blocks, whole or as the stream's
content_block_start / content_block_delta / content_block_stop events."""

from __future__ import annotations

from typing import Any

from ..tools import ToolCall
from .anthropic_input import tool_use_block

Event = tuple[str, dict[str, Any]]  # (the SSE event name, its data)


def content_blocks(content: str | None, calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Text (if any) then the calls; an answer with neither is one empty text block."""
    blocks = [{"type": "text", "text": content}] if content else []
    blocks += [tool_use_block(c) for c in calls]
    return blocks or [{"type": "text", "text": ""}]


class StreamedBlocks:
    """The events of a streamed message's content blocks, numbered in order. A text block opens with its first
    text and closes when a call or the end comes; a call is a whole tool_use block: its start (input {}), one
    input_json_delta with the arguments, its stop. `parallel` false: calls after the first are dropped."""

    def __init__(self, parallel: bool = True) -> None:
        self.parallel = parallel
        self.index = 0  # of the next block
        self.open = False  # a text block is open (at `index`)
        self.calls = 0

    def _start(self, block: dict[str, Any]) -> Event:
        return "content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}

    def _delta(self, delta: dict[str, Any]) -> Event:
        return "content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}

    def _stop(self) -> Event:
        event: Event = "content_block_stop", {"type": "content_block_stop", "index": self.index}
        self.index += 1
        return event

    def open_text(self) -> list[Event]:
        if self.open:
            return []
        self.open = True
        return [self._start({"type": "text", "text": ""})]

    def text(self, text: str) -> list[Event]:
        return [*self.open_text(), self._delta({"type": "text_delta", "text": text})]

    def call(self, call: ToolCall) -> list[Event]:
        if self.calls and not self.parallel:
            return []
        self.calls += 1
        block = {**tool_use_block(call), "input": {}}
        return [
            *self.close(),
            self._start(block),
            self._delta({"type": "input_json_delta", "partial_json": call.arguments_json}),
            self._stop(),
        ]

    def close(self) -> list[Event]:
        if not self.open:
            return []
        self.open = False
        return [self._stop()]

    def finish(self) -> list[Event]:
        """Close the open block; a message with no block at all gets an empty text block."""
        return [*(self.open_text() if self.index == 0 else []), *self.close()]
