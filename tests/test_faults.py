"""Faults survived by a ring of three `exo-actor start` processes serving SmolLM2 on loopback (the
session's `smollm2_ring`, shared with tests/test_cluster.py): a frozen node (SIGSTOP, then SIGCONT), a
slow node (stopped and resumed over and over), and the gateway's own node killed and started again.
Requests in flight end with a clear error within a bounded time, nothing hangs, no node keeps the KV
cache of a dead request, and the ring heals; each test leaves it whole.
(A node killed outright: tests/test_cluster.py. A cut link between two hosts: tests/test_network_partition.py.)"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time

import httpx
import pytest

from tests.api.servers import cluster_info, restart_node, wait_plan

pytestmark = [pytest.mark.slow, pytest.mark.ring]
WHOLE = ["node0", "node1", "node2"]
PEER_TIMEOUT = 3.0  # ClusterConfig.timeout
STORY = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _stream_until_error(url: str, after_chunks: int, fault) -> tuple[list[str], float]:  # type: ignore[no-untyped-def]
    """Stream a long request; after `after_chunks` events call fault(); return the events that
    followed and the seconds from the fault to the end of the stream."""
    body = {"model": "smollm2-135m", "messages": STORY, "stream": True, "max_tokens": 2000}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(after_chunks):
            next(lines)
        fault()
        t = time.monotonic()
        rest = [line for line in lines if line]
    return rest, time.monotonic() - t


def _answer(url: str, timeout: float = 90) -> str:
    """The greedy answer to QUESTION once the ring serves again (retrying while it re-plans)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            body = {"model": "smollm2-135m", "messages": QUESTION, "temperature": 0, "max_tokens": 12}
            r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
            if r.status_code == 200:
                return r.json()["choices"][0]["message"]["content"]
            last = r.text
        time.sleep(0.5)
    raise AssertionError(f"the ring did not serve again within {timeout} s: {last}")


def _no_dead_caches(urls: list[str]) -> None:
    """Once nothing is in flight, every node's shard holds exactly the KV caches the routers keep in
    their prefix caches (each router's entries live on every shard of the ring): no dead request's."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        infos = [cluster_info(u) for u in urls]
        kept = sum((i["prefix_cache"] or {}).get("entries", 0) for i in infos)
        counts = [i["kv_requests"] for i in infos]
        if counts == [kept] * len(urls) and all(i["ring"]["in_flight"] == 0 for i in infos):
            return
        time.sleep(0.2)
    raise AssertionError(f"KV caches held: {counts}, prefix-cache entries: {kept}")


@pytest.fixture(scope="module")
def expected(smollm2_greedy):
    return smollm2_greedy(QUESTION[0]["content"], 12)


def test_a_frozen_node_ends_requests_then_rejoins(smollm2_ring, expected):
    urls, frozen = smollm2_ring["urls"], smollm2_ring["procs"][2]
    rest, elapsed = _stream_until_error(urls[0], 6, lambda: frozen.send_signal(signal.SIGSTOP))
    try:
        assert elapsed < PEER_TIMEOUT + 3, elapsed
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2][6:])["error"]
        assert "node2" in error["message"] and "retry" in error["message"]
        wait_plan(urls[:2], ["node0", "node1"])  # the others re-plan without it
        assert _answer(urls[0]) == expected
    finally:
        frozen.send_signal(signal.SIGCONT)
    wait_plan(urls, WHOLE)  # thawed, it rejoins and the ring is whole again
    assert _answer(urls[0]) == expected and _answer(urls[2]) == expected
    _no_dead_caches(urls)


def test_a_slow_node_is_waited_for_not_dropped(smollm2_ring, expected):
    """node1 runs only a third of the time (stopped 0.8 s, running 0.4 s, over and over: a throttled
    or overloaded device). Its pauses stay under the peer timeout, so requests complete with the
    exact greedy tokens and the plan never changes."""
    urls, slow = smollm2_ring["urls"], smollm2_ring["procs"][1]
    version = cluster_info(urls[0])["plan_version"]
    stop = threading.Event()

    def throttle() -> None:
        while not stop.is_set():
            slow.send_signal(signal.SIGSTOP)
            time.sleep(0.8)
            slow.send_signal(signal.SIGCONT)
            time.sleep(0.4)

    t = threading.Thread(target=throttle, daemon=True)
    t.start()
    try:
        answers = [_answer(urls[i % 3], timeout=120) for i in range(3)]
    finally:
        stop.set()
        t.join()
        slow.send_signal(signal.SIGCONT)
    assert answers == [expected] * 3
    assert all(cluster_info(u)["plan_version"] == version for u in urls)
    _no_dead_caches(urls)


def test_the_gateway_node_restarted(smollm2_ring, expected, tmp_path):
    """node0 (whose gateway a client uses) is killed while node1's gateway streams; node1's stream
    ends with a clear error, the other two re-plan and serve; node0 is started again with the same
    command and the ring of three is back, serving from node0's gateway."""
    urls, procs = smollm2_ring["urls"], smollm2_ring["procs"]
    rest, elapsed = _stream_until_error(urls[1], 6, procs[0].kill)
    assert elapsed < PEER_TIMEOUT + 3, elapsed
    assert rest[-1] == "data: [DONE]" and "node0" in json.loads(rest[-2][6:])["error"]["message"]
    procs[0].wait()
    wait_plan(urls[1:], ["node1", "node2"])
    assert _answer(urls[1]) == expected
    restart_node(smollm2_ring, 0, tmp_path / "node0-restarted.log")
    wait_plan(urls, WHOLE, timeout=120)
    assert _answer(urls[0]) == expected
    _no_dead_caches(urls)
