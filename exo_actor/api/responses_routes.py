"""OpenAI's Responses API (POST /v1/responses) on the same gateway: the default path of OpenAI's agent SDK.

A request (responses_input.py) becomes a chat conversation: the stored conversation of `previous_response_id`
(response_store.py), then `instructions` as a system message, then this turn's input items. It runs on the
router like a chat completion (OpenAIRoutes' helpers: readiness, collection with disconnect and timeout
handling, metrics). The answer is a `response` object with `message` output items; `stream` sends the
semantic events (`event:` + `data:` with `type` and `sequence_number`): response.created, .in_progress,
.output_item.added, .content_part.added, .output_text.delta..., .output_text.done, .content_part.done,
.output_item.done, then response.completed (or response.incomplete when max_output_tokens ran out). A
failure mid-stream is an `error` event followed by response.failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..actors.router import GenerationStream
from ..errors import ExoError
from ..runtime.generation import Delta, GenerationStats
from ..sampling import SamplingParams
from ..tokenizer import TextTokenizer, chat_prompt_ids
from .errors import ApiError, invalid
from .requests import parse_json
from .response_store import ResponseStore
from .responses_input import ResponsesRequest, parse_responses

FAILED_CODES = {429: "rate_limit_exceeded", 400: "invalid_prompt"}


def _id(prefix: str) -> str:
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


@dataclasses.dataclass
class _Turn:
    """One request on its way: what the response object echoes and what the store keeps afterwards."""

    rid: str
    req: ResponsesRequest
    history: list[dict[str, Any]]  # the conversation before this turn (from previous_response_id)
    prompt_tokens: int
    created_at: int = dataclasses.field(default_factory=lambda: int(time.time()))

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        stats: GenerationStats | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        req, done = self.req, status in ("completed", "incomplete", "failed")
        return {
            "id": self.rid,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "model": req.model,
            "output": output,
            "parallel_tool_calls": req.parallel_tool_calls,
            "previous_response_id": req.previous_response_id,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "text": {"format": req.text_format},
            "tool_choice": req.tool_choice,
            "tools": req.tools,
            "truncation": "disabled",
            "metadata": req.metadata,
            "usage": usage(self.prompt_tokens, stats) if done else None,
        }


class ResponsesRoutes:
    """POST /v1/responses over OpenAIRoutes' machinery, with a bounded store of finished conversations."""

    def __init__(self, gw: Any, openai: Any, store: ResponseStore | None = None) -> None:
        self.gw, self.openai = gw, openai
        self.store = store or ResponseStore()

    def _history(self, req: ResponsesRequest) -> list[dict[str, Any]]:
        if req.previous_response_id is None:
            return []
        stored = self.store.get(req.previous_response_id)
        if stored is None:
            raise invalid(
                f"previous response with id '{req.previous_response_id}' not found: it was not stored (store=false),"
                " was evicted from this server's bounded memory, or the server restarted",
                "previous_response_id",
                "previous_response_not_found",
            )
        return [dict(m) for m in stored.messages]

    def _prompt(self, tok: TextTokenizer, req: ResponsesRequest, history: list[dict[str, Any]]) -> list[int]:
        system = [{"role": "system", "content": req.instructions}] if req.instructions is not None else []
        try:
            return chat_prompt_ids(tok, system + history + req.input)
        except ExoError as exc:
            raise invalid(str(exc), "input") from None

    def _params(self, req: ResponsesRequest, prompt: int, ctx: int) -> SamplingParams:
        limit = min(ctx, self.gw.config.max_tokens or ctx)
        if req.max_output_tokens is not None and req.max_output_tokens > limit:
            what = "the context length" if limit == ctx else "this server's limit (--max-tokens)"
            raise invalid(
                f"'max_output_tokens' must be at most {what} ({limit}), got {req.max_output_tokens}",
                "max_output_tokens",
            )
        if prompt >= ctx:
            raise invalid(
                f"the input has {prompt} tokens; this model's context length is {ctx}",
                "input",
                "context_length_exceeded",
            )
        wanted = req.max_output_tokens or limit
        return SamplingParams(
            temperature=req.temperature,
            top_p=req.top_p or 1e-9,
            max_tokens=min(wanted, ctx - prompt),
            grammar=req.grammar,
        )

    async def create(self, request: Request) -> Response:
        body = parse_json(await request.body())
        tok, ctx, router = self.openai._ready()
        req = parse_responses(body)
        self.gw.check_model(req.model)
        history = self._history(req)
        ids = self._prompt(tok, req, history)
        generation = router.submit(ids, self._params(req, len(ids), ctx))
        turn = _Turn(_id("resp"), req, history, len(ids))
        if req.stream:
            events = self._events(turn, generation)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text, finish, stats, _ = await self.openai._collect(request, generation)
        status = "incomplete" if finish == "length" else "completed"
        output = [message_item(_id("msg"), text, status)]
        self._keep(turn, output, stats)
        return JSONResponse(turn.response(status, output, stats))

    def _keep(self, turn: _Turn, output: list[dict[str, Any]], stats: GenerationStats | None) -> None:
        """Store a finished turn's conversation (unless store=false) for a later previous_response_id."""
        if not turn.req.store:
            return
        said = [{"role": "assistant", "content": "".join(p["text"] for p in item["content"])} for item in output]
        tokens = usage(turn.prompt_tokens, stats)["total_tokens"]
        self.store.put(turn.rid, turn.history + turn.req.input + said, tokens)

    async def _deltas(self, generation: GenerationStream) -> AsyncIterator[Delta]:
        """The generation's deltas, ending with a 504 ApiError after the gateway's request timeout."""
        loop, limit = asyncio.get_running_loop(), self.gw.config.request_timeout
        deadline = loop.time() + limit
        it = generation.__aiter__()
        while True:
            try:
                yield await asyncio.wait_for(it.__anext__(), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                return
            except TimeoutError:
                message = f"the request did not finish within {limit:g} s"
                raise ApiError(504, message, "timeout_error", code="timeout") from None

    async def _events(self, turn: _Turn, generation: GenerationStream) -> AsyncGenerator[bytes, None]:
        seq = -1

        def event(kind: str, **data: Any) -> bytes:
            nonlocal seq
            seq += 1
            payload = {"type": kind, "sequence_number": seq, **data}
            return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

        yield event("response.created", response=turn.response("in_progress", []))
        yield event("response.in_progress", response=turn.response("in_progress", []))
        mid = _id("msg")
        where = {"item_id": mid, "output_index": 0}
        yield event("response.output_item.added", output_index=0, item=message_item(mid, None, "in_progress"))
        yield event("response.content_part.added", **where, content_index=0, part=text_part(""))
        text, last = [], None
        try:
            async for d in self._deltas(generation):
                last = d
                if d.text:
                    text.append(d.text)
                    yield event("response.output_text.delta", **where, content_index=0, delta=d.text, logprobs=[])
        except (ExoError, ApiError) as exc:
            err = self.gw.to_api_error(exc)
            self.gw.metrics.errors.labels(err.type).inc()
            yield event("error", code=err.code or err.type, message=err.message, param=err.param)
            failed = {"code": FAILED_CODES.get(err.status, "server_error"), "message": err.message}
            yield event("response.failed", response=turn.response("failed", [], error=failed))
            return
        finally:
            generation.cancel()  # a client that went away stops generation now
        stats = last.stats if last is not None else None
        self.openai._record(stats)
        full = "".join(text)
        status = "incomplete" if last is not None and last.finish_reason == "length" else "completed"
        yield event("response.output_text.done", **where, content_index=0, text=full, logprobs=[])
        yield event("response.content_part.done", **where, content_index=0, part=text_part(full))
        output = [message_item(mid, full, status)]
        yield event("response.output_item.done", output_index=0, item=output[0])
        self._keep(turn, output, stats)
        yield event(f"response.{status}", response=turn.response(status, output, stats))
