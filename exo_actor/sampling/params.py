"""SamplingParams: validated generation settings shared by the CLI, the gateway and the router."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidRequestError

MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20
MAX_DRAFT_TOKENS = 16
MAX_LOGIT_BIAS = 300  # tokens a request may bias (OpenAI's limit)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 is greedy; top_k 0, top_p 1 and min_p 0 disable filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence of a generated token
    logprobs: int | None = None  # report the chosen token's logprob and this many alternatives
    draft_tokens: int | None = None  # speculative decoding: longest draft (None: the server's; 0: off)
    grammar: str | None = None  # constrained decoding: an llguidance grammar (sampling/grammar.py)
    logit_bias: tuple[tuple[int, float], ...] = ()  # OpenAI's: (token, bias in [-100, 100]) added to the logits
    min_tokens: int = 0  # end-of-sequence tokens are refused until this many tokens are generated
    ignore_eos: bool = False  # end-of-sequence tokens are refused throughout (only max_tokens or a stop ends it)
    prompt_logprobs: int | None = None  # report each prompt token's logprob and this many alternatives

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise InvalidRequestError(msg)

        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(f"{name} must be a finite number, got {v!r}")
        for name in ("top_k", "max_tokens"):
            v = getattr(self, name)
            if not _is_int(v):
                bad(f"{name} must be an integer, got {v!r}")
        if not 0.0 <= self.temperature <= 100.0:
            bad(f"temperature must be between 0 and 100, got {self.temperature}")
        if self.top_k < 0:
            bad(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            bad(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                bad(f"{name} must be between -2 and 2, got {getattr(self, name)}")
        if self.logprobs is not None and (
            isinstance(self.logprobs, bool)
            or not isinstance(self.logprobs, int)
            or not 0 <= self.logprobs <= MAX_TOP_LOGPROBS
        ):
            bad(f"top_logprobs must be an integer between 0 and {MAX_TOP_LOGPROBS}, got {self.logprobs!r}")
        if self.draft_tokens is not None and not (
            _is_int(self.draft_tokens) and 0 <= self.draft_tokens <= MAX_DRAFT_TOKENS
        ):
            bad(f"draft_tokens must be an integer between 0 and {MAX_DRAFT_TOKENS}, got {self.draft_tokens!r}")
        if self.max_tokens < 1:
            bad(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.seed is not None and not (_is_int(self.seed) and self.seed >= 0):
            bad(f"seed must be a non-negative integer, got {self.seed!r}")
        if len(self.stop) > MAX_STOP_STRINGS:
            bad(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(self.stop)}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop strings must be non-empty strings")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar):
            bad("a grammar is a non-empty string")
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            bad(f"logit_bias takes at most {MAX_LOGIT_BIAS} tokens, got {len(self.logit_bias)}")
        for item in self.logit_bias:
            if not (isinstance(item, tuple) and len(item) == 2 and _is_int(item[0]) and item[0] >= 0):
                bad(f"logit_bias entries are (token id, bias) pairs, got {item!r}")
            v = item[1]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -100.0 <= v <= 100.0:
                bad(f"logit_bias values must be numbers between -100 and 100, got {v!r}")
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            bad(f"min_tokens must be an integer between 0 and max_tokens ({self.max_tokens}), got {self.min_tokens!r}")
        if self.prompt_logprobs is not None and not (
            _is_int(self.prompt_logprobs) and 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS
        ):
            bad(f"prompt logprobs take between 0 and {MAX_TOP_LOGPROBS} alternatives, got {self.prompt_logprobs!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
