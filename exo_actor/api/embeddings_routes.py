"""POST /v1/embeddings: OpenAI's embeddings endpoint over the served model (runtime/embedding.py).

Each input's vector is the mean (or, with the exo-actor field `pooling: "last"`, the last position) of
the model's final-normed hidden states, L2-normalized. `dimensions` keeps the first N components and
normalizes again (what OpenAI does for its text-embedding-3 models; a model not trained for it, as a
chat model is not, loses more by it). `encoding_format: "base64"` sends each vector as the base64 of
its little-endian float32 bytes, which is what OpenAI's SDKs ask for by default and decode.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..runtime.embedding import POOLINGS, Embedded, normalized
from .errors import ApiError, invalid
from .requests import parse_json

MAX_INPUTS = 2048  # OpenAI's limit on the inputs of one request
ENCODINGS = ("float", "base64")
_SHAPES = "a string, an array of strings, an array of token ids, or an array of arrays of token ids"


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: list[str | list[int]]
    encoding_format: str
    dimensions: int | None
    pooling: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _inputs(value: Any) -> list[str | list[int]]:
    """The inputs of `input`, each a string or a list of token ids (checked for shape, not vocabulary)."""
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(_is_int(t) for t in value):
        value = [value]  # one input given as token ids
    if not isinstance(value, list):
        raise invalid(f"'input' must be {_SHAPES}", "input")
    if not value:
        raise invalid("'input' must not be empty", "input")
    if len(value) > MAX_INPUTS:
        raise invalid(f"'input' has {len(value)} items; at most {MAX_INPUTS} are allowed", "input")
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise invalid(f"'input[{i}]' is an empty string", "input")
        elif isinstance(item, list):
            if not item:
                raise invalid(f"'input[{i}]' is an empty array of token ids", "input")
            if not all(_is_int(t) for t in item):
                raise invalid(f"'input[{i}]' must be an array of integer token ids", "input")
        else:
            raise invalid(f"'input[{i}]' must be a string or an array of token ids ('input' is {_SHAPES})", "input")
    return value


def _one_of(body: dict[str, Any], key: str, options: tuple[str, ...]) -> str:
    """body[key], one of `options` (absent or null: the first)."""
    value = body.get(key)
    if value is None:
        return options[0]
    if value not in options:
        raise invalid(f"'{key}' must be one of {', '.join(options)}", key)
    return str(value)


def parse_embedding(body: dict[str, Any]) -> EmbeddingRequest:
    """An embeddings request body, validated (one 400 naming the field for anything wrong)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required and must be a string", "model")
    if "input" not in body or body["input"] is None:
        raise invalid("'input' is required", "input")
    inputs = _inputs(body["input"])
    encoding = _one_of(body, "encoding_format", ENCODINGS)
    dimensions = body.get("dimensions")
    if dimensions is not None and (not _is_int(dimensions) or dimensions < 1):
        raise invalid("'dimensions' must be a positive integer", "dimensions")
    pooling = _one_of(body, "pooling", POOLINGS)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid("'user' must be a string", "user")
    return EmbeddingRequest(model, inputs, encoding, dimensions, pooling)


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class EmbeddingsRoutes:
    """POST /v1/embeddings of one gateway; `gw` gives node, config and model check."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw

    async def _finished(self, request: Request, work: Coroutine[Any, Any, list[Embedded]]) -> list[Embedded]:
        """The router's embeddings, cancelled (which frees their caches) when the client goes away or
        request_timeout passes (a 504)."""
        task, watch = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request))
        limit = self.gw.config.request_timeout
        try:
            done, _ = await asyncio.wait({task, watch}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if task in done:
            return task.result()
        task.cancel()
        if watch in done:
            raise asyncio.CancelledError  # the client is gone: nobody to answer
        raise ApiError(504, f"the request did not finish within {limit:g} s", "timeout_error", code="timeout")

    async def embeddings(self, request: Request) -> Response:
        body = parse_json(await request.body())
        files, router = self.gw.node.ready_router()
        req = parse_embedding(body)
        self.gw.check_model(req.model)
        context = files.args.max_position_embeddings
        if self.gw.config.max_context:
            context = min(context, self.gw.config.max_context)
        dim, vocab = files.args.hidden_size, files.args.vocab_size
        if req.dimensions is not None and req.dimensions > dim:
            raise invalid(f"'dimensions' must be at most {dim}, this model's embedding size", "dimensions")
        ids: list[list[int]] = []
        for i, item in enumerate(req.inputs):
            tokens = files.tokenizer.encode(item) if isinstance(item, str) else item
            if not tokens:
                raise invalid(f"'input[{i}]' encodes to no tokens", "input")
            if any(not 0 <= t < vocab for t in tokens):
                raise invalid(f"token ids in 'input[{i}]' must be between 0 and {vocab - 1}", "input")
            if len(tokens) > context:
                raise invalid(
                    f"'input[{i}]' has {len(tokens)} tokens; this model's context length is {context}",
                    "input",
                    "context_length_exceeded",
                )
            ids.append(tokens)
        results = await self._finished(request, router.embed(ids, req.pooling))
        data = []
        for i, r in enumerate(results):
            vector = r.vector if req.dimensions is None else normalized(r.vector[: req.dimensions])
            data.append({"object": "embedding", "index": i, "embedding": _encoded(vector, req.encoding_format)})
        tokens_used = sum(r.tokens for r in results)
        self.gw.metrics.prompt_tokens.inc(tokens_used)
        usage = {"prompt_tokens": tokens_used, "total_tokens": tokens_used}
        return JSONResponse({"object": "list", "data": data, "model": req.model, "usage": usage})
