"""`exo-actor start` processes on loopback form rings (manual peers) and serve SmolLM2 or a tiny model.
Most tests share one ring of three nodes (the session's `smollm2_ring`, also used by test_faults.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time

import httpx
import pytest
import zmq

from exo_actor.runtime.generation import generate
from exo_actor.sampling import SamplingParams
from exo_actor.tokenizer import chat_prompt_ids
from tests.api.servers import cluster_info, loopback_ring, restart_node, wait_plan
from tests.conftest import require
from tests.test_faults import GREEDY, SEEDED, assert_failed_over, no_dead_caches, stream_through_fault
from tests.tiny import TinySpec, write_gguf

pytestmark = pytest.mark.ring
STORY = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]
WHOLE = ["node0", "node1", "node2"]


@pytest.mark.slow
def test_plan_covers_all_layers_in_ratio_2_1_1(smollm2_ring):
    info = httpx.get(smollm2_ring["urls"][1] + "/v1/cluster").json()
    plan = info["plan"]
    assert [(p["node"], p["start"], p["end"]) for p in plan] == [("node0", 0, 15), ("node1", 15, 23), ("node2", 23, 30)]
    assert {n["id"] for n in info["nodes"]} == {"node0", "node1", "node2"}


@pytest.mark.slow
def test_greedy_through_any_gateway_equals_single_process(smollm2_ring, smollm2_greedy):
    expected = smollm2_greedy(STORY[0]["content"], 24)
    for url in smollm2_ring["urls"]:
        body = {"model": "smollm2-135m", "messages": STORY, "temperature": 0, "max_tokens": 24}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == expected


QUESTIONS = [
    "Name three colours.",
    "What is the capital of France?",
    "Count from one to five.",
    "Give me a word that rhymes with cat.",
    "What do bees make?",
    "Say hello in Spanish.",
    "What is two plus two?",
    "Name a large animal.",
]


@pytest.mark.slow
def test_eight_concurrent_requests_run_as_micro_batches_and_each_gets_its_single_process_text(
    smollm2_ring, smollm2_greedy
):
    """The router keeps up to three micro-batches (one per ring node) in flight: with eight streams the
    nodes compute at the same time, and every request still gets exactly its text alone in one process."""
    url = smollm2_ring["urls"][0]
    before = cluster_info(url)["rings"][0]["batching"]

    async def ask(client: httpx.AsyncClient, question: str) -> str:
        body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": question}], "max_tokens": 20}
        r = await client.post(url + "/v1/chat/completions", json={**body, "temperature": 0}, timeout=180)
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["message"]["content"])

    async def main() -> list[str]:
        async with httpx.AsyncClient() as client:
            return list(await asyncio.gather(*(ask(client, q) for q in QUESTIONS)))

    assert asyncio.run(main()) == [smollm2_greedy(q, 20) for q in QUESTIONS]
    after = cluster_info(url)["rings"][0]["batching"]
    assert after["micro_batches"] == 3 and after["micro_batches_in_flight"] == 0, after
    assert after["most_micro_batches_in_flight"] > 1, (before, after)


@pytest.mark.slow
def test_garbage_on_the_actor_port_is_dropped(smollm2_ring):
    port = smollm2_ring["ports"][1]
    with socket.create_connection(("127.0.0.1", port)) as s:  # not even ZMTP
        s.sendall(os.urandom(4096))
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(f"tcp://127.0.0.1:{port}")
    for frames in ([os.urandom(64)], [b"\x81\xa1v\x01"], [b"\x85\xa1v\x01\xa1k\xa3fwd", b"x"], [b""] * 5):
        d.send_multipart(frames)
    time.sleep(0.5)
    d.close()
    ctx.term()
    body = {"model": "smollm2-135m", "messages": STORY, "temperature": 0, "max_tokens": 4}
    assert httpx.post(smollm2_ring["urls"][0] + "/v1/chat/completions", json=body, timeout=60).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_killed_node_is_failed_over_then_the_ring_heals(smollm2_ring, smollm2_reference, tmp_path, sampling):
    """node2 is killed (SIGKILL) mid-stream: the other two re-plan without it and the stream continues on
    their ring, ending with the single-process text (greedy, and sampled with a seed); started again,
    node2 rejoins and the ring of three is back, with no dead request's KV cache anywhere."""
    urls = smollm2_ring["urls"]
    streamed = stream_through_fault(urls[0], STORY, sampling, smollm2_ring["procs"][2].kill)
    assert_failed_over(streamed, smollm2_reference(STORY, **sampling), "node2 killed")
    plan = cluster_info(urls[0])["plan"]  # the stream ended on the survivors' ring
    assert [p["node"] for p in plan] == ["node0", "node1"] and plan[-1]["end"] == 30
    restart_node(smollm2_ring, 2, tmp_path / "node2-restarted.log")
    wait_plan(urls, WHOLE, timeout=120)
    no_dead_caches(urls)


