"""Ollama's API on the same gateway, for the tools that speak it (Open WebUI, the `ollama` clients, editors):
/api/chat, /api/generate (NDJSON streams by default, as Ollama), /api/tags, /api/show, /api/ps and
/api/version. Errors are Ollama's shape, {"error": "..."}, with the HTTP status of the OpenAI side.

`/api/chat` takes `tools` (OpenAI's function shape), assistant `tool_calls` and `tool` messages, and answers
`message.tool_calls` (arguments as objects; streamed in one chunk once complete): ollama_chat.py.

Options map to the same sampling as the OpenAI endpoints (temperature, top_k, top_p, min_p, seed,
num_predict, stop, presence/frequency penalties); `format` ("json" or a JSON schema) is enforced by
constrained decoding (sampling/grammar.py). Ollama's defaults apply: temperature 0.8, streaming on.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import ExoError
from ..runtime.generation import Delta, GenerationStats
from ..sampling import SamplingParams
from ..sampling.grammar import GrammarError, json_grammar
from ..tokenizer import chat_prompt_ids
from ..tools import ToolChoice, ToolSpecError, ToolUse
from .errors import invalid
from .ollama_chat import chat_messages, parse_tools, stream_messages, tool_calls_json
from .requests import parse_json

OLLAMA_VERSION = "0.6.0"  # the Ollama API version whose shapes these follow
FLOAT_OPTIONS = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "min_p": (0.0, 1.0)}
PENALTIES = ("presence_penalty", "frequency_penalty")


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _options(body: dict[str, Any], context: int, fmt: Any) -> SamplingParams:
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise invalid("'options' must be an object", "options")

    def number(key: str, lo: float, hi: float, default: float) -> float:
        v = opts.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
            raise invalid(f"options.{key} must be a number between {lo:g} and {hi:g}", f"options.{key}")
        return float(v)

    def integer(key: str, default: int | None) -> int | None:
        v = opts.get(key, default)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise invalid(f"options.{key} must be an integer", f"options.{key}")
        return v

    predict = integer("num_predict", -1)
    if predict is None or predict < 0 or predict > context:  # Ollama: -1 (or -2) is "until the context is full"
        predict = context
    seed = integer("seed", None)
    if seed is not None and seed < 0:
        seed = None  # Ollama: a negative seed is a random one
    stop = opts.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 16:
        raise invalid("options.stop must be a list of at most 16 non-empty strings", "options.stop")
    top_k = integer("top_k", 40)
    if top_k is None or not 0 <= top_k <= 1_000_000:
        raise invalid("options.top_k must be between 0 and 1000000", "options.top_k")
    grammar = None
    if fmt not in (None, ""):
        try:
            grammar = json_grammar(None if fmt == "json" else fmt if isinstance(fmt, dict) else _bad_format())
        except GrammarError as exc:
            raise invalid(str(exc), "format") from None
    try:
        return SamplingParams(
            temperature=number("temperature", 0.0, 2.0, 0.8),
            top_p=number("top_p", 0.0, 1.0, 0.9) or 1e-9,
            min_p=number("min_p", 0.0, 1.0, 0.0),
            top_k=top_k,
            seed=seed,
            max_tokens=max(1, predict),
            stop=tuple(stop),
            presence_penalty=number("presence_penalty", -2.0, 2.0, 0.0),
            frequency_penalty=number("frequency_penalty", -2.0, 2.0, 0.0),
            grammar=grammar,
        )
    except ExoError as exc:
        raise invalid(str(exc), "options") from None


def _bad_format() -> dict[str, Any]:
    raise GrammarError("'format' must be \"json\" or a JSON schema object")


class OllamaRoutes:
    def __init__(self, gw: Any, openai: Any) -> None:
        self.gw, self.openai = gw, openai  # the OpenAI routes: readiness, context limits, collection

    def error(self, exc: Exception) -> Response:
        err = self.gw.to_api_error(exc)
        return JSONResponse({"error": err.message}, status_code=err.status)

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": OLLAMA_VERSION})

    def _model(self) -> dict[str, Any]:
        node = self.gw.node
        details: dict[str, Any] = {
            "format": "gguf",
            "family": "",
            "families": [],
            "parameter_size": "",
            "quantization_level": "",
        }
        size = 0
        try:
            files, _ = node.ready_router()
            details["family"] = files.args.architecture
            details["families"] = [files.args.architecture]
            size = files.path.stat().st_size if files.path.is_file() else 0
        except (ExoError, OSError):
            pass
        return {
            "name": node.model_id,
            "model": node.model_id,
            "modified_at": datetime.fromtimestamp(node.started_at, UTC).isoformat().replace("+00:00", "Z"),
            "size": size,
            "digest": "",
            "details": details,
        }

    async def tags(self, request: Request) -> Response:
        return JSONResponse({"models": [self._model()]})

    async def ps(self, request: Request) -> Response:
        m = self._model()
        return JSONResponse({"models": [{**m, "expires_at": "0001-01-01T00:00:00Z", "size_vram": 0}]})

    async def show(self, request: Request) -> Response:
        try:
            body = parse_json(await request.body())
            name = body.get("model") or body.get("name")
            if not isinstance(name, str) or not name:
                raise invalid("'model' is required", "model")
            self.gw.check_model(name)
            files, _ = self.gw.node.ready_router()
        except Exception as exc:  # noqa: BLE001 - Ollama's error shape
            return self.error(exc)
        args = files.args
        info = {
            "general.architecture": args.architecture,
            f"{args.architecture}.block_count": args.num_hidden_layers,
            f"{args.architecture}.context_length": args.max_position_embeddings,
            f"{args.architecture}.embedding_length": args.hidden_size,
        }
        m = self._model()
        return JSONResponse(
            {
                "modelfile": "",
                "parameters": "",
                "template": files.tokenizer.chat_template or "",
                "details": m["details"],
                "model_info": info,
                "capabilities": ["completion", "tools"],  # tools: the template's, or our block (tools/render.py)
                "modified_at": m["modified_at"],
            }
        )

    async def _request(self, request: Request) -> tuple[dict[str, Any], str, Any, int, Any]:
        """The body, the model it names (checked), the tokenizer, the context and the router."""
        body = parse_json(await request.body())
        tok, ctx, router = self.openai._ready()
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise invalid("'model' is required", "model")
        self.gw.check_model(model)
        return body, model, tok, ctx, router

    def _submit(self, body: dict[str, Any], ids: list[int], ctx: int, router: Any, what: str) -> tuple[Any, bool]:
        """Start generating `ids` with the body's options; (the generation, whether to stream)."""
        if len(ids) >= ctx:
            raise invalid(f"the prompt has {len(ids)} tokens; this model's context length is {ctx}", what)
        params = _options(body, ctx - len(ids), body.get("format"))
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            raise invalid("'stream' must be true or false", "stream")
        return router.submit(ids, params), stream

    async def chat(self, request: Request) -> Response:
        try:
            body, model, tok, ctx, router = await self._request(request)
            parsed = chat_messages(body.get("messages"))
            tools = parse_tools(body.get("tools"))
            if not parsed:  # Ollama loads the model on an empty chat and answers done
                return JSONResponse(
                    {
                        "model": model,
                        "created_at": _now(),
                        "message": {"role": "assistant", "content": ""},
                        "done": True,
                        "done_reason": "load",
                    }
                )
            use = ToolUse.for_model(tok, tools, ToolChoice("auto")) if tools else ToolUse()  # no tool_choice
            try:
                ids = use.prompt_ids(tok, parsed)
            except ToolSpecError as exc:
                raise invalid(str(exc), exc.param) from None
            except ExoError as exc:
                raise invalid(str(exc), "messages") from None
            generation, stream = self._submit(body, ids, ctx, router, "messages")
        except Exception as exc:  # noqa: BLE001 - Ollama's error shape
            return self.error(exc)
        return await self._answer(request, generation, model, stream, "chat", use)

    async def generate(self, request: Request) -> Response:
        try:
            body, model, tok, ctx, router = await self._request(request)
            prompt, system = body.get("prompt", ""), body.get("system")
            if not isinstance(prompt, str) or (system is not None and not isinstance(system, str)):
                raise invalid("'prompt' and 'system' must be strings", "prompt")
            if not prompt:  # Ollama: an empty prompt loads the model
                return JSONResponse(
                    {"model": model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
                )
            if body.get("raw"):
                ids = tok.encode(prompt)
            else:
                messages = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": prompt}
                ]
                try:
                    ids = chat_prompt_ids(tok, messages)
                except ExoError as exc:
                    raise invalid(str(exc), "prompt") from None
            generation, stream = self._submit(body, ids, ctx, router, "prompt")
        except Exception as exc:  # noqa: BLE001 - Ollama's error shape
            return self.error(exc)
        return await self._answer(request, generation, model, stream, "generate")

    async def _answer(
        self, request: Request, generation: Any, model: str, stream: bool, kind: str, use: ToolUse | None = None
    ) -> Response:
        """The answer, whole or as NDJSON lines; with `use`, tool calls are parsed out of a chat's text."""
        started = time.perf_counter_ns()
        use = use or ToolUse()

        def piece(text: str) -> dict[str, Any]:
            if kind == "chat":
                return {
                    "model": model,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": text},
                    "done": False,
                }
            return {"model": model, "created_at": _now(), "response": text, "done": False}

        def final(reason: str, stats: GenerationStats | None) -> dict[str, Any]:
            out = {**piece(""), "done": True, "done_reason": reason, "total_duration": time.perf_counter_ns() - started}
            if stats is not None:
                out.update(
                    load_duration=0,
                    prompt_eval_count=stats.prompt_tokens,
                    prompt_eval_duration=int(stats.time_to_first_token * 1e9),
                    eval_count=stats.completion_tokens,
                    eval_duration=int(stats.decode_seconds * 1e9),
                )
            return out

        if not stream:
            try:
                text, reason, stats, _ = await self.openai._collect(request, generation)
            except Exception as exc:  # noqa: BLE001 - Ollama's error shape
                return self.error(exc)
            if kind == "generate":
                return JSONResponse({**final(reason, stats), "response": text})
            content, calls = use.parse(text)
            message: dict[str, Any] = {"role": "assistant", "content": content or ""}
            if calls:
                message["tool_calls"] = tool_calls_json(calls)
            return JSONResponse({**final(reason, stats), "message": message})

        streamer = use.streamer()

        def chunks(d: Delta) -> list[dict[str, Any]]:
            if streamer is None:
                return [piece(d.text)] if d.text else []
            found = streamer.feed(d.text) + (streamer.finish() if d.finish_reason else [])
            return [{**piece(""), "message": m} for m in stream_messages(found)]

        async def lines() -> AsyncGenerator[bytes, None]:
            last: Delta | None = None
            try:
                async for d in generation:
                    last = d
                    for chunk in chunks(d):
                        yield (json.dumps(chunk, ensure_ascii=False) + "\n").encode()
            except Exception as exc:  # noqa: BLE001 - the stream has begun: the error is its last line
                err = self.gw.to_api_error(exc)
                yield (json.dumps({"error": err.message}) + "\n").encode()
                return
            finally:
                generation.cancel()
            stats = last.stats if last is not None else None
            self.openai._record(stats)
            yield (json.dumps(final(last.finish_reason or "stop" if last else "stop", stats)) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")


__all__ = ["OllamaRoutes"]
