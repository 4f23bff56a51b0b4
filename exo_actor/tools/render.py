"""A conversation with tools -> prompt ids, through the model's own chat template where it knows tools,
and through our Hermes-style rendering where it does not (tools described in the system message, earlier
calls written as `<tool_call>` text, tool results as `<tool_response>` in a user turn)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..tokenizer import TextTokenizer, chat_prompt_ids
from .formats import detect_family, format_calls, renders_tool_calls, renders_tool_role, renders_tools
from .spec import Tool, ToolCall, ToolChoice

_INSTRUCTIONS = (
    "You may call one or more functions to assist with the user query. The functions are described in JSON "
    "within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "To call a function, answer with a JSON object with the function name and its arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}'
    "\n</tool_call>"
)


def tools_system_text(tools: Sequence[Tool]) -> str:
    """The system-message block that describes `tools` to a model whose template cannot."""
    return _INSTRUCTIONS.format(tools="\n".join(json.dumps(t.openai(), ensure_ascii=False) for t in tools))


def has_tool_messages(messages: Sequence[dict[str, Any]]) -> bool:
    return any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def _calls(m: dict[str, Any]) -> list[ToolCall]:
    return [ToolCall(c["function"]["name"], c["function"]["arguments"], c["id"]) for c in m.get("tool_calls") or []]


def template_messages(template: str | None, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages a template can render: tool calls and tool results it does not know become text."""
    family = detect_family(template)
    own_calls, own_role = renders_tool_calls(template), renders_tool_role(template)
    names: dict[str, str] = {}  # tool_call_id -> function name (some templates print the tool's name)
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            names.update({c.id: c.name for c in _calls(m)})
            if not own_calls:
                text = "\n".join(p for p in (m.get("content") or "", format_calls(_calls(m), family)) if p)
                out.append({"role": "assistant", "content": text})
                continue
        if m["role"] == "tool":
            if own_role:
                out.append({**m, "name": m.get("name") or names.get(m["tool_call_id"], "")})
                continue
            response = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("_tool_results"):  # consecutive results share one user turn
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool_results": True})
            continue
        out.append(dict(m))
    for m in out:
        m.pop("_tool_results", None)
    return out


def _with_tools_block(messages: list[dict[str, Any]], tools: Sequence[Tool]) -> list[dict[str, Any]]:
    block = tools_system_text(tools)
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{block}" if first["content"] else block}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def prompt_ids_with_tools(
    tokenizer: TextTokenizer, messages: Sequence[dict[str, Any]], tools: Sequence[Tool], choice: ToolChoice
) -> list[int]:
    """Prompt ids of a conversation that may offer tools and carry tool calls and results (messages in the
    Hugging Face shape: assistant `tool_calls` with arguments as dicts, `tool` messages with `tool_call_id`).
    With no tools offered (none given, or tool_choice none) the tools are left out of the prompt."""
    offered = list(tools) if choice.mode != "none" else []
    if not offered and not has_tool_messages(messages):
        return chat_prompt_ids(tokenizer, list(messages))  # the plain path, unchanged
    template = tokenizer.chat_template
    msgs = template_messages(template, messages)
    if not offered:
        return chat_prompt_ids(tokenizer, msgs)
    if renders_tools(template):
        return chat_prompt_ids(tokenizer, msgs, tools=[t.openai() for t in offered])
    return chat_prompt_ids(tokenizer, _with_tools_block(msgs, offered))
