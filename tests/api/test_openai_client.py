"""The official openai client against `exo-actor start` serving the embedded SmolLM2 model."""

from __future__ import annotations

import json

import httpx
import pytest

from exo_actor.tokenizer import chat_prompt_ids
from exo_actor.weights import open_model
from tests.api.schemas import validate
from tests.conftest import require

pytestmark = [pytest.mark.slow, pytest.mark.ring]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(smollm2_server):
    openai = require("openai")
    return openai.OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return open_model(smollm2_path).tokenizer


def test_chat_completion(client, tokenizer, smollm2_server):
    r = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, temperature=0, logprobs=True)
    choice = r.choices[0]
    assert "Paris" in choice.message.content and choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert r.usage.prompt_tokens == len(chat_prompt_ids(tokenizer, QUESTION))
    content_tokens = choice.logprobs.content
    assert "".join(t.token for t in content_tokens) == choice.message.content
    assert r.usage.completion_tokens == len(content_tokens) + 1  # + the end-of-turn token
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    validate(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    raw = httpx.post(
        f"{smollm2_server.url}/v1/chat/completions",
        json={"model": "smollm2-135m", "messages": QUESTION, "temperature": 0, "max_tokens": 5},
        timeout=60,
    ).json()
    validate(raw, "CreateChatCompletionResponse")
    assert raw["choices"][0]["finish_reason"] == "length" and raw["usage"]["completion_tokens"] == 5


def test_streaming_chat_completion(client):
    stream = client.chat.completions.create(
        model="smollm2-135m", messages=QUESTION, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text and "\ufffd" not in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    for c in chunks:
        validate(c.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")


def test_stream_ends_with_done(smollm2_server):
    body = {"model": "smollm2-135m", "messages": QUESTION, "stream": True, "max_tokens": 4}
    with httpx.stream("POST", f"{smollm2_server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    for e in events[:-1]:
        validate(json.loads(e[6:]), "CreateChatCompletionStreamResponse")


def test_text_completion(client, tokenizer):
    prompt = "The capital of France is"
    r = client.completions.create(model="smollm2-135m", prompt=prompt, max_tokens=8, temperature=0)
    assert "Paris" in r.choices[0].text
    assert r.usage.prompt_tokens == len(tokenizer.encode(prompt))
    validate(r.model_dump(exclude_unset=True), "CreateCompletionResponse")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="smollm2-135m", prompt=prompt, max_tokens=8, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == r.choices[0].text


def test_models_and_cluster(client, smollm2_server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["smollm2-135m"]
    validate(httpx.get(f"{smollm2_server.url}/v1/models").json(), "ListModelsResponse")
    info = httpx.get(f"{smollm2_server.url}/v1/cluster").json()
    assert info["state"] == "ready" and info["layers"] == 30
    assert info["plan"] == [{"node": info["nodes"][0]["id"], "start": 0, "end": 30}]
    assert info["nodes"][0]["engine"] == "numpy" and info["nodes"][0]["memory_bytes"] > 0


def test_unknown_model_error_shape(client, smollm2_server):
    import openai

    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-17", messages=QUESTION)
    assert exc.value.body["code"] == "model_not_found"
    body = httpx.post(
        f"{smollm2_server.url}/v1/chat/completions", json={"model": "gpt-17", "messages": QUESTION}
    ).json()
    validate(body, "ErrorResponse")
