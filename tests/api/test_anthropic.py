"""Anthropic's Messages API through the official `anthropic` SDK against a real uvicorn gateway (tiny model):
messages and streaming, system prompts, stop sequences, usage; errors in Anthropic's shape."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import require


@pytest.fixture(scope="module")
def client(tiny_server):  # the SDK (2.x) takes sampling fields through extra_body
    anthropic = require("anthropic")
    return anthropic.Anthropic(base_url=tiny_server.url, api_key="unused", max_retries=0)


def model(tiny_server) -> str:  # type: ignore[no-untyped-def]
    return str(httpx.get(tiny_server.url + "/v1/models", timeout=30).json()["data"][0]["id"])


def test_a_message_and_the_same_message_streamed(client, tiny_server):
    name = model(tiny_server)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    r = client.messages.create(
        model=name, max_tokens=12, messages=msgs, system="be brief", extra_body={"temperature": 0}
    )
    assert r.type == "message" and r.role == "assistant" and r.content[0].type == "text"
    assert r.stop_reason in ("end_turn", "max_tokens") and 0 < r.usage.output_tokens <= 12 and r.usage.input_tokens > 0
    with client.messages.stream(
        model=name, max_tokens=12, messages=msgs, system="be brief", extra_body={"temperature": 0}
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == r.content[0].text == final.content[0].text  # greedy: the same text either way
    assert final.stop_reason == r.stop_reason and final.usage.output_tokens == r.usage.output_tokens


def test_max_tokens_is_reported(client, tiny_server):
    r = client.messages.create(
        model=model(tiny_server),
        max_tokens=3,
        messages=[{"role": "user", "content": "tell me a story"}],
        extra_body={"temperature": 0.9},
    )
    assert r.usage.output_tokens <= 3 and r.stop_reason in ("max_tokens", "end_turn")


def test_errors_are_anthropic_shaped(client, tiny_server):
    anthropic = require("anthropic")
    name = model(tiny_server)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model=name, max_tokens=5, messages=[{"role": "tool", "content": "hi"}])
    assert "role" in err.value.body["error"]["message"] and err.value.body["type"] == "error"
    for body, needle in [
        ({"model": name, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": name, "max_tokens": 5, "messages": []}, "messages"),
        (
            {"model": name, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "text blocks",
        ),
        (
            {"model": name, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5},
            "temperature",
        ),
        (
            {"model": name, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f"}]},
            "tools",
        ),
    ]:
        r = httpx.post(tiny_server.url + "/v1/messages", json=body, timeout=30)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
