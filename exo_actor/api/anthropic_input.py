"""Anthropic Messages requests in the gateway's terms: `system` and `messages` (text, `tool_use` and
`tool_result` blocks) as Hugging Face-shaped chat messages (assistant `tool_calls` with arguments as dicts,
`tool` messages with `tool_call_id`), `tools` and `tool_choice` as exo_actor.tools values.

Every bad field is one 400 whose message starts with the field's path (`messages[1].content[0].tool_use_id`)."""

from __future__ import annotations

import uuid
from typing import Any

from ..tools import Tool, ToolCall, ToolChoice, ToolSpecError, parse_openai_tools
from .errors import ApiError, invalid

SKIPPED_BLOCKS = ("thinking", "redacted_thinking")  # earlier reasoning: Anthropic drops it from the prompt too


def new_tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def tool_use_block(call: ToolCall) -> dict[str, Any]:
    """A call as the response's `tool_use` content block (a fresh `toolu_` id)."""
    return {"type": "tool_use", "id": new_tool_use_id(), "name": call.name, "input": call.arguments}


def tool_error(exc: ToolSpecError) -> ApiError:
    """exo_actor.tools' error (named in OpenAI's shape, `tools[0].function.parameters`) in Anthropic's names."""

    def named(text: str) -> str:
        return text.replace(".function.parameters", ".input_schema").replace(".function.", ".")

    return invalid(named(str(exc)), named(exc.param))


