"""OpenAI response objects: chat completions, stream chunks, text completions, logprobs, usage."""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..runtime.generation import GenerationStats, TokenLogprob
from ..tokenizer import TextTokenizer


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def total_usage(all_stats: list[GenerationStats | None], n: int = 1) -> dict[str, Any]:
    """The usage of several choices, `n` per prompt in order (a completion request with a list of prompts,
    or n > 1): each prompt counted once (as OpenAI bills it; its first choice's figures), every choice's
    completion tokens."""
    parts = [usage(s) for s in all_stats]
    firsts = parts[::n]
    prompt = sum(p["prompt_tokens"] for p in firsts)
    completion = sum(p["completion_tokens"] for p in parts)
    cached = sum(p["prompt_tokens_details"]["cached_tokens"] for p in firsts)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def usage(stats: GenerationStats | None) -> dict[str, Any]:
    p = stats.prompt_tokens if stats else 0
    c = stats.completion_tokens if stats else 0
    cached = stats.cached_tokens if stats else 0
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": cached},  # from the prefix cache, not prefilled
    }


def _token_text(tok: TextTokenizer, token_id: int) -> tuple[str, list[int]]:
    """A token's text and raw bytes (byte-level BPE pieces may be partial UTF-8)."""
    text = tok.decode([token_id])
    piece = tok.tokenizer.id_to_token(token_id) or ""
    if piece and all(c in _BYTE_DECODER for c in piece):
        return text, [_BYTE_DECODER[c] for c in piece]
    return text, list(text.encode("utf-8"))


def _byte_decoder() -> dict[str, int]:
    # GPT-2's printable remapping of bytes used by byte-level BPE vocabularies
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + i): b for i, b in enumerate(others)})
    return table


_BYTE_DECODER = _byte_decoder()


def chat_logprobs(tok: TextTokenizer, lps: list[TokenLogprob]) -> dict[str, Any]:
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text, raw = _token_text(tok, token_id)
        return {"token": text, "logprob": logprob, "bytes": raw}

    content = [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(i, v) for i, v in lp.top]} for lp in lps]
    return {"content": content, "refusal": None}


def completion_logprobs(tok: TextTokenizer, lps: list[TokenLogprob], start_offset: int = 0) -> dict[str, Any]:
    return _logprob_rows(tok, [lp.token_id for lp in lps], list(lps), start_offset)


def prompt_logprobs(tok: TextTokenizer, prompt_ids: list[int], lps: list[TokenLogprob | None] | None) -> dict[str, Any]:
    """An echoed prompt's logprobs in the completions shape: null for the first token (nothing predicts
    it), and for every token when they were not computed."""
    rows: list[TokenLogprob | None] = [None] * len(prompt_ids)
    if lps is not None and len(lps) == len(prompt_ids):
        rows = lps
    return _logprob_rows(tok, prompt_ids, rows, 0)


def _logprob_rows(
    tok: TextTokenizer, ids: list[int], lps: list[TokenLogprob | None], start_offset: int
) -> dict[str, Any]:
    """The completions shape of tokens `ids` and their logprobs (None: null), text offsets from start_offset."""
    tokens, offsets, offset = [], [], start_offset
    for t in ids:
        text = _token_text(tok, t)[0]
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob if lp else None for lp in lps],
        "top_logprobs": [{_token_text(tok, i)[0]: v for i, v in lp.top} if lp else None for lp in lps],
        "text_offset": offsets,
    }


def joined_logprobs(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """Two completions-shaped logprobs one after the other (an echoed prompt, then its completion)."""
    return {k: first[k] + then[k] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


def chat_choice(
    index: int,
    text: str | None,
    finish: str,
    logprobs: dict[str, Any] | None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def chat_completion_of(cid: str, model: str, choices: list[dict[str, Any]], use: dict[str, Any]) -> dict[str, Any]:
    """A chat.completion of several choices (n > 1) and their summed usage."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": use,
    }


def chat_chunk(
    cid: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }


def usage_chunk(cid: str, created: int, model: str, obj: str, stats: GenerationStats | None) -> dict[str, Any]:
    return {"id": cid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage(stats)}


def completion_choice(index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def text_completion(
    cid: str, created: int, model: str, choices: list[dict[str, Any]], use: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": use,
    }
