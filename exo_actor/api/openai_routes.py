"""POST /v1/chat/completions and /v1/completions: non-streaming and server-sent events."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..actors.router import GenerationStream, RouterActor
from ..errors import ExoError
from ..runtime.generation import Delta, GenerationStats, TokenLogprob
from ..sampling import SamplingParams
from ..tokenizer import TextTokenizer
from ..tools import ToolCallStreamer, ToolSpecError, ToolUse
from ..tools.openai import message_tool_calls, stream_deltas
from . import responses as R
from .errors import ApiError, invalid
from .requests import parse_chat, parse_completion, parse_json

log = logging.getLogger(__name__)


def _sse(obj: dict[str, Any] | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _check_context(ids: list[int], context_length: int) -> None:
    if len(ids) >= context_length:
        raise invalid(
            f"the prompt has {len(ids)} tokens; this model's context length is {context_length}",
            "messages",
            "context_length_exceeded",
        )


def _within(params: SamplingParams, ids: list[int], context: int) -> SamplingParams:
    """Completion tokens capped so prompt + completion fit the context a request may use."""
    room = context - len(ids)
    return params if params.max_tokens <= room else dataclasses.replace(params, max_tokens=room)


class OpenAIRoutes:
    """The OpenAI endpoints of one gateway; `gw` gives node, config, metrics and error mapping."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw

    async def _body(self, request: Request) -> dict[str, Any]:
        return parse_json(await request.body())

    def _ready(self) -> tuple[TextTokenizer, int, RouterActor]:
        """The tokenizer, the context length requests may use (the model's, or less with
        --max-context), and the router."""
        files, router = self.gw.node.ready_router()
        context = files.args.max_position_embeddings
        if self.gw.config.max_context:
            context = min(context, self.gw.config.max_context)
        return files.tokenizer, context, router

    def _record(self, stats: GenerationStats | None) -> None:
        if stats is not None:
            self.gw.metrics.record(stats)

    async def _collect(
        self, request: Request, stream: GenerationStream
    ) -> tuple[str, str, GenerationStats | None, list[TokenLogprob]]:
        """All of a request's deltas; cancels generation if the client goes away or time runs out."""
        text, lps, last = [], [], None

        async def consume() -> None:
            nonlocal last
            async for d in stream:
                text.append(d.text)
                lps.extend(d.logprobs)
                last = d

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work, watch = asyncio.ensure_future(consume()), asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait(
                {work, watch}, timeout=self.gw.config.request_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            watch.cancel()
        if work not in done:
            work.cancel()
            stream.cancel()
            if watch in done:
                raise asyncio.CancelledError  # the client is gone: nobody to answer
            raise ApiError(
                504,
                f"the request did not finish within {self.gw.config.request_timeout:g} s",
                "timeout_error",
                code="timeout",
            )
        work.result()  # re-raise a generation error
        assert last is not None and last.finish_reason is not None
        self._record(last.stats)
        return "".join(text), last.finish_reason, last.stats, lps

    async def chat(self, request: Request) -> Response:
        body = await self._body(request)
        tok, ctx, router = self._ready()
        req = parse_chat(body, ctx, self.gw.config.max_tokens)
        self.gw.check_model(req.model)
        # tools offered: the prompt describes them, required calls are a grammar, the output is parsed
        use = ToolUse.for_model(tok, req.tools, req.tool_choice, req.parallel_tool_calls) if req.tools else ToolUse()
        try:
            ids = use.prompt_ids(tok, req.messages)
            grammar = use.grammar()
        except ToolSpecError as exc:
            raise invalid(str(exc), exc.param) from None
        except ExoError as exc:
            raise invalid(str(exc), "messages") from None
        _check_context(ids, ctx)
        params = req.params if grammar is None else dataclasses.replace(req.params, grammar=grammar)
        stream = router.submit(ids, _within(params, ids, ctx))
        cid = R.new_id("chatcmpl")
        if req.stream:
            return self._stream_response(
                self._chat_events(cid, req.model, tok, stream, req.include_usage, req.logprobs, use.streamer())
            )
        text, finish, stats, lps = await self._collect(request, stream)
        logprobs = R.chat_logprobs(tok, lps) if req.logprobs else None
        content, calls = use.parse(text)
        finish = "tool_calls" if calls else finish
        calls_json = message_tool_calls(calls)
        return JSONResponse(R.chat_completion(cid, req.model, content, finish, stats, logprobs, calls_json))

    async def _chat_events(
        self,
        cid: str,
        model: str,
        tok: TextTokenizer,
        stream: GenerationStream,
        include_usage: bool,
        logprobs: bool,
        tools: ToolCallStreamer | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The chunks of a streamed chat; with `tools`, text that may be a call is held back and calls go
        out as `tool_calls` deltas (see exo_actor/tools/stream.py)."""
        created = int(time.time())
        # content null, not "", when the answer may be calls only (what OpenAI sends; the SDK's sum stays null)
        yield _sse(R.chat_chunk(cid, created, model, {"role": "assistant", "content": "" if tools is None else None}))
        last: Delta | None = None
        try:
            async for d in stream:
                last = d
                lp = R.chat_logprobs(tok, d.logprobs) if logprobs and d.logprobs else None
                if tools is None:
                    if d.text or lp:
                        yield _sse(R.chat_chunk(cid, created, model, {"content": d.text}, logprobs=lp))
                else:
                    deltas = stream_deltas(tools.feed(d.text) + (tools.finish() if d.finish_reason else []))
                    for i, delta in enumerate(deltas or ([{"content": ""}] if lp else [])):
                        yield _sse(R.chat_chunk(cid, created, model, delta, logprobs=lp if i == 0 else None))
                if d.finish_reason is not None:
                    finish = "tool_calls" if tools is not None and tools.calls else d.finish_reason
                    yield _sse(R.chat_chunk(cid, created, model, {}, finish=finish))
        finally:
            stream.cancel()  # a client that went away stops generation now, not when the GC runs
        if last is not None:
            self._record(last.stats)
        if include_usage:
            yield _sse(R.usage_chunk(cid, created, model, "chat.completion.chunk", last.stats if last else None))
        yield _sse("[DONE]")

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        tok, ctx, router = self._ready()
        req = parse_completion(body, ctx, self.gw.config.max_tokens)
        self.gw.check_model(req.model)
        prompt_ids = [p if isinstance(p, list) else tok.encode(p) for p in req.prompts]
        for ids in prompt_ids:
            if any(not 0 <= t < tok.vocab_size for t in ids):
                raise invalid(f"token ids in 'prompt' must be between 0 and {tok.vocab_size - 1}", "prompt")
            if not ids:
                raise invalid("'prompt' is empty", "prompt")
            _check_context(ids, ctx)
        if req.stream and len(prompt_ids) > 1:
            raise invalid("streaming takes a single prompt", "prompt")
        cid = R.new_id("cmpl")
        if req.stream:
            stream = router.submit(prompt_ids[0], _within(req.params, prompt_ids[0], ctx))
            return self._stream_response(
                self._completion_events(cid, req.model, tok, stream, req.include_usage, req.params.logprobs is not None)
            )
        streams = [router.submit(ids, _within(req.params, ids, ctx)) for ids in prompt_ids]
        try:
            results = await asyncio.gather(*(self._collect(request, s) for s in streams))
        finally:
            for s in streams:
                s.cancel()
        choices = []
        for i, (text, finish, _, lps) in enumerate(results):
            lp = R.completion_logprobs(tok, lps) if req.params.logprobs is not None else None
            choices.append(R.completion_choice(i, text, finish, lp))
        use = R.total_usage([stats for _, _, stats, _ in results])
        return JSONResponse(R.text_completion(cid, int(time.time()), req.model, choices, use))

    async def _completion_events(
        self, cid: str, model: str, tok: TextTokenizer, stream: GenerationStream, include_usage: bool, logprobs: bool
    ) -> AsyncGenerator[bytes, None]:
        created, last, offset = int(time.time()), None, 0
        try:
            async for d in stream:
                last = d
                lp = R.completion_logprobs(tok, d.logprobs, offset) if logprobs and d.logprobs else None
                offset += len(d.text)
                if d.text or lp or d.finish_reason:
                    choice = R.completion_choice(0, d.text, d.finish_reason, lp)
                    yield _sse(R.text_completion(cid, created, model, [choice], {}) | {"usage": None})
        finally:
            stream.cancel()
        if last is not None:
            self._record(last.stats)
        if include_usage:
            yield _sse(R.usage_chunk(cid, created, model, "text_completion", last.stats if last else None))
        yield _sse("[DONE]")

    def _stream_response(self, events: AsyncGenerator[bytes, None]) -> StreamingResponse:
        return StreamingResponse(
            self._guard(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def _guard(self, events: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        """Errors after the response started go to the client as an SSE error event, then [DONE]."""
        loop = asyncio.get_running_loop()
        limit = self.gw.config.request_timeout
        deadline = loop.time() + limit
        it = events.__aiter__()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(it.__anext__(), max(0.0, deadline - loop.time()))
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise ApiError(
                        504, f"the request did not finish within {limit:g} s", "timeout_error", code="timeout"
                    ) from None
                yield chunk
        except (ExoError, ApiError) as exc:
            err = self.gw.to_api_error(exc)
            self.gw.metrics.errors.labels(err.type).inc()
            yield _sse(err.body())
            yield _sse("[DONE]")
        finally:
            await events.aclose()  # cancels generation on disconnect
