"""Concurrency, disconnects, limits under load, and metrics, against a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.api.servers import thread_server


def _body(model, max_tokens=40, **extra):
    return {
        "model": str(model),
        "messages": [{"role": "user", "content": "tell me a story"}],
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
        **extra,
    }


async def _stream(client, url, body, log):
    """Read one SSE stream, recording (time, kind) of each event."""
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content") is not None:
                    log.append((time.monotonic(), "token"))
    log.append((time.monotonic(), "end"))


def test_simultaneous_streams_all_progress(tiny_gguf):
    with thread_server(tiny_gguf, max_concurrent=4) as srv:
        logs = [[] for _ in range(4)]

        async def main():
            async with httpx.AsyncClient(timeout=60) as client:
                await asyncio.gather(*(_stream(client, srv.url, _body(tiny_gguf, 250), log) for log in logs))

        asyncio.run(main())
        first_end = min(log[-1][0] for log in logs)
        for log in logs:
            tokens = [t for t, kind in log if kind == "token"]
            assert len(tokens) >= 10
            assert tokens[1] < first_end  # every stream was producing before any finished
        batching = httpx.get(srv.url + "/v1/cluster").json()["batching"]
        assert batching["turns"] > 0 and batching["mean_rows_per_turn"] > 2  # they shared passes


def test_over_the_limit_is_429_then_recovers(tiny_gguf):
    with thread_server(tiny_gguf, max_concurrent=2) as srv:

        async def main():
            async with httpx.AsyncClient(timeout=60) as client:
                async with client.stream("POST", srv.url + "/v1/chat/completions", json=_body(tiny_gguf, 200)):
                    async with client.stream("POST", srv.url + "/v1/chat/completions", json=_body(tiny_gguf, 200)):
                        r = await client.post(srv.url + "/v1/chat/completions", json=_body(tiny_gguf, 5))
                        assert r.status_code == 429
                        assert r.json()["error"]["type"] == "rate_limit_error"

        asyncio.run(main())
        _wait(lambda: srv.node.router.in_flight == 0)
        r = httpx.post(srv.url + "/v1/chat/completions", json=_body(tiny_gguf, 5, stream=False), timeout=30)
        assert r.status_code == 200


def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def _caches(srv):
    return sum(len(s.caches) for s in srv.node.router.pipeline.shards)


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_cancels_and_frees_caches(tiny_gguf, stream):
    with thread_server(tiny_gguf) as srv:
        body = _body(tiny_gguf, 250, stream=stream)
        with httpx.Client(timeout=30) as client:
            if stream:
                with client.stream("POST", srv.url + "/v1/chat/completions", json=body) as r:
                    lines = r.iter_lines()
                    next(lines), next(lines)  # a couple of events, then hang up
            else:
                with pytest.raises(httpx.ReadTimeout):
                    client.post(srv.url + "/v1/chat/completions", json=body, timeout=0.02)
        _wait(lambda: srv.node.router.in_flight == 0)
        _wait(lambda: _caches(srv) == 0)
        generated = srv.node.router.tokens_generated
        assert generated < 250  # stopped early, not run to the end
        time.sleep(0.3)
        assert srv.node.router.tokens_generated == generated


def test_metrics(tiny_server, tiny_gguf):
    httpx.post(tiny_server.url + "/v1/chat/completions", json=_body(tiny_gguf, 3, stream=False), timeout=30)
    httpx.post(tiny_server.url + "/v1/chat/completions", content=b"{", timeout=30)
    text = httpx.get(tiny_server.url + "/metrics").text
    for name in (
        "exo_requests_total",
        "exo_completion_tokens_total",
        "exo_time_to_first_token_seconds_bucket",
        "exo_decode_tokens_per_second_bucket",
        "exo_in_flight_requests",
        "exo_errors_total",
    ):
        assert name in text, name
    assert 'exo_requests_total{endpoint="chat",status="400"}' in text
    assert 'exo_errors_total{kind="invalid_request_error"}' in text
