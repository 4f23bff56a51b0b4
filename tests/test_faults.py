"""Faults survived by a ring of three `exo-actor start` processes serving SmolLM2 on loopback (the
session's `smollm2_ring`, shared with tests/test_cluster.py): a frozen node (SIGSTOP, then SIGCONT), a
slow node (stopped and resumed over and over), and the gateway's own node killed and started again.
A request in flight when a ring node goes is failed over to the re-planned ring: its stream pauses, then
completes with exactly the single-process text. Nothing hangs, no node keeps the KV cache of a dead
request, and the ring heals; each test leaves it whole.
(A node killed outright: tests/test_cluster.py. A cut link between two hosts: tests/test_network_partition.py.)"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.api.servers import cluster_info, restart_node, wait_plan

pytestmark = [pytest.mark.slow, pytest.mark.ring]
WHOLE = ["node0", "node1", "node2"]
PEER_TIMEOUT = 3.0  # ClusterConfig.timeout
FAILOVER_PAUSE = PEER_TIMEOUT + 10  # the longest a client may wait: the loss noticed, a re-plan, a replay
STORY = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 200}
SEEDED = {"temperature": 0.8, "seed": 5, "max_tokens": 200}


@dataclass
class Streamed:
    text: str  # the content of every chunk, concatenated
    events: list[Any]  # every data event decoded ("[DONE]" as is)
    longest_pause: float  # seconds between two consecutive events, after the first
    seconds: float  # from the request to the end of the stream

    @property
    def errors(self) -> list[Any]:
        return [e for e in self.events if isinstance(e, dict) and "error" in e]


def stream_through_fault(
    url: str, messages: list[dict[str, str]], sampling: dict[str, Any], fault: Callable[[], object], after: int = 6
) -> Streamed:
    """Stream a chat completion (the `sampling` fields in the body); call fault() once `after` data events
    have come, and read the stream to its end, timing the gaps between events."""
    body = {"model": "smollm2-135m", "messages": messages, "stream": True, **sampling}
    events: list[Any] = []
    longest, last, start = 0.0, None, time.monotonic()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            now = time.monotonic()
            if last is not None:
                longest = max(longest, now - last)
            last = now
            events.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
            if len(events) == after:
                fault()
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if isinstance(e, dict) and e.get("choices")
    )
    return Streamed(text, events, longest, time.monotonic() - start)


def assert_failed_over(streamed: Streamed, expected: str, fault: str, bound: float = FAILOVER_PAUSE) -> None:
    """The stream survived the fault: no error event, [DONE] last, the reference text, a bounded pause."""
    pause, seconds = streamed.longest_pause, streamed.seconds
    print(f"{fault}: longest pause between two chunks {pause:.2f} s (bound {bound:g} s), stream {seconds:.1f} s")
    assert not streamed.errors, streamed.errors
    assert streamed.events[-1] == "[DONE]", streamed.events[-3:]
    assert streamed.text == expected
    assert streamed.longest_pause < bound, streamed.longest_pause


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


def no_dead_caches(urls: list[str]) -> None:
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


def test_a_frozen_node_is_failed_over_then_rejoins(smollm2_ring, smollm2_reference, expected):
    """node2 is frozen (SIGSTOP) mid-stream: the other two re-plan without it and the stream continues on
    their ring with the single-process text; thawed (SIGCONT), node2 rejoins and the ring is whole again."""
    urls, frozen = smollm2_ring["urls"], smollm2_ring["procs"][2]
    reference = smollm2_reference(STORY, **GREEDY)
    try:
        streamed = stream_through_fault(urls[0], STORY, GREEDY, lambda: frozen.send_signal(signal.SIGSTOP))
        assert_failed_over(streamed, reference, "node2 frozen")
        wait_plan(urls[:2], ["node0", "node1"])  # the stream ended on the others' ring
        assert _answer(urls[0]) == expected
    finally:
        frozen.send_signal(signal.SIGCONT)
    wait_plan(urls, WHOLE)  # thawed, it rejoins and the ring is whole again
    assert _answer(urls[0]) == expected and _answer(urls[2]) == expected
    no_dead_caches(urls)


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
    no_dead_caches(urls)


def test_the_gateway_node_restarted(smollm2_ring, smollm2_reference, expected, tmp_path):
    """node0 (whose gateway a client uses) is killed while node1's gateway streams; node1's stream fails
    over to the ring of the other two and completes with the single-process text; node0 is started again
    with the same command and the ring of three is back, serving from node0's gateway."""
    urls, procs = smollm2_ring["urls"], smollm2_ring["procs"]
    streamed = stream_through_fault(urls[1], STORY, GREEDY, procs[0].kill)
    assert_failed_over(streamed, smollm2_reference(STORY, **GREEDY), "node0 killed")
    procs[0].wait()
    wait_plan(urls[1:], ["node1", "node2"])
    assert _answer(urls[1]) == expected
    restart_node(smollm2_ring, 0, tmp_path / "node0-restarted.log")
    wait_plan(urls, WHOLE, timeout=120)
    assert _answer(urls[0]) == expected
    no_dead_caches(urls)