def test_two_rings_share_the_load(tmp_path):
    model = tmp_path / "tiny.gguf"
    write_gguf(model, TinySpec(layers=6))
    with loopback_ring(tmp_path, ["4", "4", "4", "4"], extra=("--model", str(model), "--rings", "2")) as r:
        url = r["urls"][0]
        deadline = time.monotonic() + 60
        info = {}
        while time.monotonic() < deadline:
            info = httpx.get(url + "/v1/cluster").json()
            if len(info.get("rings", [])) == 2 and all(x["ready"] for x in info["rings"]):
                break
            time.sleep(0.3)
        assert [len(x["nodes"]) for x in info["rings"]] == [2, 2], info
        for ring in range(2):  # each ring is a whole model
            layers = sorted((p["start"], p["end"]) for p in info["plan"] if p["ring"] == ring)
            assert layers[0][0] == 0 and layers[-1][1] == 6

        async def burst():
            body = {"model": str(model), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30}
            async with httpx.AsyncClient(timeout=60) as client:
                rs = await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=body) for _ in range(6)))
            assert all(x.status_code == 200 for x in rs)

        asyncio.run(burst())
        rings = httpx.get(url + "/v1/cluster").json()["rings"]
        assert all(x["tokens_generated"] > 0 for x in rings), rings


@pytest.mark.slow
def test_speculative_ring_with_a_different_draft_on_each_node(tmp_path, smollm2_greedy):
    """Each node's router drafts with its own source (prompt lookup, the target itself, its first 8
    layers); greedy answers through every gateway equal single-process plain decoding, and each
    gateway reports its acceptance rate in /metrics and /v1/cluster."""
    drafts = ["ngram", "smollm2-135m", "smollm2-135m:layers=8"]
    per_node = [("--enable-speculative", "--draft-model", d) for d in drafts]
    expected = smollm2_greedy(STORY[0]["content"], 24)
    with loopback_ring(tmp_path, ["8", "4", "4"], ready_timeout=180, per_node=per_node) as r:
        for url, draft in zip(r["urls"], drafts):
            body = {"model": "smollm2-135m", "messages": STORY, "temperature": 0, "max_tokens": 24}
            resp = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
            assert resp.status_code == 200, resp.text
            assert resp.json()["choices"][0]["message"]["content"] == expected, draft
            spec = httpx.get(url + "/v1/cluster").json()["speculative"]
            assert spec["draft"] == draft and spec["drafted_tokens"] > 0
            metrics = httpx.get(url + "/metrics").text
            rate = float(
                next(x for x in metrics.splitlines() if x.startswith("exo_speculative_acceptance_rate ")).split()[1]
            )
            assert rate == spec["acceptance_rate"] or abs(rate - spec["acceptance_rate"]) < 1e-3
            if draft == "smollm2-135m":
                assert rate == 1.0
        bad = {"model": "smollm2-135m", "messages": STORY, "max_tokens": 4, "draft_tokens": 99}
        resp = httpx.post(r["urls"][0] + "/v1/chat/completions", json=bad, timeout=30)
        assert resp.status_code == 400 and "draft_tokens" in resp.json()["error"]["message"]
        off = {"model": "smollm2-135m", "messages": STORY, "temperature": 0, "max_tokens": 24, "draft_tokens": 0}
        resp = httpx.post(r["urls"][1] + "/v1/chat/completions", json=off, timeout=120)
        assert resp.json()["choices"][0]["message"]["content"] == expected


@pytest.mark.slow
def test_a_ring_that_mixes_engines_gives_numpy_tokens(tmp_path, smollm2_greedy):
    """numpy -> mlx -> tinygrad, one `exo-actor start` process each: activations cross engine
    boundaries as float32 bytes, and the greedy tokens are those of numpy alone."""
    require("mlx.core")
    require("tinygrad")
    engines = ["numpy", "mlx", "tinygrad"]
    per_node = [("--engine", e) for e in engines]
    expected = smollm2_greedy(STORY[0]["content"], 16)
    with loopback_ring(tmp_path, ["4", "4", "4"], ready_timeout=300, per_node=per_node) as r:
        info = httpx.get(r["urls"][0] + "/v1/cluster").json()
        assert {n["id"]: n["engine"] for n in info["nodes"]} == {"node0": "numpy", "node1": "mlx", "node2": "tinygrad"}
        layers = {p["node"]: p["end"] - p["start"] for p in info["plan"]}
        # the plan counts the bytes each engine really holds: MLX keeps the 4/8-bit blocks, so with the
        # same memory it takes more layers than the float32 engines
        assert sum(layers.values()) == 30 and min(layers.values()) >= 1
        assert layers["node1"] > layers["node0"] and layers["node1"] > layers["node2"]
        body = {"model": "smollm2-135m", "messages": STORY, "temperature": 0, "max_tokens": 16}
        resp = httpx.post(r["urls"][0] + "/v1/chat/completions", json=body, timeout=300)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == expected


