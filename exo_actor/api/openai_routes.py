"""POST /v1/chat/completions and /v1/completions: non-streaming and server-sent events."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..actors.router import GenerationStream, OverloadedError, RouterActor
from ..errors import ExoError
from ..runtime.generation import Delta, GenerationStats, TokenLogprob
from ..sampling import SamplingParams
from ..tokenizer import TextTokenizer
from ..tools import ToolCallStreamer, ToolSpecError, ToolUse
from ..tools.openai import message_tool_calls, stream_deltas
from . import responses as R
from .errors import ApiError, invalid
from .requests import ChatRequest, CompletionRequest, parse_chat, parse_completion, parse_json

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


class _Watched:
    """A GenerationStream that sets `first` when its first Delta arrives (or it ends)."""

    def __init__(self, stream: GenerationStream, first: asyncio.Event) -> None:
        self.stream, self.first = stream, first

    async def __aiter__(self) -> AsyncIterator[Delta]:
        try:
            async for d in self.stream:
                self.first.set()
                yield d
        finally:
            self.first.set()

    def cancel(self) -> None:
        self.stream.cancel()


def _check_bias(params: SamplingParams, vocab: int) -> None:
    if any(t >= vocab for t, _ in params.logit_bias):
        raise invalid(f"'logit_bias' token ids must be between 0 and {vocab - 1}", "logit_bias")


def _nth(params: SamplingParams, j: int) -> SamplingParams:
    """The parameters of a request's j-th choice: a seeded request's choices draw from different seeds."""
    if j == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=(params.seed + j) % 2**63)


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
        """A request's text, finish reason, stats and token logprobs (see _deltas)."""
        deltas = await self._deltas(request, stream)
        last = deltas[-1]
        lps = [lp for d in deltas for lp in d.logprobs]
        return "".join(d.text for d in deltas), last.finish_reason or "stop", last.stats, lps

    async def _deltas(self, request: Request, stream: GenerationStream | _Watched) -> list[Delta]:
        """All of a request's deltas; cancels generation if the client goes away or time runs out."""
        deltas: list[Delta] = []

        async def consume() -> None:
            async for d in stream:
                deltas.append(d)

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
        assert deltas and deltas[-1].finish_reason is not None
        self._record(deltas[-1].stats)
        return deltas

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
        cid = R.new_id("chatcmpl")
        if not req.stream:
            return await self._chat_choices(request, router, tok, cid, req, use, ids, _within(params, ids, ctx))
        stream = router.submit(ids, _within(params, ids, ctx))
        return self._stream_response(
            self._chat_events(cid, req.model, tok, stream, req.include_usage, req.logprobs, use.streamer())
        )

    async def _chat_choices(
        self,
        request: Request,
        router: RouterActor,
        tok: TextTokenizer,
        cid: str,
        req: ChatRequest,
        use: ToolUse,
        ids: list[int],
        params: SamplingParams,
    ) -> Response:
        """A chat's choices, not streamed (n > 1 of them share the prompt's prefill: see _choices)."""
        if req.n > router.max_concurrent:
            raise OverloadedError(
                f"n={req.n} choices exceed the {router.max_concurrent} requests this server runs at once "
                "(--max-concurrent); ask for fewer"
            )
        results = await self._choices(request, router, ids, [_nth(params, j) for j in range(req.n)])
        choices = []
        for i, deltas in enumerate(results):
            content, calls = use.parse("".join(d.text for d in deltas))
            lps = [lp for d in deltas for lp in d.logprobs]
            finish = "tool_calls" if calls else deltas[-1].finish_reason or "stop"
            logprobs = R.chat_logprobs(tok, lps) if req.logprobs else None
            choices.append(R.chat_choice(i, content, finish, logprobs, message_tool_calls(calls)))
        use_total = R.total_usage([deltas[-1].stats for deltas in results], req.n)
        return JSONResponse(R.chat_completion_of(cid, req.model, choices, use_total))

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
        _check_bias(req.params, tok.vocab_size)
        prompt_ids = [p if isinstance(p, list) else tok.encode(p) for p in req.prompts]
        for ids in prompt_ids:
            if any(not 0 <= t < tok.vocab_size for t in ids):
                raise invalid(f"token ids in 'prompt' must be between 0 and {tok.vocab_size - 1}", "prompt")
            if not ids:
                raise invalid("'prompt' is empty", "prompt")
            _check_context(ids, ctx)
        if req.stream and len(prompt_ids) * req.n > 1:
            raise invalid("streaming takes a single prompt and n=1", "prompt" if len(prompt_ids) > 1 else "n")
        echoes = [
            (p if isinstance(p, str) else tok.decode(ids)) if req.echo else ""
            for p, ids in zip(req.prompts, prompt_ids)
        ]
        cid = R.new_id("cmpl")
        if req.stream:
            stream = router.submit(prompt_ids[0], _within(req.params, prompt_ids[0], ctx))
            return self._stream_response(self._completion_events(cid, req, tok, stream, echoes[0], prompt_ids[0]))
        jobs = [(k, j) for k in range(len(prompt_ids)) for j in range(req.n)]  # choices: by prompt, then n
        if len(jobs) > router.max_concurrent:
            raise OverloadedError(
                f"{len(jobs)} choices (prompts x n) exceed the {router.max_concurrent} requests this server "
                "runs at once (--max-concurrent); send fewer"
            )
        params = [_within(_nth(req.params, j), prompt_ids[k], ctx) for k, j in jobs]
        tasks = [
            asyncio.ensure_future(self._choices(request, router, ids, params[k * req.n : (k + 1) * req.n]))
            for k, ids in enumerate(prompt_ids)
        ]
        try:
            per_prompt = await asyncio.gather(*tasks)
        finally:  # one prompt failed (or the client left): the others stop too, their caches freed
            for t in tasks:
                t.cancel()
        results = [deltas for choices_of in per_prompt for deltas in choices_of]
        choices, all_stats = [], []
        for i, ((k, _), deltas) in enumerate(zip(jobs, results)):
            text, finish, stats = "".join(d.text for d in deltas), deltas[-1].finish_reason, deltas[-1].stats
            lps = [lp for d in deltas for lp in d.logprobs]
            if req.score_only:  # max_tokens 0: the prompt alone
                text, finish, lps = "", "length", []
                stats = dataclasses.replace(stats, completion_tokens=0) if stats else None
            lp = None
            if req.params.logprobs is not None:
                lp = R.completion_logprobs(tok, lps, len(echoes[k]))
                if req.echo:
                    lp = R.joined_logprobs(R.prompt_logprobs(tok, prompt_ids[k], deltas[0].prompt_logprobs), lp)
            choices.append(R.completion_choice(i, echoes[k] + text, finish, lp))
            all_stats.append(stats)
        return JSONResponse(
            R.text_completion(cid, int(time.time()), req.model, choices, R.total_usage(all_stats, req.n))
        )

    async def _choices(
        self, request: Request, router: RouterActor, ids: list[int], params: list[SamplingParams]
    ) -> list[list[Delta]]:
        """The deltas of one prompt's choices. The first prefills the prompt; once it has (its first Delta),
        the others start from a copy of its KV caches (they prefill only the prompt's last token)."""
        streams: list[GenerationStream] = []
        lead: asyncio.Future[list[Delta]] | None = None
        try:  # a submit refused half-way (too many in flight) cancels those already queued
            streams.append(router.submit(ids, params[0]))
            prefilled = asyncio.Event()
            lead = asyncio.ensure_future(self._deltas(request, _Watched(streams[0], prefilled)))
            if len(params) > 1:
                waiting = asyncio.ensure_future(prefilled.wait())
                await asyncio.wait({lead, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if lead.done() and lead.exception() is not None:
                    return [await lead]  # raises its error
                for p in params[1:]:
                    streams.append(router.submit(ids, p, fork=streams[0].request_id))
            return list(await asyncio.gather(lead, *(self._deltas(request, s) for s in streams[1:])))
        finally:
            if lead is not None and not lead.done():
                lead.cancel()
            for s in streams:
                s.cancel()

    async def _completion_events(
        self,
        cid: str,
        req: CompletionRequest,
        tok: TextTokenizer,
        stream: GenerationStream,
        echo: str,
        prompt_ids: list[int],
    ) -> AsyncGenerator[bytes, None]:
        created, last, offset, logprobs = int(time.time()), None, len(echo), req.params.logprobs is not None
        first = True
        try:
            async for d in stream:
                last = d
                if first and req.echo:  # the prompt first, with its logprobs when asked for
                    lp = R.prompt_logprobs(tok, prompt_ids, d.prompt_logprobs) if logprobs else None
                    choice = R.completion_choice(0, echo, None, lp)
                    yield _sse(R.text_completion(cid, created, req.model, [choice], {}) | {"usage": None})
                first = False
                if req.score_only:
                    d = Delta("", [], d.finish_reason and "length", d.stats)
                lp = R.completion_logprobs(tok, d.logprobs, offset) if logprobs and d.logprobs else None
                offset += len(d.text)
                if d.text or lp or d.finish_reason:
                    choice = R.completion_choice(0, d.text, d.finish_reason, lp)
                    yield _sse(R.text_completion(cid, created, req.model, [choice], {}) | {"usage": None})
        finally:
            stream.cancel()
        if last is not None:
            self._record(last.stats)
        if req.include_usage:
            stats = last.stats if last else None
            if req.score_only and stats is not None:
                stats = dataclasses.replace(stats, completion_tokens=0)
            yield _sse(R.usage_chunk(cid, created, req.model, "text_completion", stats))
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
