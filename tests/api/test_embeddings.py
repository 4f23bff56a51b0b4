"""POST /v1/embeddings through a real gateway (uvicorn on loopback) with the official openai SDK: every
input shape OpenAI allows, float and base64 encodings, dimensions, usage, one 400 per bad field, the
endpoint on /metrics; on SmolLM2 (slow), paraphrases closer than unrelated sentences."""

from __future__ import annotations

import base64
import time

import httpx
import numpy as np
import pytest

from exo_actor.engines import get_engine
from exo_actor.runtime.embedding import embed
from exo_actor.runtime.generation import LocalPipeline
from exo_actor.weights import open_model
from tests.api.schemas import validate
from tests.api.test_errors import assert_error, post
from tests.conftest import require

TEXTS = ["The quick brown fox", "Hello world! Numbers 1234", "def main():\n    return 42\n"]


@pytest.fixture(scope="module")
def client(tiny_server):
    openai = require("openai")
    return openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def local(tiny_gguf):
    """The same tiny model in this process (one numpy shard): the expected vectors."""
    files = open_model(tiny_gguf)
    pipe = LocalPipeline([get_engine("numpy").load_shard(files, 0, files.args.num_hidden_layers)])
    ctx = files.args.max_position_embeddings
    return files, lambda ids, pooling="mean": embed(pipe, ids, ctx, pooling).vector


def caches(srv) -> int:
    return sum(len(s.caches) for s in srv.node.router.pipeline.shards)


def test_sdk_float_single_string(client, tiny_gguf, local, tiny_server):
    files, expect = local
    r = client.embeddings.create(model=str(tiny_gguf), input=TEXTS[0], encoding_format="float")
    assert r.object == "list" and r.model == str(tiny_gguf) and len(r.data) == 1
    d = r.data[0]
    assert d.object == "embedding" and d.index == 0
    v = np.array(d.embedding)
    assert v.shape == (files.args.hidden_size,)
    np.testing.assert_allclose(v, expect(files.tokenizer.encode(TEXTS[0])), atol=1e-6)
    assert abs(np.linalg.norm(v) - 1) < 1e-5
    assert r.usage.prompt_tokens == r.usage.total_tokens == len(files.tokenizer.encode(TEXTS[0]))
    assert caches(tiny_server) == 0


def test_sdk_default_base64_batch_equals_each_alone(client, tiny_gguf, local):
    files, expect = local
    r = client.embeddings.create(model=str(tiny_gguf), input=TEXTS)  # the SDK asks for base64, decodes it
    assert [d.index for d in r.data] == [0, 1, 2]
    alone = [client.embeddings.create(model=str(tiny_gguf), input=t, encoding_format="float") for t in TEXTS]
    for d, a, t in zip(r.data, alone, TEXTS):
        np.testing.assert_allclose(np.array(d.embedding), np.array(a.data[0].embedding), atol=1e-6)
        np.testing.assert_allclose(np.array(d.embedding), expect(files.tokenizer.encode(t)), atol=1e-6)
    assert r.usage.prompt_tokens == sum(len(files.tokenizer.encode(t)) for t in TEXTS)


def test_base64_is_little_endian_float32(tiny_server, tiny_gguf, local):
    files, expect = local
    body = {"model": str(tiny_gguf), "input": TEXTS[1], "encoding_format": "base64"}
    r = post(tiny_server, body, path="/v1/embeddings")
    assert r.status_code == 200, r.text
    v = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(v, expect(files.tokenizer.encode(TEXTS[1])), atol=1e-6)


def test_token_ids_and_lists_of_token_ids(client, tiny_gguf, local):
    _, expect = local
    one = [5, 17, 42, 8, 99]
    many = [[5, 17, 42], [3] * 40, [250, 1, 2, 3]]
    r = client.embeddings.create(model=str(tiny_gguf), input=one, encoding_format="float")
    np.testing.assert_allclose(np.array(r.data[0].embedding), expect(one), atol=1e-6)
    assert r.usage.prompt_tokens == len(one)
    r = client.embeddings.create(model=str(tiny_gguf), input=many)
    for d, ids in zip(r.data, many):
        np.testing.assert_allclose(np.array(d.embedding), expect(ids), atol=1e-6)
    assert r.usage.prompt_tokens == sum(map(len, many))


def test_dimensions_truncate_and_renormalize(client, tiny_gguf, local):
    _, expect = local
    r = client.embeddings.create(model=str(tiny_gguf), input=[5, 6, 7], dimensions=16, encoding_format="float")
    v = np.array(r.data[0].embedding)
    full = expect([5, 6, 7])
    np.testing.assert_allclose(v, full[:16] / np.linalg.norm(full[:16]), atol=1e-6)


def test_last_token_pooling(tiny_server, tiny_gguf, local):
    _, expect = local
    r = post(tiny_server, {"model": str(tiny_gguf), "input": [5, 6, 7, 8], "pooling": "last"}, path="/v1/embeddings")
    assert r.status_code == 200, r.text
    validate(r.json(), "CreateEmbeddingResponse")  # OpenAI's published schema (floats, the default encoding)
    v = np.array(r.json()["data"][0]["embedding"])
    np.testing.assert_allclose(v, expect([5, 6, 7, 8], "last"), atol=1e-6)
    assert np.abs(v - expect([5, 6, 7, 8])).max() > 1e-3  # not the mean