@pytest.mark.slow
def test_a_ring_of_numpy_torch_and_mlx_answers_like_numpy(tmp_path, smollm2_local):
    """numpy -> torch -> mlx, one `exo-actor start` process each, every engine on the GGUF's stored
    blocks (torch and MLX keep them quantized; numpy dequantizes them). Activations cross the ring as
    float32; the torch segment computes its weight products with bfloat16 activations. Stated tolerance:
    the greedy answer is numpy's, and each token's log-probability is within 0.15 nats of numpy's."""
    require("torch")
    require("mlx.core")
    files, pipe = smollm2_local
    question = [{"role": "user", "content": "What is the capital of France?"}]
    ids = chat_prompt_ids(files.tokenizer, question)
    deltas = list(generate(pipe, files.tokenizer, ids, SamplingParams(max_tokens=12, logprobs=0), 8192))
    want_text = "".join(d.text for d in deltas)
    want_lp = [lp.logprob for d in deltas for lp in d.logprobs]
    assert "Paris" in want_text
    # memories chosen so that the plan puts numpy first, torch second, mlx last (plans count real bytes)
    per_node = [("--engine", "numpy"), ("--engine", "torch"), ("--engine", "mlx")]
    with loopback_ring(tmp_path, ["40", "4", "2"], ready_timeout=300, per_node=per_node) as r:
        info = httpx.get(r["urls"][0] + "/v1/cluster").json()
        assert [p["node"] for p in info["plan"]] == ["node0", "node1", "node2"]
        assert {n["id"]: n["engine"] for n in info["nodes"]} == {"node0": "numpy", "node1": "torch", "node2": "mlx"}
        body = {"model": "smollm2-135m", "messages": question, "temperature": 0, "max_tokens": 12, "logprobs": True}
        resp = httpx.post(r["urls"][2] + "/v1/chat/completions", json=body, timeout=300)
        assert resp.status_code == 200, resp.text
        choice = resp.json()["choices"][0]
    assert choice["message"]["content"] == want_text
    got_lp = [t["logprob"] for t in choice["logprobs"]["content"]]
    assert len(got_lp) >= 5
    assert max(abs(a - b) for a, b in zip(got_lp, want_lp)) <= 0.15, (got_lp, want_lp)


@pytest.mark.slow
@pytest.mark.ring
def test_wait_for_peers_and_speculation_survive_a_killed_node(tmp_path, smollm2_reference):
    """Three nodes started with --wait-for-peers 2 and speculative decoding (prompt lookup): node2 is
    killed mid-stream; the stream continues with the single-process greedy text, and the two survivors
    serve new requests seconds after the kill (the gate held only the first plan)."""
    flags = ("--model", "smollm2-135m", "--wait-for-peers", "2", "--enable-speculative", "--draft-model", "ngram")
    with loopback_ring(tmp_path, ["8", "4", "4"], extra=flags, ready_timeout=180) as ring:
        urls, procs = ring["urls"], ring["procs"]
        wait_plan(urls, WHOLE)
        body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        served: list[float] = []

        def poll_node1() -> None:  # a new request through a survivor's gateway, until one succeeds
            while time.monotonic() - killed < 30:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.post(urls[1] + "/v1/chat/completions", json=body, timeout=30).status_code == 200:
                        served.append(time.monotonic())
                        return
                time.sleep(0.1)

        poller = threading.Thread(target=poll_node1, daemon=True)
        killed = 0.0

        def kill() -> None:
            nonlocal killed
            procs[2].kill()
            killed = time.monotonic()
            poller.start()

        streamed = stream_through_fault(urls[0], STORY, GREEDY, kill)
        poller.join(30)
        assert_failed_over(streamed, smollm2_reference(STORY, **GREEDY), "node2 killed, speculation on")
        spec = cluster_info(urls[0])["rings"][0]["speculative"]
        assert spec is not None and spec["drafted_tokens"] > 0, spec
        assert served, "node1's gateway did not serve within 30 s of the kill"
        # the time itself is a figure for docs/reliability.md (timed targets belong to benchmarks); this
        # bound only catches a survivor that waits for the lost node
        print(f"node1's gateway served a new request {served[0] - killed:.2f} s after the kill")
        assert served[0] - killed < 15
