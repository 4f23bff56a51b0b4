"""Tool calling (function calling), independent of any one API's request shape.

    tools = parse_openai_tools(body.get("tools"))                   # list[Tool]; ToolSpecError names `param`
    choice = parse_openai_tool_choice(body.get("tool_choice"), tools)  # ToolChoice: none/auto/required/function
    use = ToolUse.for_model(tokenizer, tools, choice, parallel=True)
    ids = use.prompt_ids(tokenizer, messages)   # the chat template renders tools, or our Hermes-style block
    grammar = use.grammar()                      # llguidance grammar for required/named calls, else None
    content, calls = use.parse(text)             # (text outside the calls or None, list[ToolCall])
    streamer = use.streamer()                    # ToolCallStreamer: feed(delta) / finish() -> StreamEvents

Lower-level pieces: `prompt_ids_with_tools` (render.py), `parse_tool_calls(text, family, tools)` (parse.py),
`call_grammar(tools, choice, parallel, family)` (grammar.py), `detect_family(template)` (formats.py).
Messages use the Hugging Face shape: assistant messages may carry `tool_calls` (arguments as dicts),
`tool` messages carry `tool_call_id` and `content`. Other endpoints (Anthropic tool_use/tool_result, Ollama
tools, the Responses API's function tools) build Tools and these messages from their own shapes.
"""

from __future__ import annotations

from .formats import Family, detect_family
from .grammar import call_grammar
from .parse import parse_tool_calls
from .render import prompt_ids_with_tools
from .spec import (
    Tool,
    ToolCall,
    ToolChoice,
    ToolSpecError,
    parse_openai_tool_calls,
    parse_openai_tool_choice,
    parse_openai_tools,
)
from .stream import StreamEvent, ToolCallStreamer
from .use import ToolUse

__all__ = [
    "Family",
    "StreamEvent",
    "Tool",
    "ToolCall",
    "ToolCallStreamer",
    "ToolChoice",
    "ToolSpecError",
    "ToolUse",
    "call_grammar",
    "detect_family",
    "parse_openai_tool_calls",
    "parse_openai_tool_choice",
    "parse_openai_tools",
    "parse_tool_calls",
    "prompt_ids_with_tools",
]
