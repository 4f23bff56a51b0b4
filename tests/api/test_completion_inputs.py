"""/v1/completions for evaluation: batches of token-id prompts, long stop lists, echo with the prompt's
logprobs, n choices, logit_bias, ignore_eos and min_tokens."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import openai
import pytest

from tests.api.schemas import validate
from tests.api.test_errors import assert_error


def _model(srv) -> str:  # type: ignore[no-untyped-def]
    return str(httpx.get(srv.url + "/v1/models", timeout=30).json()["data"][0]["id"])


def test_a_batch_of_token_id_prompts_gets_one_choice_each_equal_to_its_own_request(tiny_server):
    name = _model(tiny_server)
    prompts = [[5, 6, 7], [9, 10], [11, 12, 13, 14]]
    body = {"model": name, "prompt": prompts, "max_tokens": 6, "temperature": 0}
    r = httpx.post(tiny_server.url + "/v1/completions", json=body, timeout=60).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    for p, choice in zip(prompts, r["choices"]):
        alone = httpx.post(tiny_server.url + "/v1/completions", json={**body, "prompt": p}, timeout=60).json()
        assert choice["text"] == alone["choices"][0]["text"]


def test_stop_lists_up_to_sixteen(tiny_server):
    name = _model(tiny_server)
    stops = [f"zz{i}" for i in range(16)]
    body = {"model": name, "prompt": "hello", "max_tokens": 4, "stop": stops}
    assert httpx.post(tiny_server.url + "/v1/completions", json=body, timeout=60).status_code == 200
    r = httpx.post(tiny_server.url + "/v1/completions", json={**body, "stop": [*stops, "one more"]}, timeout=60)
    assert_error(r, 400, param="stop")
    bad = httpx.post(tiny_server.url + "/v1/completions", json={**body, "prompt": [[1, 2], "text"]}, timeout=60)
    assert_error(bad, 400, param="prompt")


def _without_first_echoed_token(r: dict) -> dict:  # type: ignore[type-arg]
    """OpenAI's published schema types token_logprobs as numbers, yet OpenAI (and vLLM) answer null for an
    echoed prompt's first token, which nothing predicts: validate the rest."""
    out = json.loads(json.dumps(r))
    for c in out["choices"]:
        assert c["logprobs"]["token_logprobs"][0] is None and c["logprobs"]["top_logprobs"][0] is None
        c["logprobs"] = {k: v[1:] for k, v in c["logprobs"].items()}
    return out  # type: ignore[no-any-return]


def _reference_rows(tiny_gguf, ids):  # type: ignore[no-untyped-def]
    """Every position's logits for `ids`, from the numpy engine in this process (not through the server)."""
    from exo_actor.engines.numpy_engine import NumpyEngine
    from exo_actor.runtime.generation import LocalPipeline
    from exo_actor.weights import open_model

    files = open_model(tiny_gguf)
    pipe = LocalPipeline([NumpyEngine().load_shard(files, 0, files.args.num_hidden_layers)])
    return pipe.forward("ref", np.array(ids), 0, len(ids)).astype(np.float64)


def test_echo_with_logprobs_scores_the_prompt_through_the_openai_sdk(tiny_server, tiny_gguf):
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="none")
    ids = [5, 17, 9, 30, 41, 8]
    r = client.completions.create(
        model=_model(tiny_server), prompt=ids, echo=True, logprobs=2, max_tokens=1, temperature=0
    )
    lp = r.choices[0].logprobs
    assert lp is not None and len(lp.tokens) == len(ids) + 1  # the prompt's tokens, then the generated one
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    rows = _reference_rows(tiny_gguf, ids)
    logp = rows - rows.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    for i in range(1, len(ids)):
        assert abs(lp.token_logprobs[i] - logp[i - 1, ids[i]]) < 1e-4
        assert len(lp.top_logprobs[i]) <= 2 and max(lp.top_logprobs[i].values()) == pytest.approx(
            logp[i - 1].max(), abs=1e-4
        )
    assert lp.token_logprobs[-1] == pytest.approx(logp[-1].max(), abs=1e-4)  # greedy: the most likely token
    assert r.choices[0].text.startswith(
        client.completions.create(model=_model(tiny_server), prompt=ids, max_tokens=1, echo=True).choices[0].text[:1]
    )
    assert lp.text_offset == sorted(lp.text_offset)


def test_max_tokens_zero_with_echo_returns_the_prompt_alone(tiny_server):
    body = {"model": _model(tiny_server), "prompt": [5, 6, 7], "echo": True, "logprobs": 0, "max_tokens": 0}
    r = httpx.post(tiny_server.url + "/v1/completions", json=body, timeout=60).json()
    validate(_without_first_echoed_token(r), "CreateCompletionResponse")
    choice = r["choices"][0]
    assert len(choice["logprobs"]["tokens"]) == 3 and choice["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 0 and r["usage"]["prompt_tokens"] == 3
    bad = httpx.post(tiny_server.url + "/v1/completions", json={**body, "echo": False}, timeout=60)
    assert_error(bad, 400, param="max_tokens")


def test_echo_streams_the_prompt_first(tiny_server):
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="none")
    kw = {"model": _model(tiny_server), "prompt": "hello there", "max_tokens": 4, "temperature": 0, "echo": True}
    whole = client.completions.create(**kw).choices[0].text
    chunks = [c.choices[0].text for c in client.completions.create(**kw, stream=True) if c.choices]
    assert chunks[0] == "hello there" and "".join(chunks) == whole and whole.startswith("hello there")


