"""Chat templates render exactly, and template errors become clear errors."""

from __future__ import annotations

import pytest

from exo_actor.errors import InvalidRequestError, UnsupportedModelError
from exo_actor.tokenizer import render_chat
from tests.tiny import CHAT_TEMPLATE


def test_renders_messages_and_generation_prompt():
    text = render_chat(CHAT_TEMPLATE, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_template_helpers_and_errors():
    tpl = "{% if messages|length > 1 %}{{ raise_exception('only one message') }}{% endif %}{{ bos_token }}x"
    assert render_chat(tpl, [{"role": "user", "content": "a"}], bos_token="<s>") == "<s>x"
    with pytest.raises(InvalidRequestError, match="only one message"):
        render_chat(tpl, [{"role": "user", "content": "a"}] * 2)
    with pytest.raises(UnsupportedModelError, match="--raw"):
        render_chat(None, [{"role": "user", "content": "a"}])
    with pytest.raises(UnsupportedModelError, match="compile"):
        render_chat("{% for %}", [])


def test_sandbox_blocks_attribute_escapes():
    with pytest.raises(InvalidRequestError):
        render_chat("{{ messages.__class__.__mro__[1].__subclasses__() }}", [])
