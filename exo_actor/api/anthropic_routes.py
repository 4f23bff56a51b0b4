"""Anthropic's Messages API (POST /v1/messages) on the same gateway, for the tools built on Anthropic's SDKs.

Requests: `model`, `max_tokens` (required, as Anthropic's), `messages` (user/assistant, content a string or
blocks: text, assistant `tool_use`, user `tool_result`), `system` (a string or text blocks), `tools`,
`tool_choice`, `stop_sequences`, `temperature` (0-1), `top_p`, `top_k`, `stream`, `metadata` (ignored).
Responses and streams (message_start, content_block_start/delta/stop, message_delta, message_stop; `ping`
first) follow Anthropic's shapes, calls as `tool_use` blocks with stop_reason "tool_use"; errors are
{"type": "error", "error": {"type", "message"}} with the OpenAI side's statuses. Request shapes:
anthropic_input.py; content blocks: anthropic_output.py; tool calling itself: exo_actor/tools. Not supported:
images, documents and server tools (one clear 400 each).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import ExoError
from ..runtime.generation import Delta
from ..sampling import SamplingParams
from ..tools import StreamEvent, ToolSpecError, ToolUse
from . import responses as R
from .anthropic_input import chat_messages, parse_tools, tool_error
from .anthropic_output import Event, StreamedBlocks, content_blocks
from .errors import ApiError, invalid
from .requests import _range, parse_json

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "api_error",
}


class AnthropicRoutes:
    def __init__(self, gw: Any, openai: Any) -> None:
        self.gw, self.openai = gw, openai

    def error(self, exc: Exception) -> Response:
        err = self.gw.to_api_error(exc)
        kind = ERROR_TYPES.get(err.status, "api_error")
        return JSONResponse({"type": "error", "error": {"type": kind, "message": err.message}}, status_code=err.status)

    def _parse(self, body: dict[str, Any], ctx: int, tok: Any) -> tuple[str, list[int], SamplingParams, bool, ToolUse]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise invalid("'model' is required", "model")
        self.gw.check_model(model)
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise invalid("'max_tokens' is required: a positive integer", "max_tokens")
        chat = chat_messages(body)
        tools, choice, parallel = parse_tools(body)
        use = ToolUse.for_model(tok, tools, choice, parallel) if tools else ToolUse()
        stops = body.get("stop_sequences") or []
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 16:
            raise invalid("'stop_sequences' must be a list of at most 16 non-empty strings", "stop_sequences")
        top_k = body.get("top_k", 0)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise invalid("'top_k' must be a non-negative integer", "top_k")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise invalid("'stream' must be true or false", "stream")
        try:  # the chat template renders the tools, earlier calls and their results; any/tool: a grammar
            ids = use.prompt_ids(tok, chat)
            grammar = use.grammar()
        except ToolSpecError as exc:
            raise tool_error(exc) from None
        except ExoError as exc:
            raise invalid(str(exc), "messages") from None
        if len(ids) >= ctx:
            raise invalid(f"the prompt has {len(ids)} tokens; this model's context length is {ctx}", "messages")
        params = SamplingParams(
            temperature=_range(body, "temperature", 0.0, 1.0, 1.0),
            top_p=_range(body, "top_p", 0.0, 1.0, 1.0) or 1e-9,
            top_k=top_k,
            max_tokens=min(max_tokens, ctx - len(ids)),
            stop=tuple(stops),
            grammar=grammar,
        )
        return model, ids, params, stream, use

    async def messages(self, request: Request) -> Response:
        try:
            body = parse_json(await request.body())
            tok, ctx, router = self.openai._ready()
            model, ids, params, stream, use = self._parse(body, ctx, tok)
            generation = router.submit(ids, params)
        except Exception as exc:  # noqa: BLE001 - Anthropic's error shape
            return self.error(exc)
        mid = R.new_id("msg")
        if stream:
            events = self._events(mid, model, len(ids), generation, use)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            text, finish, stats, _ = await self.openai._collect(request, generation)
        except Exception as exc:  # noqa: BLE001 - Anthropic's error shape
            return self.error(exc)
        content, calls = use.parse(text)
        calls = calls if use.parallel else calls[:1]
        usage = {"input_tokens": len(ids), "output_tokens": stats.completion_tokens if stats else 0}
        return JSONResponse(
            {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content_blocks(content, calls),
                "stop_reason": "tool_use" if calls else STOP_REASONS.get(finish, "end_turn"),
                "stop_sequence": None,
                "usage": usage,
            }
        )

    async def _events(
        self, mid: str, model: str, prompt: int, generation: Any, use: ToolUse
    ) -> AsyncGenerator[bytes, None]:
        """The message's events; with tools offered, text that may be a call is held back (ToolCallStreamer)
        and each call goes out as a whole tool_use block."""

        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

        def events(pairs: list[Event]) -> bytes:
            return b"".join(event(name, data) for name, data in pairs)

        start: dict[str, Any] = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": 0},
        }
        yield event("message_start", {"type": "message_start", "message": start})
        streamer, blocks = use.streamer(), StreamedBlocks(use.parallel)
        if streamer is None:  # plain text: its block opens at once, as Anthropic's does
            yield events(blocks.open_text())
        yield event("ping", {"type": "ping"})
        last: Delta | None = None
        try:
            async for d in generation:
                last = d
                if streamer is None:
                    found = [StreamEvent(content=d.text)] if d.text else []
                else:
                    found = streamer.feed(d.text) + (streamer.finish() if d.finish_reason else [])
                for e in found:
                    out = blocks.text(e.content) if e.call is None else blocks.call(e.call)
                    if out:
                        yield events(out)
        except (ExoError, ApiError) as exc:
            err = self.gw.to_api_error(exc)
            kind = ERROR_TYPES.get(err.status, "api_error")
            yield event("error", {"type": "error", "error": {"type": kind, "message": err.message}})
            return
        finally:
            generation.cancel()
        stats = last.stats if last is not None else None
        if stats is not None:
            self.gw.metrics.record(stats)
        yield events(blocks.finish())
        reason = STOP_REASONS.get(last.finish_reason or "stop", "end_turn") if last else "end_turn"
        usage = {"output_tokens": stats.completion_tokens if stats else 0}
        yield event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use" if blocks.calls else reason, "stop_sequence": None},
                "usage": usage,
            },
        )
        yield event("message_stop", {"type": "message_stop"})
