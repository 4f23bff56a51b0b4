"""Parsing and validation of OpenAI request bodies into typed requests (400 on anything wrong)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError
from ..sampling import SamplingParams
from ..sampling.grammar import GrammarError, response_format_grammar
from ..sampling.params import MAX_DRAFT_TOKENS, MAX_LOGIT_BIAS, MAX_STOP_STRINGS
from ..tools import (
    Tool,
    ToolChoice,
    ToolSpecError,
    parse_openai_tool_calls,
    parse_openai_tool_choice,
    parse_openai_tools,
)
from .errors import ApiError, invalid

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP = MAX_STOP_STRINGS  # OpenAI allows 4; evaluation harnesses send more (16 here)
MAX_CHOICES = 16  # `n`: choices per prompt


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]  # Hugging Face's shape: assistant `tool_calls` (arguments as dicts), `tool`
    params: SamplingParams
    stream: bool
    include_usage: bool
    logprobs: bool
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice("none")
    parallel_tool_calls: bool = True
    n: int = 1  # choices


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompts: list[str | list[int]]
    params: SamplingParams
    stream: bool
    include_usage: bool
    n: int = 1  # choices per prompt
    echo: bool = False  # the prompt comes back before the completion (with its logprobs if logprobs is set)
    score_only: bool = False  # max_tokens 0 with echo: the prompt alone (one token is generated, then dropped)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("the request body is not valid UTF-8") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise invalid(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _get(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    v = body.get(key, default)
    if v is None:
        return default
    numeric = kind in (int, float) or kind == (int, float)
    if isinstance(v, bool) and kind is not bool:
        raise invalid(f"'{key}' must be {_kind_name(kind)}, got a boolean", key)
    if numeric and isinstance(v, float) and not math.isfinite(v):
        raise invalid(f"'{key}' must be a finite number", key)
    if not isinstance(v, kind):
        raise invalid(f"'{key}' must be {_kind_name(kind)}, got {type(v).__name__}", key)
    return v


_KIND_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
}


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return "a number" if float in kind else " or ".join(_KIND_NAMES[k] for k in kind)
    return _KIND_NAMES.get(kind, kind.__name__)


def _range(body: dict[str, Any], key: str, lo: float, hi: float, default: float) -> float:
    v = float(_get(body, key, (int, float), default))
    if not lo <= v <= hi:
        raise invalid(f"'{key}' must be between {lo:g} and {hi:g}, got {v:g}", key)
    return v


def _sampling(
    body: dict[str, Any],
    context_length: int,
    logprobs: int | None,
    max_tokens_limit: int | None = None,
    allow_zero: bool = False,
    prompt_logprobs: int | None = None,
    several: bool = False,
) -> SamplingParams:
    """The sampling parameters of a chat or completion body. allow_zero: max_tokens 0 is accepted (an echo
    that only scores the prompt; the caller generates one token and drops it); several: the caller reads
    `n` itself (choices_count), else n must be 1."""
    if not several and choices_count(body) != 1:
        raise invalid("only n=1 is supported here; send several requests for several choices", "n")
    max_tokens = _get(body, "max_completion_tokens", int, None)
    key = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = _get(body, "max_tokens", int, None), "max_tokens"
    limit = min(context_length, max_tokens_limit or context_length)
    if max_tokens is None:
        max_tokens = limit
    if not 1 <= max_tokens <= limit and not (max_tokens == 0 and allow_zero):
        what = "the context length" if limit == context_length else "this server's limit (--max-tokens)"
        raise invalid(f"'{key}' must be between 1 and {what} ({limit}), got {max_tokens}", key)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise invalid("'stop' must be a string or an array of strings", "stop")
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise invalid(f"'stop' takes at most {MAX_STOP} non-empty strings", "stop")
    seed = _get(body, "seed", int, None)
    if seed is not None and not 0 <= seed < 2**63:
        raise invalid("'seed' must be a non-negative 64-bit integer", "seed")
    top_k = _get(body, "top_k", int, 0)
    if not 0 <= top_k <= 1_000_000:
        raise invalid("'top_k' must be between 0 and 1000000", "top_k")
    try:
        grammar = response_format_grammar(body.get("response_format"))
    except GrammarError as exc:
        raise invalid(str(exc), "response_format") from None
    draft_tokens = _get(body, "draft_tokens", int, None)  # exo-actor extension: 0 turns speculation off
    if draft_tokens is not None and not 0 <= draft_tokens <= MAX_DRAFT_TOKENS:
        raise invalid(f"'draft_tokens' must be between 0 and {MAX_DRAFT_TOKENS}", "draft_tokens")
    min_tokens = _get(body, "min_tokens", int, 0)  # vLLM's extension, as are ignore_eos and top_k
    if not 0 <= min_tokens <= max(max_tokens, 1):
        raise invalid(f"'min_tokens' must be between 0 and max_tokens ({max_tokens}), got {min_tokens}", "min_tokens")
    try:
        return SamplingParams(
            temperature=_range(body, "temperature", 0.0, 2.0, 1.0),
            top_p=_range(body, "top_p", 0.0, 1.0, 1.0) or 1e-9,
            top_k=top_k,
            min_p=_range(body, "min_p", 0.0, 1.0, 0.0),
            seed=seed,
            max_tokens=max(max_tokens, 1),
            stop=stops,
            presence_penalty=_range(body, "presence_penalty", -2.0, 2.0, 0.0),
            frequency_penalty=_range(body, "frequency_penalty", -2.0, 2.0, 0.0),
            logprobs=logprobs,
            draft_tokens=draft_tokens,
            grammar=grammar,
            logit_bias=_logit_bias(body),
            min_tokens=min_tokens,
            ignore_eos=bool(_get(body, "ignore_eos", bool, False)),
            prompt_logprobs=prompt_logprobs,
        )
    except InvalidRequestError as exc:
        raise invalid(str(exc)) from None


def _logit_bias(body: dict[str, Any]) -> tuple[tuple[int, float], ...]:
    """OpenAI's logit_bias: {"<token id>": bias in [-100, 100]} (the route checks ids against the vocabulary)."""
    raw = _get(body, "logit_bias", dict, None)
    if not raw:
        return ()
    if len(raw) > MAX_LOGIT_BIAS:
        raise invalid(f"'logit_bias' takes at most {MAX_LOGIT_BIAS} tokens, got {len(raw)}", "logit_bias")
    out = []
    for key, v in raw.items():
        if not key.isdigit() or len(key) > 12:
            raise invalid(
                f"'logit_bias' keys must be token ids (non-negative integers as strings), got {key!r}", "logit_bias"
            )
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -100 <= v <= 100:
            raise invalid(
                f"'logit_bias' values must be numbers between -100 and 100, got {v!r} for {key}", "logit_bias"
            )
        out.append((int(key), float(v)))
    return tuple(sorted(out))


