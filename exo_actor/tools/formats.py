"""Tool-call formats by model family: which one a chat template speaks, and one call written in it.

- hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (Hermes, Qwen 2/2.5/3; SmolLM2
  writes a JSON list of calls in one block). Also what we render for templates that know no tools.
- llama3: Llama 3.1-3.3's JSON `{"name": ..., "parameters": {...}}`, after `<|python_tag|>` or bare.
- generic: the whole answer is one JSON call object (`arguments` or `parameters`) or a list of them
  (templates that render tools in a format we do not know, e.g. Mistral's `[TOOL_CALLS]`, whose special
  token the detokenizer drops).
"""

from __future__ import annotations

import json
import re
from typing import Literal

from .spec import ToolCall

Family = Literal["hermes", "llama3", "generic"]

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
_TOOL_ROLE = re.compile(r"""['"](tool|ipython)['"]""")


def renders_tools(template: str | None) -> bool:
    """The template reads the `tools` variable (Hugging Face's convention for tool definitions)."""
    return bool(template) and re.search(r"\btools\b", template or "") is not None


def renders_tool_calls(template: str | None) -> bool:
    """The template renders assistant messages' `tool_calls` itself."""
    return bool(template) and "tool_calls" in (template or "")


def renders_tool_role(template: str | None) -> bool:
    """The template handles `tool` messages by name (not just any role pasted in)."""
    return bool(template) and _TOOL_ROLE.search(template or "") is not None


def detect_family(template: str | None) -> Family:
    """The tool-call format a model's chat template asks for; templates without tools get ours (hermes)."""
    text = template or ""
    if HERMES_OPEN in text:
        return "hermes"
    if PYTHON_TAG in text or "ipython" in text:
        return "llama3"
    if renders_tools(text):
        return "generic"
    return "hermes"


def arguments_key(family: Family) -> str:
    return "parameters" if family == "llama3" else "arguments"


def call_json(call: ToolCall, family: Family) -> str:
    """One call as the JSON object the family writes."""
    return json.dumps({"name": call.name, arguments_key(family): call.arguments}, ensure_ascii=False)


def format_calls(calls: list[ToolCall], family: Family) -> str:
    """Earlier assistant calls written as the model would have written them (for templates that cannot)."""
    if family == "hermes":
        return "\n".join(f"{HERMES_OPEN}\n{call_json(c, family)}\n{HERMES_CLOSE}" for c in calls)
    if family == "llama3":
        return "; ".join(call_json(c, family) for c in calls)
    if len(calls) == 1:
        return call_json(calls[0], family)
    return "[" + ", ".join(call_json(c, family) for c in calls) + "]"
