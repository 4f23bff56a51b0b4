"""The grammar of a tool call, for `tool_choice` required or a named function: the output IS a call (or
several, with parallel_tool_calls) in the family's format, its arguments valid for the function's schema.

Written in llguidance's Lark dialect: the call objects are `%json {schema}` (llguidance compiles the JSON
schema inline), the family's framing text around them is plain Lark."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..sampling.grammar import GrammarError, _llguidance
from .formats import HERMES_CLOSE, HERMES_OPEN, Family, arguments_key
from .spec import Tool, ToolChoice, ToolSpecError

MAX_PARALLEL_CALLS = 8  # a bound, so a model that would repeat calls forever still ends in a whole call


def _call_schema(tool: Tool, family: Family) -> dict[str, Any]:
    key = arguments_key(family)
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, key: tool.parameters},
        "required": ["name", key],
        "additionalProperties": False,
        "x-guidance": {"whitespace_flexible": False},  # compact JSON: no room to wander in whitespace
    }


def _lark_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a Lark string literal


def _frame(family: Family, parallel: bool) -> str:
    """The Lark rule `start` around the rule `call`."""
    more = f"{{0,{MAX_PARALLEL_CALLS - 1}}}"
    if family == "hermes":
        one = f"{_lark_string(HERMES_OPEN + chr(10))} call {_lark_string(chr(10) + HERMES_CLOSE)}"
        return f"start: one ({_lark_string(chr(10))} one){more}\none: {one}" if parallel else f"start: {one}"
    if family == "llama3":
        return f'start: call ("; " call){more}' if parallel else "start: call"
    return f'start: "[" call (", " call){more} "]"' if parallel else "start: call"


def call_grammar(tools: Sequence[Tool], choice: ToolChoice, parallel: bool, family: Family) -> str:
    """An llguidance grammar (for SamplingParams.grammar) whose every sentence is a valid call of one of
    `tools` (or one to MAX_PARALLEL_CALLS calls with `parallel` and `required`; exactly one call of
    `choice.name` for a named function); ToolSpecError naming the schema llguidance refuses."""
    llg = _llguidance()
    chosen = [(i, t) for i, t in enumerate(tools) if choice.mode != "function" or t.name == choice.name]
    if not chosen:
        raise ToolSpecError("no tool can be called with this 'tool_choice'", "tool_choice")
    rules = [f"call_{i}: %json {json.dumps(_call_schema(t, family))}" for i, t in chosen]
    several = parallel and choice.mode == "required"  # a named function is called once (as vLLM does)
    lark = "\n".join([_frame(family, several), "call: " + " | ".join(f"call_{i}" for i, _ in chosen), *rules])
    try:
        grammar: str = llg.LLMatcher.grammar_from_lark(lark)
    except (ValueError, TypeError) as exc:
        raise ToolSpecError(f"the tools cannot be used for constrained decoding: {exc}", "tools") from None
    error = llg.LLMatcher.validate_grammar(grammar)
    if error and not error.startswith("WARNING"):
        error = error.splitlines()[0]
        for i, t in chosen:  # name the function whose schema fails
            alone = llg.LLMatcher.grammar_from_lark(f"start: %json {json.dumps(_call_schema(t, family))}")
            if llg.LLMatcher.validate_grammar(alone):
                raise ToolSpecError(
                    f"'tools[{i}].function.parameters' cannot be used as a JSON schema: {error}",
                    f"tools[{i}].function.parameters",
                )
        raise ToolSpecError(f"the tools cannot be used for constrained decoding: {error}", "tools")
    return grammar


__all__ = ["GrammarError", "MAX_PARALLEL_CALLS", "call_grammar"]
