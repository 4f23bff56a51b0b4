"""Ollama's API through the official `ollama` Python client against a real uvicorn gateway (tiny model):
chat and generate, streamed and not, list, show, ps, version, `format` enforced; errors in Ollama's shape."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import require


@pytest.fixture(scope="module")
def client(tiny_server):
    ollama = require("ollama")
    return ollama.Client(host=tiny_server.url)


def model(tiny_server) -> str:  # type: ignore[no-untyped-def]
    return str(httpx.get(tiny_server.url + "/v1/models", timeout=30).json()["data"][0]["id"])


def test_chat_streamed_and_not(client, tiny_server):
    name = model(tiny_server)
    msgs = [{"role": "user", "content": "hello there"}]
    r = client.chat(model=name, messages=msgs, options={"temperature": 0, "num_predict": 12}, stream=False)
    assert r.done and r.done_reason in ("stop", "length") and r.message.role == "assistant"
    assert r.eval_count and r.eval_count <= 12 and r.prompt_eval_count > 0
    parts = list(client.chat(model=name, messages=msgs, options={"temperature": 0, "num_predict": 12}, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == r.message.content  # greedy: the same text either way


def test_generate_with_a_seed_is_repeatable(client, tiny_server):
    name = model(tiny_server)
    opts = {"temperature": 0.9, "seed": 5, "num_predict": 10}
    a = client.generate(model=name, prompt="once upon a time", options=opts)
    b = "".join(p.response for p in client.generate(model=name, prompt="once upon a time", options=opts, stream=True))
    assert a.response == b and a.done


def test_format_json_is_enforced(client, tiny_server):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    r = client.generate(
        model=model(tiny_server),
        prompt="answer",
        format=schema,
        options={"temperature": 1, "seed": 2, "num_predict": 40},
    )
    assert json.loads(r.response)["ok"] in (True, False)


def test_list_show_ps_version(client, tiny_server):
    name = model(tiny_server)
    assert [m.model for m in client.list().models] == [name]
    shown = client.show(name)
    assert shown.details.family == "llama" and shown.modelinfo["general.architecture"] == "llama"
    assert [m.model for m in client.ps().models] == [name]
    assert httpx.get(tiny_server.url + "/api/version", timeout=30).json()["version"]


def test_errors_are_ollama_shaped(client, tiny_server):
    ollama = require("ollama")
    name = model(tiny_server)
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404
    for body, needle in [
        ({"model": name, "messages": "hi"}, "'messages' must be a list"),
        ({"model": name, "messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"model": name, "prompt": "x", "options": {"temperature": "hot"}}, "options.temperature"),
        ({"model": name, "prompt": "x", "options": {"stop": [""]}}, "options.stop"),
        ({"model": name, "prompt": "x", "format": "yaml"}, "format"),
        ({"model": name, "prompt": "x", "stream": "yes"}, "'stream'"),
    ]:
        path = "/api/chat" if "messages" in body else "/api/generate"
        r = httpx.post(tiny_server.url + path, json=body, timeout=30)
        assert r.status_code == 400 and needle in r.json()["error"], (body, r.text)
    empty = httpx.post(tiny_server.url + "/api/generate", json={"model": name}, timeout=30).json()
    assert empty["done"] and empty["done_reason"] == "load"  # Ollama's way to load a model