def choices_count(body: dict[str, Any]) -> int:
    """`n`: how many choices to generate for each prompt (OpenAI's default 1)."""
    n = _get(body, "n", int, 1)
    if not 1 <= n <= MAX_CHOICES:
        raise invalid(f"'n' must be between 1 and {MAX_CHOICES}, got {n}", "n")
    return n


def _stream_options(body: dict[str, Any], stream: bool) -> bool:
    opts = _get(body, "stream_options", dict, None)
    if opts is None:
        return False
    if not stream:
        raise invalid("'stream_options' is only allowed when 'stream' is true", "stream_options")
    return bool(_get(opts, "include_usage", bool, False))


def _message_text(content: Any, i: int) -> str:
    param = f"messages[{i}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(
                    f"{param}[{j}] must be a text part ({{'type': 'text', 'text': ...}}); this model reads text only",
                    param,
                )
            parts.append(part["text"])
        return "".join(parts)
    raise invalid(f"'{param}' must be a string or an array of text parts", param)


def _message(m: Any, i: int) -> dict[str, Any]:
    """One chat message in Hugging Face's shape (what chat templates read)."""
    if not isinstance(m, dict):
        raise invalid(f"messages[{i}] must be an object", f"messages[{i}]")
    role = m.get("role")
    if role not in ROLES:
        raise invalid(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}", f"messages[{i}].role")
    content = m.get("content")
    if content is None and role == "assistant":
        content = ""
    out: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": _message_text(content, i)}
    if role == "assistant" and m.get("tool_calls") is not None:
        try:
            calls = parse_openai_tool_calls(m["tool_calls"], f"messages[{i}].tool_calls")
        except ToolSpecError as exc:
            raise invalid(str(exc), exc.param) from None
        if calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
            ]
    if role == "tool":
        call_id = m.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            param = f"messages[{i}].tool_call_id"
            raise invalid(f"'{param}' is required in a tool message (the id of the call it answers)", param)
        out["tool_call_id"] = call_id
    return out


