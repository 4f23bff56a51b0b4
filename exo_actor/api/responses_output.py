"""The output side of /v1/responses: output items (`message`, `function_call`), usage, and the semantic
stream events that build them (each `event: <type>` + `data:` JSON with `type` and `sequence_number`)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from ..runtime.generation import GenerationStats
from ..tools import ToolCall


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage(prompt_tokens: int, stats: GenerationStats | None) -> dict[str, Any]:
    """Responses' usage object (prompt tokens from the stats when generation reported them)."""
    given = stats.prompt_tokens if stats and stats.prompt_tokens else prompt_tokens
    out = stats.completion_tokens if stats else 0
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": stats.cached_tokens if stats else 0, "cache_write_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": given + out,
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """An assistant `message` output item (no content parts yet when text is None)."""
    content = [] if text is None else [text_part(text)]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def call_item(call: ToolCall, status: str, arguments: str | None = None) -> dict[str, Any]:
    """A `function_call` output item; `call_id` is what the client's function_call_output answers."""
    return {
        "id": new_id("fc"),
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments_json if arguments is None else arguments,
        "status": status,
    }


def output_items(content: str | None, calls: list[ToolCall], status: str) -> list[dict[str, Any]]:
    """A whole answer's items: its text as a message (if any, or if there are no calls), then its calls."""
    items = [message_item(new_id("msg"), content or "", status)] if content or not calls else []
    return items + [call_item(c, "completed") for c in calls]


def assistant_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items as the chat messages a later turn renders (calls with their arguments as dicts)."""
    text = "".join(p["text"] for item in output if item["type"] == "message" for p in item["content"])
    calls = [
        {
            "id": i["call_id"],
            "type": "function",
            "function": {"name": i["name"], "arguments": json.loads(i["arguments"])},
        }
        for i in output
        if i["type"] == "function_call"
    ]
    return [{"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}]


class OutputEvents:
    """Numbers the events of one streamed response and keeps its output items as they are finished."""

    def __init__(self) -> None:
        self.seq = -1
        self.output: list[dict[str, Any]] = []
        self._message: dict[str, Any] | None = None  # the message item whose text is streaming
        self._text: list[str] = []

    def event(self, kind: str, **data: Any) -> bytes:
        self.seq += 1
        payload = {"type": kind, "sequence_number": self.seq, **data}
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    def _where(self) -> dict[str, Any]:
        assert self._message is not None
        return {"item_id": self._message["id"], "output_index": len(self.output), "content_index": 0}

    def open_message(self) -> list[bytes]:
        """Start a message item (output_item.added + content_part.added)."""
        self._message, self._text = message_item(new_id("msg"), None, "in_progress"), []
        return [
            self.event("response.output_item.added", output_index=len(self.output), item=self._message),
            self.event("response.content_part.added", **self._where(), part=text_part("")),
        ]

    def content(self, text: str) -> list[bytes]:
        """A piece of the answer's text (opening a message item first if none is open)."""
        out = self.open_message() if self._message is None else []
        self._text.append(text)
        return [*out, self.event("response.output_text.delta", **self._where(), delta=text, logprobs=[])]

    def close_message(self, status: str) -> list[bytes]:
        """Finish the open message item, if any (output_text.done, content_part.done, output_item.done)."""
        if self._message is None:
            return []
        full, where = "".join(self._text), self._where()
        item = {**self._message, "status": status, "content": [text_part(full)]}
        out = [
            self.event("response.output_text.done", **where, text=full, logprobs=[]),
            self.event("response.content_part.done", **where, part=text_part(full)),
            self.event("response.output_item.done", output_index=where["output_index"], item=item),
        ]
        self.output.append(item)
        self._message = None
        return out

    def call(self, call: ToolCall) -> list[bytes]:
        """A complete function call as its item's events (its arguments in one delta)."""
        out = self.close_message("completed")
        index, item = len(self.output), call_item(call, "in_progress", arguments="")
        where = {"item_id": item["id"], "output_index": index}
        done = {**item, "arguments": call.arguments_json, "status": "completed"}
        out += [
            self.event("response.output_item.added", output_index=index, item=item),
            self.event("response.function_call_arguments.delta", **where, delta=call.arguments_json),
            self.event("response.function_call_arguments.done", **where, name=call.name, arguments=call.arguments_json),
            self.event("response.output_item.done", output_index=index, item=done),
        ]
        self.output.append(done)
        return out

    def finish(self, status: str) -> list[bytes]:
        """Close what is open; an answer with no items at all still gets an (empty) message."""
        out = self.open_message() if self._message is None and not self.output else []
        return out + self.close_message(status)