def test_n_choices_per_prompt(tiny_server):
    name = _model(tiny_server)
    body = {"model": name, "prompt": ["hello", "world"], "max_tokens": 12, "temperature": 2.0, "seed": 3, "n": 2}
    r = httpx.post(tiny_server.url + "/v1/completions", json=body, timeout=60).json()
    validate(r, "CreateCompletionResponse")
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    again = httpx.post(tiny_server.url + "/v1/completions", json=body, timeout=60).json()
    assert [c["text"] for c in r["choices"]] == [c["text"] for c in again["choices"]]  # seeded: reproducible
    alone = httpx.post(tiny_server.url + "/v1/completions", json={**body, "prompt": "world", "n": 1}, timeout=60).json()
    assert r["choices"][2]["text"] == alone["choices"][0]["text"]  # the first choice of a prompt is its own request
    assert r["choices"][0]["text"] != r["choices"][1]["text"]  # the others draw from other seeds
    first = httpx.post(tiny_server.url + "/v1/completions", json={**body, "prompt": "hello", "n": 1}, timeout=60).json()
    # each prompt counted once (as OpenAI bills n choices), every choice's completion tokens
    assert r["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"] + alone["usage"]["prompt_tokens"]
    assert r["usage"]["completion_tokens"] == sum(
        httpx.post(
            tiny_server.url + "/v1/completions", json={**body, "prompt": p, "n": 1, "seed": 3 + j, "logprobs": 0}
        ).json()["usage"]["completion_tokens"]
        for p in ("hello", "world")
        for j in range(2)
    )
    assert_error(httpx.post(tiny_server.url + "/v1/completions", json={**body, "n": 0}, timeout=60), 400, param="n")
    assert_error(httpx.post(tiny_server.url + "/v1/completions", json={**body, "n": 17}, timeout=60), 400, param="n")
    assert_error(
        httpx.post(tiny_server.url + "/v1/completions", json={**body, "best_of": 3}, timeout=60), 400, param="best_of"
    )
    streamed = httpx.post(tiny_server.url + "/v1/completions", json={**body, "prompt": "x", "stream": True}, timeout=60)
    assert_error(streamed, 400, param="n")


def test_too_many_choices_for_the_server_free_what_they_queued(tiny_server):
    body = {"model": _model(tiny_server), "prompt": "hello", "max_tokens": 200, "n": 6, "ignore_eos": True}
    r = httpx.post(tiny_server.url + "/v1/completions", json=body, timeout=60)  # the tiny server takes 4 at once
    assert_error(r, 429)
    node = tiny_server.node
    deadline = time.monotonic() + 10
    while node.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.in_flight == 0


def test_logit_bias_ignore_eos_and_min_tokens(tiny_server):
    name = _model(tiny_server)
    body = {"model": name, "prompt": [5, 6], "max_tokens": 5, "temperature": 0}
    forced = httpx.post(
        tiny_server.url + "/v1/completions", json={**body, "logit_bias": {"9": 100}, "logprobs": 0}
    ).json()
    assert forced["choices"][0]["logprobs"]["tokens"] == [forced["choices"][0]["logprobs"]["tokens"][0]] * 5
    plain = httpx.post(tiny_server.url + "/v1/completions", json={**body, "logprobs": 0}).json()
    assert forced["choices"][0]["text"] != plain["choices"][0]["text"]
    long = httpx.post(tiny_server.url + "/v1/completions", json={**body, "max_tokens": 40, "ignore_eos": True}).json()
    assert long["usage"]["completion_tokens"] == 40 and long["choices"][0]["finish_reason"] == "length"
    at_least = httpx.post(tiny_server.url + "/v1/completions", json={**body, "max_tokens": 40, "min_tokens": 30}).json()
    assert at_least["usage"]["completion_tokens"] >= 30
    for bad, param in [
        ({"logit_bias": {"9": 101}}, "logit_bias"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
        ({"logit_bias": [1]}, "logit_bias"),
        ({"min_tokens": 6}, "min_tokens"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"echo": 1}, "echo"),
        ({"suffix": "x"}, "suffix"),
    ]:
        assert_error(
            httpx.post(tiny_server.url + "/v1/completions", json={**body, **bad}, timeout=60), 400, param=param
        )


def test_chat_n_choices_through_the_openai_sdk(tiny_server):
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="none")
    kw = {"model": _model(tiny_server), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    r = client.chat.completions.create(**kw, n=3, temperature=2.0, seed=5)
    validate(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    assert [c.index for c in r.choices] == [0, 1, 2]
    one = client.chat.completions.create(**kw, temperature=2.0, seed=5)
    assert r.choices[0].message.content == one.choices[0].message.content
    assert len({c.message.content for c in r.choices}) > 1
    assert r.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counted once
    greedy = client.chat.completions.create(**kw, n=2, temperature=0)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**kw, n=2, stream=True)
    assert err.value.body["param"] == "n"  # type: ignore[index]
