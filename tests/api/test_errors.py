"""Every error case answers in OpenAI's shape with the right status; none is a 500 or kills the server."""

from __future__ import annotations

import httpx
import pytest

from exo_actor.api import GatewayConfig
from tests.api.schemas import validate
from tests.api.servers import thread_server

MSG = [{"role": "user", "content": "hi"}]


def post(srv, body=None, *, content=None, path="/v1/chat/completions", headers=None):
    kw = {"json": body} if content is None else {"content": content}
    return httpx.post(srv.url + path, headers=headers, timeout=30, **kw)


def assert_error(r: httpx.Response, status: int, *, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    validate(body, "ErrorResponse")
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b'{"model": "m", "messages": [], "temperature": NaN}', "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_malformed_bodies(tiny_server, content, needle):
    assert needle in assert_error(post(tiny_server, content=content), 400)["message"]


def _chat(tiny_gguf, **extra):
    return {"model": str(tiny_gguf), "messages": MSG, "max_tokens": 4, **extra}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"model": None}, "model"),
        ({"model": 7}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content",
        ),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": -0.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**30}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"n": 17}, "n"),
        ({"stop": 5}, "stop"),
        ({"stop": [f"s{i}" for i in range(17)]}, "stop"),  # up to 16 (OpenAI: 4; harnesses send more)
        ({"seed": -1}, "seed"),
        ({"seed": 2**70}, "seed"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"presence_penalty": 9}, "presence_penalty"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_invalid_fields(tiny_server, tiny_gguf, extra, param):
    body = {k: v for k, v in _chat(tiny_gguf, **extra).items() if v is not None}
    assert_error(post(tiny_server, body), 400, param=param)


def test_unknown_model_is_404(tiny_server):
    assert_error(post(tiny_server, {"model": "gpt-17", "messages": MSG}), 404, param="model", code="model_not_found")


def test_prompt_longer_than_the_context(tiny_server, tiny_gguf):
    long = [{"role": "user", "content": "word " * 400}]
    assert_error(post(tiny_server, _chat(tiny_gguf, messages=long)), 400, code="context_length_exceeded")
    r = post(tiny_server, {"model": str(tiny_gguf), "prompt": list(range(3, 300))}, path="/v1/completions")
    assert_error(r, 400, code="context_length_exceeded")


def test_completion_prompt_errors(tiny_server, tiny_gguf):
    for prompt in (None, 5, [], [1.5], [[1.5]], [[]], [[1, 2], "x"], [10**9]):  # [[1, 2]]: a batch, valid
        body = {"model": str(tiny_gguf), "prompt": prompt}
        assert_error(post(tiny_server, body, path="/v1/completions"), 400, param="prompt")


def test_unknown_routes_and_methods(tiny_server):
    assert_error(httpx.get(tiny_server.url + "/v1/nothing"), 404)
    assert_error(httpx.get(tiny_server.url + "/v1/chat/completions"), 405)


def test_server_survives_all_of_it(tiny_server, tiny_gguf):
    r = post(tiny_server, _chat(tiny_gguf))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_body_too_large_and_api_key(tiny_gguf):
    with thread_server(tiny_gguf, GatewayConfig(api_key="s3cret", max_body_bytes=2000)) as srv:
        auth = {"Authorization": "Bearer s3cret"}
        assert_error(post(srv, _chat(tiny_gguf)), 401, code="invalid_api_key")
        assert_error(post(srv, _chat(tiny_gguf), headers={"Authorization": "Bearer nope"}), 401)
        assert_error(httpx.get(srv.url + "/v1/models"), 401)
        assert httpx.get(srv.url + "/healthz").status_code == 200  # liveness stays open
        assert post(srv, _chat(tiny_gguf), headers=auth).status_code == 200
        big = _chat(tiny_gguf, messages=[{"role": "user", "content": "x" * 5000}])
        assert_error(post(srv, big, headers=auth), 413, code="request_too_large")

        def chunked():  # no Content-Length: the limit is enforced while reading
            yield b'{"model": "m", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        r = httpx.post(srv.url + "/v1/chat/completions", content=chunked(), headers=auth, timeout=30)
        assert_error(r, 413)


