"""A model's output -> (content, tool calls), per family (formats.py). Text that is not a well-formed
call of a known tool stays content: parsing never raises."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .formats import HERMES_CLOSE, HERMES_OPEN, PYTHON_TAG, Family
from .spec import Tool, ToolCall

_BLOCK = re.compile(re.escape(HERMES_OPEN) + r"(.*?)(?:" + re.escape(HERMES_CLOSE) + r"|\Z)", re.DOTALL)
_DECODER = json.JSONDecoder()


def call_from(obj: Any, names: set[str]) -> ToolCall | None:
    """A call from a parsed JSON value ({"name", "arguments" | "parameters"}, or OpenAI's {"function": ...})."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict) and "name" not in obj:
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string, as OpenAI sends them
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return ToolCall(name, args) if isinstance(args, dict) else None


def calls_from_json(text: str, names: set[str]) -> list[ToolCall] | None:
    """Calls from text that is exactly one JSON call object or a non-empty list of them; None otherwise."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return calls_from_value(value, names)


def calls_from_value(value: Any, names: set[str]) -> list[ToolCall] | None:
    """Calls from a parsed JSON call object or a non-empty list of them; None otherwise."""
    items = value if isinstance(value, list) else [value]
    calls = [call_from(v, names) for v in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def _json_sequence(text: str, names: set[str]) -> list[ToolCall] | None:
    """Llama 3's calls: JSON objects one after the other, separated by ';' or whitespace."""
    calls: list[ToolCall] = []
    i, n = 0, len(text)
    while True:
        while i < n and (text[i].isspace() or text[i] == ";"):
            i += 1
        if i == n:
            return calls or None
        try:
            value, i = _DECODER.raw_decode(text, i)
        except ValueError:
            return None
        found = calls_from_value(value, names)
        if found is None:
            return None
        calls.extend(found)


def hermes_block(inner: str, names: set[str]) -> list[ToolCall] | None:
    """The calls in one `<tool_call>` block: a call object, or a list of them (SmolLM2)."""
    return calls_from_json(inner.strip(), names)


def _hermes(text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
    outside, calls, at = [], [], 0
    for m in _BLOCK.finditer(text):
        found = hermes_block(m.group(1), names)
        if found is None:
            continue  # a malformed block stays in the content
        outside.append(text[at : m.start()])
        calls.extend(found)
        at = m.end()
    outside.append(text[at:])
    return "".join(outside), calls


def _llama3(text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
    before, tag, after = text.partition(PYTHON_TAG)
    if not tag:
        before, after = "", text
    if not tag and not text.lstrip().startswith("{"):
        return text, []
    calls = _json_sequence(after, names)
    return (before, calls) if calls else (text, [])


def _generic(text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
    calls = calls_from_json(text.strip(), names) if text.lstrip()[:1] in ("{", "[") else None
    return ("", calls) if calls else (text, [])


def parse_tool_calls(text: str, family: Family, tools: Sequence[Tool]) -> tuple[str | None, list[ToolCall]]:
    """(content, calls): the calls of known tools found in `text` in the family's format (or, failing that,
    the whole text as one generic JSON call or list), and the text around them (None when only calls)."""
    names = {t.name for t in tools}
    content, calls = text, list[ToolCall]()
    if names:
        if family == "hermes":
            content, calls = _hermes(text, names)
        elif family == "llama3":
            content, calls = _llama3(text, names)
        if not calls:
            content, calls = _generic(text, names)
    if not calls:
        return text, []
    return content.strip() or None, calls
