"""Prompts with tools: a template that knows tools gets them (and tool calls, tool messages) in Hugging
Face's shape; a template that does not (SmolLM2's ChatML) gets our Hermes-style system block, earlier calls
as <tool_call> text and results as <tool_response> in a user turn."""

from __future__ import annotations

import json

from exo_actor.tokenizer import TextTokenizer, render_chat
from exo_actor.tools import Tool, ToolChoice, detect_family, prompt_ids_with_tools
from exo_actor.tools.render import template_messages, tools_system_text
from tests.tiny import CHAT_TEMPLATE, tiny_tokenizer

WEATHER = Tool("get_weather", "The weather", {"type": "object", "properties": {"city": {"type": "string"}}})
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
]
# a Qwen-like template that renders tools, tool calls and tool messages itself
TOOL_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}[tool {{ m.name }}: {{ m.content }}]\n"
    "{% elif m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}\n"
    "{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}"
)


def tokenizer(template: str) -> TextTokenizer:
    return TextTokenizer(tiny_tokenizer(), "<|im_start|>", "<|im_end|>", frozenset({2}), template)


def text_of(template: str, messages: list, tools: list[Tool], choice: str = "auto") -> str:
    tok = tokenizer(template)
    return tok.decode(prompt_ids_with_tools(tok, messages, tools, ToolChoice(choice)))  # type: ignore[arg-type]


def test_a_template_without_tools_gets_the_hermes_block_and_text_turns():
    text = text_of(CHAT_TEMPLATE, HISTORY, [WEATHER])
    system, rest = text.split("user\n", 1)
    assert system.startswith("system\n") and json.dumps(WEATHER.openai()) in system and "<tool_call>" in system
    assert 'assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in rest
    assert "user\n<tool_response>\n22 C\n</tool_response>\n<tool_response>\nsunny\n</tool_response>" in rest
    assert "tool\n" not in rest  # results go in one user turn, not a role the model never saw


def test_an_existing_system_message_gets_the_block_appended():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = text_of(CHAT_TEMPLATE, msgs, [WEATHER])
    assert text.startswith("system\nBe brief.\n\n" + tools_system_text([WEATHER]))


def test_tool_choice_none_leaves_the_tools_out_but_renders_the_history():
    text = text_of(CHAT_TEMPLATE, HISTORY, [WEATHER], "none")
    assert "<tools>" not in text and "<tool_response>\n22 C" in text
    plain = [{"role": "user", "content": "Hi"}]
    tok = tokenizer(CHAT_TEMPLATE)
    assert prompt_ids_with_tools(tok, plain, [WEATHER], ToolChoice("none")) == prompt_ids_with_tools(
        tok, plain, [], ToolChoice("none")
    )


def test_a_template_that_knows_tools_renders_them_itself():
    text = render_chat(TOOL_TEMPLATE, template_messages(TOOL_TEMPLATE, HISTORY), tools=[WEATHER.openai()])
    assert text.startswith("<tools>" + json.dumps(WEATHER.openai()) + "</tools>")  # tojson: no HTML escapes
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in text
    assert "[tool get_weather: 22 C]" in text  # the tool's name found from the call id
    assert "[tool : sunny]" in text  # an id no call had: no name
    assert detect_family(TOOL_TEMPLATE) == "hermes" and detect_family(CHAT_TEMPLATE) == "hermes"


def test_families_from_templates():
    assert detect_family("{{ '<|python_tag|>' }}{% if tools %}{% endif %}") == "llama3"
    assert detect_family("{% if message.role == 'ipython' %}{% endif %}") == "llama3"
    assert detect_family("{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}{% endif %}") == "generic"
    assert detect_family(None) == "hermes"