def test_model_still_loading_is_503(tiny_gguf):
    with thread_server(tiny_gguf, start_node=False) as srv:
        assert_error(post(srv, _chat(tiny_gguf)), 503, code="model_loading")
        assert httpx.get(srv.url + "/healthz").json()["state"] == "starting"


def test_missing_model_file_reports_failed(tmp_path):
    with thread_server(tmp_path / "missing.gguf", start_node=False) as srv:
        srv.node.start()
        import time

        for _ in range(100):
            if srv.node.state == "failed":
                break
            time.sleep(0.05)
        err = assert_error(post(srv, {"model": "x", "messages": MSG}), 503)
        assert "failed to load" in err["message"] and "missing.gguf" in err["message"]


def test_server_limits_on_tokens_and_context(tiny_gguf):
    """--max-tokens caps what a request may ask for (and is the default); --max-context caps prompt
    plus completion: a longer prompt is a 400, and the completion stops at the limit."""
    with thread_server(tiny_gguf, GatewayConfig(max_tokens=6, max_context=40)) as srv:
        err = assert_error(post(srv, _chat(tiny_gguf, max_tokens=7)), 400, param="max_tokens")
        assert "this server's limit (--max-tokens) (6)" in err["message"]
        r = post(srv, {"model": str(tiny_gguf), "messages": MSG, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 6
        long = [{"role": "user", "content": "hello " * 60}]
        err = assert_error(post(srv, _chat(tiny_gguf, messages=long)), 400, code="context_length_exceeded")
        assert "context length is 40" in err["message"]
        ids = list(range(5, 40))  # 35 prompt tokens: room for 5 more within the 40-token context
        r = post(
            srv, {"model": str(tiny_gguf), "prompt": ids, "max_tokens": 6, "temperature": 0}, path="/v1/completions"
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] <= 5


def test_request_timeout_ends_streams_and_plain_requests(tiny_gguf):
    """With a 5 ms request timeout, a long generation ends: a plain request with a 504, a stream with an
    error event then [DONE]; the server keeps serving. (The tiny model decodes 230 tokens in ~50 ms on a
    quiet machine, so the timeout is well below that.)"""
    import json as _json

    with thread_server(tiny_gguf, GatewayConfig(request_timeout=0.005)) as srv:
        slow = _chat(tiny_gguf, max_tokens=230, temperature=0)
        r = post(srv, slow)
        if r.status_code == 200:  # the tiny model may finish early: make it slow enough to time out
            pytest.fail(f"generation finished within 5 ms; make the test's request longer: {r.json()['usage']}")
        assert_error(r, 504, code="timeout")
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**slow, "stream": True}, timeout=30) as s:
            events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = _json.loads(events[-2])["error"]
        assert error["code"] == "timeout" and "0.005 s" in error["message"]
        assert httpx.get(srv.url + "/healthz").json()["state"] == "ready"


def _json_values():
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=8,
    )


FIELDS = [
    "model", "messages", "prompt", "stream", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
    "min_p", "seed", "stop", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "n",
    "stream_options", "draft_tokens", "suffix", "echo", "best_of",
]  # fmt: skip


def test_random_bodies_never_break_the_server(tiny_gguf):
    """Hypothesis sends 300 bodies mixing real fields with values of every JSON type and size (and
    sometimes a well-formed request) to both endpoints: every answer is a 200 or a 4xx in OpenAI's
    error shape, never a 500 or a dropped connection, and the server still serves afterwards."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = _json_values()
    good_messages = st.just([{"role": "user", "content": "hi"}])
    bodies = st.fixed_dictionaries(
        {"model": st.just(str(tiny_gguf)) | values, "messages": good_messages | values},
        optional={f: values for f in FIELDS if f not in ("model", "messages")}
        | {"prompt": st.text(max_size=20) | values},
    )
    with thread_server(tiny_gguf, GatewayConfig(max_tokens=8)) as srv:
        client = httpx.Client(timeout=30)

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=bodies, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
        def check(body, path):
            r = client.post(srv.url + path, json=body)
            assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, body, r.text)
            if r.status_code != 200:
                validate(r.json(), "ErrorResponse")

        check()
        r = post(srv, _chat(tiny_gguf))
        assert r.status_code == 200