def test_an_input_as_long_as_the_context_is_fine_and_one_more_is_not(tiny_server, tiny_gguf):
    ctx = open_model(tiny_gguf).args.max_position_embeddings
    ok = post(tiny_server, {"model": str(tiny_gguf), "input": [7] * ctx}, path="/v1/embeddings")
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == ctx
    body = {"model": str(tiny_gguf), "input": [[1, 2], [7] * (ctx + 1)]}
    assert_error(post(tiny_server, body, path="/v1/embeddings"), 400, param="input", code="context_length_exceeded")
    assert caches(tiny_server) == 0


BAD = {
    "empty string": ({"input": ""}, "input"),
    "empty list": ({"input": []}, "input"),
    "empty string in a list": ({"input": ["a", ""]}, "input"),
    "empty token list": ({"input": [[1], []]}, "input"),
    "too many inputs": ({"input": ["a"] * 2049}, "input"),
    "a number": ({"input": 5}, "input"),
    "floats": ({"input": [1.5, 2.0]}, "input"),
    "mixed ids": ({"input": [[1, "a"]]}, "input"),
    "booleans": ({"input": [True, False]}, "input"),
    "an object": ({"input": {"text": "a"}}, "input"),
    "missing": ({"input": None}, "input"),
    "id past the vocabulary": ({"input": [1, 99999]}, "input"),
    "negative id": ({"input": [[1, -1]]}, "input"),
    "encoding": ({"encoding_format": "hex"}, "encoding_format"),
    "dimensions zero": ({"dimensions": 0}, "dimensions"),
    "dimensions text": ({"dimensions": "8"}, "dimensions"),
    "dimensions too big": ({"dimensions": 65}, "dimensions"),
    "pooling": ({"pooling": "max"}, "pooling"),
    "user": ({"user": 5}, "user"),
    "model missing": ({"model": None}, "model"),
    "model not a string": ({"model": 3}, "model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_field_is_one_400_naming_it(tiny_server, tiny_gguf, case):
    extra, param = BAD[case]
    body = {k: v for k, v in ({"model": str(tiny_gguf), "input": "hello"} | extra).items() if v is not None}
    assert_error(post(tiny_server, body, path="/v1/embeddings"), 400, param=param)


def test_unknown_model_is_404(tiny_server):
    r = post(tiny_server, {"model": "nope", "input": "hello"}, path="/v1/embeddings")
    assert_error(r, 404, param="model", code="model_not_found")


def test_the_endpoint_is_counted_on_metrics(tiny_server, tiny_gguf):
    def count(status: str) -> float:
        text = httpx.get(f"{tiny_server.url}/metrics").text
        line = f'exo_requests_total{{endpoint="embeddings",status="{status}"}}'
        return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(line))

    ok, bad = count("200"), count("400")
    post(tiny_server, {"model": str(tiny_gguf), "input": "hello"}, path="/v1/embeddings")
    post(tiny_server, {"model": str(tiny_gguf), "input": ""}, path="/v1/embeddings")
    assert (count("200"), count("400")) == (ok + 1, bad + 1)


@pytest.mark.slow
@pytest.mark.ring
def test_smollm2_paraphrases_are_closer_than_unrelated_sentences(smollm2_server):
    openai = require("openai")
    client = openai.OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="unused", max_retries=0)
    texts = ["The cat sat on the mat", "A cat is sitting on a mat", "Stock markets fell sharply on Tuesday"]
    for pooling in ("mean", "last"):
        r = client.embeddings.create(model="smollm2-135m", input=texts, extra_body={"pooling": pooling})
        a, b, c = (np.array(d.embedding) for d in r.data)
        assert a.shape == (576,)
        assert float(a @ b) > float(a @ c) and float(a @ b) > float(b @ c), (pooling, a @ b, a @ c, b @ c)


def _wait(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


BIG = {"input": [[7] * 250] * 2048}  # ~2048 passes of 250 positions: seconds of work


def test_a_client_that_goes_away_cancels_and_frees(tiny_server, tiny_gguf):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{tiny_server.url}/v1/embeddings", json={"model": str(tiny_gguf), **BIG}, timeout=0.5)
    router = tiny_server.node.router
    _wait(lambda: router.in_flight == 0 and caches(tiny_server) == 0, "the request to be cancelled and freed", 10)


def test_a_request_past_the_timeout_is_a_504_and_frees(tiny_gguf):
    from exo_actor.api import GatewayConfig
    from tests.api.servers import thread_server

    with thread_server(tiny_gguf, GatewayConfig(request_timeout=0.3)) as srv:
        r = post(srv, {"model": str(tiny_gguf), **BIG}, path="/v1/embeddings")
        assert_error(r, 504, code="timeout")
        _wait(lambda: srv.node.router.in_flight == 0 and caches(srv) == 0, "the request to be freed", 10)
