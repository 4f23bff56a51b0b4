"""The vocabulary a GGUF stores as `tokenizer.ggml.*` metadata, read and checked once."""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..errors import WeightsError

log = logging.getLogger(__name__)


class TokenType(IntEnum):
    """llama.cpp's token types (`tokenizer.ggml.token_type`), as its converter writes them."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


@dataclass(frozen=True)
class GGUFVocab:
    """Parallel token arrays of a GGUF vocabulary plus its special-token ids."""

    tokens: list[str]
    types: list[TokenType]
    scores: list[float] | None
    merges: list[tuple[str, str]] | None
    special_ids: dict[str, int]  # "bos", "eos", "unknown", "padding", "eot", "eom" -> id

    def special_text(self, name: str) -> str | None:
        """The text of special token `name` (e.g. "bos"), or None when the file names none."""
        i = self.special_ids.get(name)
        return self.tokens[i] if i is not None else None


_SPECIAL_KEYS = ("bos", "eos", "unknown", "padding", "eot", "eom")


def _array(fields: dict[str, Any], key: str, n: int | None) -> list[Any] | None:
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise WeightsError(f"GGUF metadata {key} is not an array")
    if n is not None and len(value) != n:
        raise WeightsError(f"GGUF metadata {key} has {len(value)} entries but tokenizer.ggml.tokens has {n}")
    return list(value)


def read_vocab(fields: dict[str, Any], *, need_scores: bool = False) -> GGUFVocab:
    """Check and collect the `tokenizer.ggml.*` arrays; one WeightsError line names what is wrong."""
    tokens = _array(fields, "tokenizer.ggml.tokens", None)
    if not tokens:
        raise WeightsError("GGUF metadata has no tokenizer.ggml.tokens: the file carries no vocabulary")
    if not all(isinstance(t, str) for t in tokens):
        raise WeightsError("GGUF metadata tokenizer.ggml.tokens holds non-text entries")
    n = len(tokens)
    raw_types = _array(fields, "tokenizer.ggml.token_type", n)
    try:
        types = [TokenType(int(t)) for t in raw_types] if raw_types is not None else [TokenType.NORMAL] * n
    except (TypeError, ValueError):
        bad = next(t for t in raw_types or [] if not isinstance(t, int) or t not in TokenType._value2member_map_)
        raise WeightsError(f"GGUF metadata tokenizer.ggml.token_type holds {bad!r}, not a token type 0-6") from None
    raw_scores = _array(fields, "tokenizer.ggml.scores", n)
    raw_merges = _array(fields, "tokenizer.ggml.merges", None)
    merges = None
    if raw_merges is not None:
        merges = []
        for m in raw_merges:
            parts = m.split(" ", 1) if isinstance(m, str) else []
            if len(parts) != 2:
                raise WeightsError(f"GGUF metadata tokenizer.ggml.merges holds {m!r}, not two tokens with a space")
            merges.append((parts[0], parts[1]))
    if need_scores and raw_scores is None and merges is None:
        raise WeightsError(
            "GGUF SentencePiece vocabulary has neither tokenizer.ggml.scores nor tokenizer.ggml.merges: "
            "the merge order cannot be known"
        )
    try:
        scores = [float(s) for s in raw_scores] if raw_scores is not None else None
    except (TypeError, ValueError):
        raise WeightsError("GGUF metadata tokenizer.ggml.scores holds non-numbers") from None
    special_ids: dict[str, int] = {}
    for name in _SPECIAL_KEYS:
        key = f"tokenizer.ggml.{name}_token_id"
        raw = fields.get(key)
        if raw is None:
            continue
        try:
            i = operator.index(raw)
        except TypeError:
            raise WeightsError(f"GGUF metadata {key} = {raw!r} is not a token id") from None
        if not 0 <= i < n:  # llama.cpp warns and ignores such an id too
            log.warning("GGUF metadata %s = %d is outside the vocabulary of %d tokens; ignored", key, i, n)
            continue
        special_ids[name] = i
    return GGUFVocab(tokens=tokens, types=types, scores=scores, merges=merges, special_ids=special_ids)
