"""Rings of `exo-actor start` processes on loopback, measured through their gateways: what calibration
needs to see the software costs a model of the hardware cannot (the gateway and router per token and per
pass, a hop between processes). Manual peers only: nothing leaves loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

QUESTIONS = [f"Write a short story about {t}." for t in ("a lighthouse", "a robot", "the sea", "a clock", "a kite")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def loopback_ring(
    nodes: int, model: str = "smollm2-135m", env: Mapping[str, str] | None = None, flags: tuple[str, ...] = ()
) -> Iterator[str]:
    """`nodes` processes serving `model` as one ring; yields node 0's gateway URL once every node is ready."""
    folder = Path(tempfile.mkdtemp(prefix="exo-probe-"))
    ports, api = [_free_port() for _ in range(nodes)], [_free_port() for _ in range(nodes)]
    (folder / "peers.toml").write_text(f"peers = {json.dumps([f'127.0.0.1:{p}' for p in ports])}\n")
    procs = []
    try:
        for i in range(nodes):
            cmd = [
                *(sys.executable, "-m", "exo_actor.cli", "start", "--model", model, "--node-id", f"node{i}"),
                *("--host", "127.0.0.1", "--port", str(ports[i]), "--api-host", "127.0.0.1"),
                *("--api-port", str(api[i]), "--peers", str(folder / "peers.toml"), "--discovery", "manual"),
                *("--memory", "4", "--max-concurrent", "64", "--prefix-cache-mb", "0", *flags),
            ]
            with open(folder / f"node{i}.log", "w") as log:
                procs.append(
                    subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
                )
        urls = [f"http://127.0.0.1:{p}" for p in api]
        for url in urls:
            _wait_ready(url, procs)
        yield urls[0]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a node exited before the ring was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).json().get("state") == "ready":
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not become ready in {timeout:g} s")


def stream_seconds_per_token(url: str, tokens: int = 48) -> float:
    """Seconds between a streamed greedy completion's tokens, (last - first) / (count - 1), best of 3."""
    best = float("inf")
    for _ in range(3):
        body = {
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": QUESTIONS[0]}],
            "temperature": 0,
            "max_tokens": tokens,
            "stream": True,
        }
        times = []
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        times.append(time.perf_counter())
        if len(times) > 1:
            best = min(best, (times[-1] - times[0]) / (len(times) - 1))
    return best


def aggregate_tps(url: str, streams: int, tokens: int = 48) -> float:
    """`streams` greedy requests at once: their completion tokens over the wall time, best of 2."""

    async def one(client: httpx.AsyncClient, i: int) -> int:
        body = {
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"}],
            "temperature": 0,
            "max_tokens": tokens,
        }
        r = await client.post(url + "/v1/chat/completions", json=body, timeout=600)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    async def run() -> float:
        async with httpx.AsyncClient() as client:
            t = time.perf_counter()
            counts = await asyncio.gather(*(one(client, i) for i in range(streams)))
            return sum(counts) / (time.perf_counter() - t)

    asyncio.run(run())  # warm
    return max(asyncio.run(run()) for _ in range(2))
