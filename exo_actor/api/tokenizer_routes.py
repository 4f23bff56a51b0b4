"""vLLM's tokenizer endpoints: POST /tokenize, POST /detokenize, GET /tokenizer_info.

Evaluation harnesses (lm-evaluation-harness's `local-completions` with its remote tokenizer) count a
prompt's tokens with the server's own tokenizer instead of downloading one: they need these three.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import ExoError
from ..tokenizer import chat_prompt_ids
from .errors import invalid
from .requests import parse_json

MAX_TOKENS = 1 << 20  # ids one /detokenize takes


class TokenizerRoutes:
    def __init__(self, gw: Any) -> None:
        self.gw = gw

    def _tokenizer_and_context(self) -> tuple[Any, int]:
        files, _ = self.gw.node.ready_router()
        return files.tokenizer, files.args.max_position_embeddings

    async def tokenize(self, request: Request) -> Response:
        body = parse_json(await request.body())
        tok, context = self._tokenizer_and_context()
        self._model(body)
        special = body.get("add_special_tokens", True)
        if not isinstance(special, bool):
            raise invalid("'add_special_tokens' must be a boolean", "add_special_tokens")
        if "messages" in body:
            messages = body["messages"]
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            ):
                raise invalid("'messages' must be an array of {role, content} objects with text content", "messages")
            try:
                ids = chat_prompt_ids(tok, messages)
            except ExoError as exc:
                raise invalid(str(exc), "messages") from None
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise invalid("'prompt' (a string) or 'messages' is required", "prompt")
            ids = tok.encode(prompt, add_bos=tok.add_bos and special)
        return JSONResponse({"count": len(ids), "max_model_len": context, "tokens": ids, "token_strs": None})

    async def detokenize(self, request: Request) -> Response:
        body = parse_json(await request.body())
        tok, _ = self._tokenizer_and_context()
        self._model(body)
        ids = body.get("tokens")
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_TOKENS
            or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < tok.vocab_size for t in ids)
        ):
            raise invalid(f"'tokens' must be an array of token ids between 0 and {tok.vocab_size - 1}", "tokens")
        return JSONResponse({"prompt": tok.decode(ids)})

    async def info(self, request: Request) -> Response:
        tok, context = self._tokenizer_and_context()
        return JSONResponse(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": tok.bos_token,
                "eos_token": tok.eos_token,
                "pad_token": tok.pad_token,
                "add_bos_token": tok.add_bos,
                "chat_template": tok.chat_template,
                "model_max_length": context,
                "vocab_size": tok.vocab_size,
            }
        )

    def _model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is not None:
            if not isinstance(model, str):
                raise invalid("'model' must be a string", "model")
            self.gw.check_model(model)
