"""Chat templates rendered with jinja2, the way Hugging Face's apply_chat_template does."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InvalidRequestError, UnsupportedModelError
from .tokenizer import TextTokenizer


def _raise(message: str) -> None:
    raise InvalidRequestError(f"chat template rejected the conversation: {message}")


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson  # Hugging Face's: no HTML escaping (tool schemas hold '<' and '&')
    try:
        return env.from_string(template)
    except jinja2.TemplateError as exc:
        raise UnsupportedModelError(f"the model's chat template does not compile: {exc}") from None


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt text for a conversation, as the model's own template defines it; `tools` (OpenAI's tool
    dicts) go to the template's `tools` variable, as Hugging Face's apply_chat_template passes them."""
    if not template:
        raise UnsupportedModelError("this model has no chat template; pass --raw to send the prompt as plain text")
    try:
        return _compile(template).render(
            messages=messages,
            bos_token=bos_token or "",
            eos_token=eos_token or "",
            add_generation_prompt=add_generation_prompt,
            tools=tools or None,
        )
    except jinja2.TemplateError as exc:
        raise InvalidRequestError(f"the chat template failed on this conversation: {exc}") from None


def chat_prompt_ids(
    tokenizer: TextTokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> list[int]:
    """Token ids of a conversation rendered through the model's chat template, ready to generate."""
    text = render_chat(
        tokenizer.chat_template, messages, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token, tools=tools
    )
    return tokenizer.encode(text, add_bos=False)  # the template writes BOS itself if it wants one
