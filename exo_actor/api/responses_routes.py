"""OpenAI's Responses API (POST /v1/responses) on the same gateway: the default path of OpenAI's agent SDK.

A request (responses_input.py) becomes a chat conversation: the stored conversation of `previous_response_id`
(response_store.py), then `instructions` as a system message, then this turn's input items. It runs on the
router like a chat completion (OpenAIRoutes' helpers: readiness, collection with disconnect and timeout
handling, metrics); function tools go through exo_actor.tools (ToolUse: prompt, grammar, parse, streamer).
The answer is a `response` object with `message` and `function_call` output items; `stream` sends the
semantic events (`event:` + `data:` with `type` and `sequence_number`): response.created, .in_progress,
.output_item.added, .content_part.added, .output_text.delta..., .output_text.done, .content_part.done,
.output_item.done (a call: .output_item.added, .function_call_arguments.delta/.done, .output_item.done),
then response.completed (or response.incomplete when max_output_tokens ran out). A
failure mid-stream is an `error` event followed by response.failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..actors.router import GenerationStream
from ..errors import ExoError
from ..runtime.generation import Delta, GenerationStats
from ..sampling import SamplingParams
from ..tokenizer import TextTokenizer
from ..tools import ToolCallStreamer, ToolSpecError, ToolUse
from .errors import ApiError, invalid
from .requests import parse_json
from .response_store import ResponseStore
from .responses_input import ResponsesRequest, parse_responses, tool_dict, tool_error
from .responses_output import OutputEvents, assistant_messages, new_id, output_items, usage

FAILED_CODES = {429: "rate_limit_exceeded", 400: "invalid_prompt"}


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
        req = self.req
        response = {
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
            "tool_choice": req.tool_choice_echo,
            "tools": [tool_dict(t) for t in req.tools],
            "truncation": "disabled",
            "metadata": req.metadata,
        }
        if status != "in_progress":  # the published schema has usage optional but not nullable
            response["usage"] = usage(self.prompt_tokens, stats)
        return response


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

    def _prompt(
        self, tok: TextTokenizer, use: ToolUse, req: ResponsesRequest, history: list[dict[str, Any]]
    ) -> list[int]:
        system = [{"role": "system", "content": req.instructions}] if req.instructions is not None else []
        try:
            return use.prompt_ids(tok, system + history + req.input)
        except ExoError as exc:
            raise invalid(str(exc), "input") from None

    def _params(self, req: ResponsesRequest, use: ToolUse, prompt: int, ctx: int) -> SamplingParams:
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
        try:
            grammar = use.grammar() or req.grammar  # a required call's grammar, else text.format's
        except ToolSpecError as exc:
            raise tool_error(exc) from None
        return SamplingParams(
            temperature=req.temperature,
            top_p=req.top_p or 1e-9,
            max_tokens=min(wanted, ctx - prompt),
            grammar=grammar,
        )

    async def create(self, request: Request) -> Response:
        body = parse_json(await request.body())
        tok, ctx, router = self.openai._ready()
        req = parse_responses(body)
        self.gw.check_model(req.model)
        history = self._history(req)
        use = ToolUse.for_model(tok, req.tools, req.tool_choice, req.parallel_tool_calls)
        ids = self._prompt(tok, use, req, history)
        generation = router.submit(ids, self._params(req, use, len(ids), ctx))
        turn = _Turn(new_id("resp"), req, history, len(ids))
        if req.stream:
            events = self._events(turn, use, generation)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text, finish, stats, _ = await self.openai._collect(request, generation)
        status = "incomplete" if finish == "length" else "completed"
        output = output_items(*use.parse(text), status)
        self._keep(turn, output, stats)
        return JSONResponse(turn.response(status, output, stats))

    def _keep(self, turn: _Turn, output: list[dict[str, Any]], stats: GenerationStats | None) -> None:
        """Store a finished turn's conversation (unless store=false) for a later previous_response_id."""
        if not turn.req.store:
            return
        tokens = usage(turn.prompt_tokens, stats)["total_tokens"]
        self.store.put(turn.rid, turn.history + turn.req.input + assistant_messages(output), tokens)

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

    async def _events(self, turn: _Turn, use: ToolUse, generation: GenerationStream) -> AsyncGenerator[bytes, None]:
        out = OutputEvents()
        yield out.event("response.created", response=turn.response("in_progress", []))
        yield out.event("response.in_progress", response=turn.response("in_progress", []))
        streamer = use.streamer()  # None without tools: every delta is text
        for chunk in [] if streamer else out.open_message():
            yield chunk
        last = None
        try:
            async for d in self._deltas(generation):
                last = d
                for chunk in self._pieces(out, streamer, d.text):
                    yield chunk
            for chunk in self._pieces(out, streamer, None):
                yield chunk
        except (ExoError, ApiError) as exc:
            err = self.gw.to_api_error(exc)
            self.gw.metrics.errors.labels(err.type).inc()
            yield out.event("error", code=err.code or err.type, message=err.message, param=err.param)
            failed = {"code": FAILED_CODES.get(err.status, "server_error"), "message": err.message}
            yield out.event("response.failed", response=turn.response("failed", out.output, error=failed))
            return
        finally:
            generation.cancel()  # a client that went away stops generation now
        stats = last.stats if last is not None else None
        self.openai._record(stats)
        status = "incomplete" if last is not None and last.finish_reason == "length" else "completed"
        for chunk in out.finish(status):
            yield chunk
        self._keep(turn, out.output, stats)
        yield out.event(f"response.{status}", response=turn.response(status, out.output, stats))

    @staticmethod
    def _pieces(out: OutputEvents, streamer: ToolCallStreamer | None, text: str | None) -> list[bytes]:
        """The events of a delta's text (None: the end of the output), through the tool-call parser if any."""
        if streamer is None:
            return out.content(text) if text else []
        chunks: list[bytes] = []
        for e in streamer.feed(text) if text is not None else streamer.finish():
            chunks += out.call(e.call) if e.call is not None else out.content(e.content)
        return chunks
