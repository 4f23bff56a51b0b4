"""/v1/completions inputs evaluation harnesses send: batches of token-id prompts, long stop lists."""

from __future__ import annotations

import httpx

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
