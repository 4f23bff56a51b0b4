"""Constrained decoding: a request's output follows a grammar (a JSON schema for `response_format`).

The grammar engine is llguidance (Microsoft; the engine behind llama.cpp's and vLLM's structured output):
it compiles a JSON schema to a grammar over the model's own tokens and gives, at each step, the set of
tokens that keep the output a valid prefix, in tens of microseconds for a 49k vocabulary. We chose it over
xgrammar and outlines-core because it installs as one wheel with no torch requirement, works from the
`tokenizers` JSON we already hold, and its matcher rolls back, which speculative decoding needs.

A Constraint follows one request: before a pass it gives the allowed tokens at each position the pass
decides (the next token, and after each drafted token: drafts outside the grammar are cut first, so a
draft is rejected exactly like a token the target would not choose); after the pass it consumes the tokens
chosen. The masks are applied where the tokens are chosen (sampling/decide.py): disallowed tokens get
-inf before the filters, the draw and the acceptance rule, so sampling stays exact within the grammar.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidRequestError

log = logging.getLogger(__name__)


class GrammarError(InvalidRequestError):
    """A schema or grammar that cannot constrain decoding (the message says why)."""


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise GrammarError(
            "structured output needs the llguidance package: pip install llguidance (or exo-actor[structured])"
        ) from None
    return llguidance


def json_grammar(schema: dict[str, Any] | None) -> str:
    """The grammar of JSON following `schema` (None: any JSON object), compact separators; GrammarError for a
    schema llguidance cannot compile."""
    llg = _llguidance()
    try:
        grammar: str = llg.LLMatcher.grammar_from_json_schema(
            schema if schema is not None else {"type": "object"}, overrides={"whitespace_flexible": False}
        )
    except (ValueError, TypeError) as exc:
        raise GrammarError(f"the JSON schema cannot be used: {exc}") from None
    error = llg.LLMatcher.validate_grammar(grammar)
    if error and not error.startswith("WARNING"):
        raise GrammarError(f"the JSON schema cannot be used: {error}")
    return grammar


_TOKENIZERS: dict[int, tuple[object, Any]] = {}  # id(TextTokenizer) -> (it, its LLTokenizer)
_LOCK = threading.Lock()


def _llg_tokenizer(tokenizer: Any) -> Any:
    """llguidance's view of a TextTokenizer (built once per tokenizer: ~0.2 s for 49k tokens)."""
    with _LOCK:
        found = _TOKENIZERS.get(id(tokenizer))
        if found is not None and found[0] is tokenizer:
            return found[1]
        llg = _llguidance()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "tokenizer.json"
            path.write_text(tokenizer.tokenizer.to_str())
            llt = llg.LLTokenizer(str(path), eos_token=sorted(tokenizer.stop_ids) or None)
        _TOKENIZERS[id(tokenizer)] = (tokenizer, llt)
        return llt


class Constraint:
    """One request's grammar state (see the module docstring)."""

    def __init__(self, grammar: str, tokenizer: Any) -> None:
        llg = _llguidance()
        self.llt = _llg_tokenizer(tokenizer)
        self.stop_ids = frozenset(tokenizer.stop_ids)
        self.matcher = llg.LLMatcher(self.llt, grammar, log_level=0)
        if self.matcher.is_error():
            raise GrammarError(f"the grammar cannot be used: {self.matcher.get_error()}")

    def _allowed(self) -> np.ndarray:
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[: self.llt.vocab_size].astype(bool)

    def plan(self, drafts: Sequence[int]) -> tuple[list[int], np.ndarray]:
        """The drafts up to the first one the grammar refuses, and the allowed tokens [len + 1, vocab] at
        each position the pass decides (the matcher is left as it was)."""
        rows = [self._allowed()]
        kept: list[int] = []
        for t in drafts:
            if not (0 <= t < rows[-1].size and rows[-1][t]) or t in self.stop_ids:
                break
            if not self.matcher.consume_token(int(t)):
                break
            kept.append(int(t))
            rows.append(self._allowed())
        if kept:
            self.matcher.rollback(len(kept))
        return kept, np.stack(rows)

    def advance(self, tokens: Sequence[int]) -> None:
        """Consume the tokens a pass chose (an end-of-sequence token ends the request: not consumed)."""
        for t in tokens:
            if t in self.stop_ids:
                return
            if not self.matcher.consume_token(int(t)):
                log.warning("the grammar refused token %d it allowed: %s", t, self.matcher.get_error())
                return

    @property
    def done(self) -> bool:
        """The output is complete: the grammar accepts nothing more."""
        return bool(self.matcher.is_stopped())


def response_format_grammar(value: Any) -> str | None:
    """OpenAI's `response_format` -> a grammar (None for text); GrammarError naming what is wrong."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise GrammarError("'response_format' must be an object with a 'type'")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return json_grammar(None)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise GrammarError("'response_format.json_schema' must be an object with a 'name' and a 'schema'")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise GrammarError("'response_format.json_schema.schema' must be a JSON schema object")
        return json_grammar(schema)
    raise GrammarError(f"'response_format.type' must be text, json_object or json_schema, got {json.dumps(kind)}")