def _tools(body: dict[str, Any]) -> tuple[tuple[Tool, ...], ToolChoice, bool]:
    """`tools`, `tool_choice` and `parallel_tool_calls`, validated (one 400 naming the field)."""
    for old, new in (("functions", "tools"), ("function_call", "tool_choice")):
        if body.get(old) is not None:  # refused, not ignored: the client would wait for a call that never comes
            raise invalid(f"'{old}' is deprecated and not supported; send '{new}' instead", old)
    try:
        tools = parse_openai_tools(body.get("tools"))
        choice = parse_openai_tool_choice(body.get("tool_choice"), tools)
    except ToolSpecError as exc:
        raise invalid(str(exc), exc.param) from None
    parallel = bool(_get(body, "parallel_tool_calls", bool, True))
    fmt = body.get("response_format")
    if tools and choice.mode != "none" and isinstance(fmt, dict) and fmt.get("type", "text") != "text":
        raise invalid(
            "'response_format' cannot be combined with 'tools' unless 'tool_choice' is 'none' "
            "(then the tools are not offered and the answer follows response_format)",
            "response_format",
        )
    return tuple(tools), choice, parallel


def parse_chat(body: dict[str, Any], context_length: int, max_tokens: int | None = None) -> ChatRequest:
    model = _get(body, "model", str, None)
    if not model:
        raise invalid("'model' is required", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array", "messages")
    parsed = [_message(m, i) for i, m in enumerate(messages)]
    tools, choice, parallel = _tools(body)
    stream = bool(_get(body, "stream", bool, False))
    logprobs = bool(_get(body, "logprobs", bool, False))
    top = _get(body, "top_logprobs", int, None)
    if top is not None and not logprobs:
        raise invalid("'top_logprobs' requires 'logprobs': true", "top_logprobs")
    if top is not None and not 0 <= top <= 20:
        raise invalid("'top_logprobs' must be between 0 and 20", "top_logprobs")
    n = choices_count(body)
    if n > 1 and stream:
        raise invalid("n > 1 is not supported with stream: true; send n requests, or stream: false", "n")
    params = _sampling(body, context_length, (top or 0) if logprobs else None, max_tokens, several=True)
    opts = _stream_options(body, stream)
    return ChatRequest(model, parsed, params, stream, opts, logprobs, tools, choice, parallel, n)


def parse_completion(body: dict[str, Any], context_length: int, max_tokens: int | None = None) -> CompletionRequest:
    model = _get(body, "model", str, None)
    if not model:
        raise invalid("'model' is required", "model")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts: list[str | list[int]] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(_token_ids(t) for t in [prompt]):
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) and p and _token_ids(p) for p in prompt):
        prompts = [list(p) for p in prompt]  # a batch of token-id prompts (what evaluation harnesses send)
    else:
        raise invalid(
            "'prompt' must be a string, an array of strings, an array of token ids, or an array of such arrays",
            "prompt",
        )
    if _get(body, "suffix", str, None):
        raise invalid("'suffix' (fill in the middle) is not supported", "suffix")
    n = choices_count(body)
    best_of = _get(body, "best_of", int, n)
    if best_of != n:
        raise invalid(f"'best_of' must equal 'n' ({n}): ranking extra candidates is not supported", "best_of")
    echo = bool(_get(body, "echo", bool, False))
    stream = bool(_get(body, "stream", bool, False))
    lp = _get(body, "logprobs", int, None)
    if lp is not None and not 0 <= lp <= 5:
        raise invalid("'logprobs' must be between 0 and 5", "logprobs")
    params = _sampling(
        body, context_length, lp, max_tokens, allow_zero=echo, prompt_logprobs=lp if echo else None, several=True
    )
    score_only = echo and body.get("max_tokens") == 0
    return CompletionRequest(model, prompts, params, stream, _stream_options(body, stream), n, echo, score_only)


def _token_ids(ids: list[Any]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in ids)


def check_model(requested: str, served: set[str], primary: str) -> None:
    if requested not in served:
        raise ApiError(
            404,
            f"the model '{requested}' does not exist on this cluster; it serves '{primary}' (see GET /v1/models)",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