def text_of(content: Any, where: str) -> str:
    """A string, or text blocks joined (the content of `system`, a text-only turn or a tool_result)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(block, f"{where}[{j}]", "text blocks") for j, block in enumerate(content))
    raise invalid(f"{where} must be a string or a list of text blocks", where)


def _kind(block: Any, at: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise invalid(f"{at} must be a content block (an object with a 'type')", at)
    return str(block["type"])


def _text(block: Any, at: str, takes: str) -> str:
    kind = _kind(block, at)
    if kind != "text":
        raise invalid(f"{at}: only {takes} are supported here (this model reads text only), got {kind!r}", at)
    if not isinstance(block.get("text"), str):
        raise invalid(f"{at}.text must be a string", f"{at}.text")
    return str(block["text"])


def _tool_use(block: dict[str, Any], at: str, known: dict[str, str]) -> dict[str, Any]:
    uid, name, args = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(uid, str) or not uid:
        raise invalid(f"{at}.id must be a non-empty string (the tool_use id)", f"{at}.id")
    if uid in known:
        raise invalid(f"{at}.id {uid!r} is used by an earlier tool_use block", f"{at}.id")
    if not isinstance(name, str) or not name:
        raise invalid(f"{at}.name must be a non-empty string (the tool's name)", f"{at}.name")
    if not isinstance(args, dict):
        raise invalid(f"{at}.input must be an object (the tool's arguments)", f"{at}.input")
    known[uid] = name
    return {"id": uid, "type": "function", "function": {"name": name, "arguments": args}}


def _assistant(content: list[Any], where: str, known: dict[str, str]) -> list[dict[str, Any]]:
    texts, calls = [], []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = _kind(block, at)
        if kind == "tool_use":
            calls.append(_tool_use(block, at, known))
        elif kind not in SKIPPED_BLOCKS:
            texts.append(_text(block, at, "text blocks and tool_use blocks"))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tool_result(block: dict[str, Any], at: str, known: dict[str, str]) -> dict[str, Any]:
    uid = block.get("tool_use_id")
    if not isinstance(uid, str) or not uid:
        param = f"{at}.tool_use_id"
        raise invalid(f"{param} must be a non-empty string (the id of the tool_use it answers)", param)
    if uid not in known:
        raise invalid(
            f"{at}.tool_use_id {uid!r} matches no tool_use block of an earlier assistant turn", f"{at}.tool_use_id"
        )
    raw = block.get("content", "")
    if isinstance(raw, list):
        text = "".join(_text(b, f"{at}.content[{k}]", "text blocks") for k, b in enumerate(raw))
    elif isinstance(raw, str):
        text = raw
    else:
        raise invalid(f"{at}.content must be a string or a list of text blocks", f"{at}.content")
    is_error = block.get("is_error", False)
    if not isinstance(is_error, bool):
        raise invalid(f"{at}.is_error must be true or false", f"{at}.is_error")
    if is_error:  # the model should know the call failed, not read the message as a result
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": uid, "name": known[uid], "content": text}


def _user(content: list[Any], where: str, known: dict[str, str]) -> list[dict[str, Any]]:
    """A user turn: its tool_results as `tool` messages and its text as user messages, in their order."""
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        if _kind(block, at) == "tool_result":
            if texts:
                out.append({"role": "user", "content": "".join(texts)})
                texts = []
            out.append(_tool_result(block, at, known))
        else:
            texts.append(_text(block, at, "text blocks and tool_result blocks"))
    if texts or not out:
        out.append({"role": "user", "content": "".join(texts)})
    return out


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`system` and `messages` as the chat template's messages."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty list", "messages")
    chat: list[dict[str, Any]] = []
    if body.get("system") is not None:
        chat.append({"role": "system", "content": text_of(body["system"], "system")})
    known: dict[str, str] = {}  # tool_use id -> the tool's name
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise invalid(f"messages[{i}].role must be user or assistant", f"messages[{i}].role")
        content, where = m.get("content"), f"messages[{i}].content"
        if isinstance(content, str):
            chat.append({"role": m["role"], "content": content})
        elif isinstance(content, list):
            chat.extend((_assistant if m["role"] == "assistant" else _user)(content, where, known))
        else:
            raise invalid(f"{where} must be a string or a list of content blocks", where)
    return chat


def _chat_shaped(raw: Any, at: str) -> dict[str, Any]:
    """One Anthropic tool ({name, description, input_schema}) in OpenAI's shape, for exo_actor.tools' checks."""
    if not isinstance(raw, dict):
        raise invalid(f"{at} must be an object with 'name', 'description' and 'input_schema'", at)
    kind = raw.get("type")
    if kind not in (None, "custom"):
        raise invalid(
            f"{at}.type {kind!r}: Anthropic's server tools are not supported; give client tools "
            "({name, description, input_schema})",
            f"{at}.type",
        )
    if "input_schema" not in raw:
        raise invalid(f"{at}.input_schema is required (the JSON schema of the tool's input)", f"{at}.input_schema")
    fn = {"name": raw.get("name"), "description": raw.get("description"), "parameters": raw["input_schema"]}
    return {"type": "function", "function": fn}


def _choice(raw: Any, tools: list[Tool]) -> tuple[ToolChoice, bool]:
    if raw is None:
        return ToolChoice("auto" if tools else "none"), True
    if not isinstance(raw, dict):
        raise invalid("tool_choice must be an object whose type is 'auto', 'any', 'tool' or 'none'", "tool_choice")
    kind = raw.get("type")
    disable = raw.get("disable_parallel_tool_use", False)
    if not isinstance(disable, bool):
        param = "tool_choice.disable_parallel_tool_use"
        raise invalid(f"{param} must be true or false", param)
    if kind not in ("auto", "any", "tool", "none"):
        raise invalid(f"tool_choice.type must be 'auto', 'any', 'tool' or 'none', got {kind!r}", "tool_choice.type")
    if kind in ("any", "tool") and not tools:
        raise invalid(f"tool_choice.type is {kind!r} but no tools were given", "tool_choice.type")
    if kind == "tool":
        name = raw.get("name")
        if name not in {t.name for t in tools}:
            raise invalid(f"tool_choice.name must name one of the tools, got {name!r}", "tool_choice.name")
        return ToolChoice("function", name), not disable
    mode = {"any": "required", "none": "none"}.get(kind, "auto" if tools else "none")
    return ToolChoice(mode), not disable  # type: ignore[arg-type]


def parse_tools(body: dict[str, Any]) -> tuple[list[Tool], ToolChoice, bool]:
    """(tools, tool_choice, parallel): `any` is a required call, `tool` a named one, both enforced by a grammar;
    disable_parallel_tool_use allows one call at most."""
    raw = body.get("tools")
    if raw is not None and not isinstance(raw, list):
        raise invalid("tools must be a list of tools ({name, description, input_schema})", "tools")
    try:
        tools = parse_openai_tools([_chat_shaped(t, f"tools[{i}]") for i, t in enumerate(raw or [])])
    except ToolSpecError as exc:
        raise tool_error(exc) from None
    choice, parallel = _choice(body.get("tool_choice"), tools)
    return tools, choice, parallel
