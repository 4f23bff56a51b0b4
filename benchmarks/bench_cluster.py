"""Cluster benchmark: transport round trips vs raw TCP, and decode over a ring of 1, 2, 3 processes.

    python -m benchmarks.bench_cluster [--out DIR] [--tokens 96]

Round trip: a message with an N-byte float32 tensor goes to an echo process and back, through
exo-actor's wire codec over ZeroMQ DEALER/ROUTER (what shards use), beside a length-prefixed raw TCP
ping-pong of the same bytes between two processes (the baseline). Ring: `exo-actor start` processes
on loopback with manual peers and equal --memory, so the model splits evenly; greedy decode tok/s
measured by a streaming client on node 0. "default" lets the nodes size their BLAS threads (cores /
shards on the host); "1 BLAS thread" pins every process, the single process included, to one thread,
which isolates what distribution itself costs. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402

from benchmarks.report import write_report  # noqa: E402
from exo_actor.transport.messages import Logits, decode  # noqa: E402
from exo_actor.transport.security import ClusterKey  # noqa: E402
from tests.api.servers import free_port, loopback_ring  # noqa: E402

SIZES = [2 << 10, 32 << 10, 1 << 20, 4 << 20]
MESSAGES = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]


def _zmq_echo(port: int, secret: str | None = None) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    if secret:  # CURVE, with the keys --cluster-key derives
        ClusterKey.from_secret(secret).serve(s)
    s.bind(f"tcp://127.0.0.1:{port}")
    while True:
        frames = s.recv_multipart(copy=False)
        msg = decode(frames[1:])
        s.send_multipart([frames[0], *msg.encode()], copy=False)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = conn.recv_into(view[got:])
        if not k:
            raise ConnectionError
        got += k
    return bytes(buf)


def _tcp_echo(port: int) -> None:
    srv = socket.create_server(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        (n,) = struct.unpack("<Q", _recv_exact(conn, 8))
        conn.sendall(struct.pack("<Q", n) + _recv_exact(conn, n))


def _repeats(size: int, repeats: int) -> int:
    return max(20, repeats * (2 << 10) // size)


def zmq_round_trips(secret: str | None = None, repeats: int = 200) -> dict[int, float]:
    """Microseconds per round trip of a Logits message of each size to an echo process over
    DEALER/ROUTER with the wire codec (CURVE when `secret` is given), best of 3."""
    port = free_port()
    proc = mp.Process(target=_zmq_echo, args=(port, secret), daemon=True)
    proc.start()
    time.sleep(0.5)
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    if secret:
        ClusterKey.from_secret(secret).client(d)
    d.connect(f"tcp://127.0.0.1:{port}")
    out = {}
    for size in SIZES:
        arr, n, best = np.zeros(size // 4, np.float32), _repeats(size, repeats), float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(n):
                d.send_multipart(Logits("r", "bench", 0, arr).encode(), copy=False)
                decode(d.recv_multipart(copy=False))
            best = min(best, (time.perf_counter() - t0) / n)
        out[size] = best * 1e6
    d.close(linger=0)
    ctx.term()
    proc.kill()
    return out


def round_trips(repeats: int = 200) -> list[dict[str, float]]:
    zmq_us = zmq_round_trips(repeats=repeats)
    tport = free_port()
    proc = mp.Process(target=_tcp_echo, args=(tport,), daemon=True)
    proc.start()
    time.sleep(0.5)
    t = socket.create_connection(("127.0.0.1", tport))
    t.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rows = []
    for size in SIZES:
        payload, n, best = np.zeros(size // 4, np.float32).tobytes(), _repeats(size, repeats), float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(n):
                t.sendall(struct.pack("<Q", len(payload)) + payload)
                (k,) = struct.unpack("<Q", _recv_exact(t, 8))
                _recv_exact(t, k)
            best = min(best, (time.perf_counter() - t0) / n)
        rows.append({"bytes": size, "zmq_us": zmq_us[size], "tcp_us": best * 1e6})
    t.close()
    proc.kill()
    return rows


def ring_decode(n_procs: int, tokens: int, blas_one: bool, rounds: int = 3) -> float:
    """Best decode tok/s of a greedy stream through a ring of n_procs `exo-actor start` processes."""
    env = os.environ.copy()
    if blas_one:
        env["OPENBLAS_NUM_THREADS"] = "1"
    with loopback_ring(Path(tempfile.mkdtemp()), ["4"] * n_procs, env) as ring:
        return stream_decode_tps(ring["urls"][0], tokens, rounds)


def stream_decode_tps(url: str, tokens: int, rounds: int = 3) -> float:
    """Best decode tok/s over `rounds` greedy streams of `tokens` tokens from a gateway (time between
    the first and the last content chunk, so prefill is left out)."""
    best = 0.0
    for _ in range(rounds):
        body = {"model": "smollm2-135m", "messages": MESSAGES, "max_tokens": tokens, "stream": True, "temperature": 0}
        first = last = None
        n = 0
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"role"' not in line:
                    now = time.perf_counter()
                    first, last, n = first or now, now, n + 1
        if first and last and last > first:
            best = max(best, (n - 1) / (last - first))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--tokens", type=int, default=96)
    args = ap.parse_args()
    rt = round_trips()
    ring = {
        f"{n}:{'1thread' if one else 'default'}": ring_decode(n, args.tokens, one)
        for one in (False, True)
        for n in (1, 2, 3)
    }
    result = {"round_trips": rt, "ring_decode_tps": ring}
    lines = [
        "| tensor | exo-actor wire (ZeroMQ + codec) round trip | raw TCP round trip | ratio |",
        "|---|---|---|---|",
        *[
            f"| {r['bytes'] >> 10} KiB | {r['zmq_us']:.0f} us | {r['tcp_us']:.0f} us "
            f"| {r['zmq_us'] / r['tcp_us']:.2f}x |"
            for r in rt
        ],
        "",
        "| processes in the ring | decode tok/s, default BLAS threads | vs 1 process "
        "| decode tok/s, 1 BLAS thread each | vs 1 process |",
        "|---|---|---|---|---|",
    ]
    for n in (1, 2, 3):
        d, o = ring[f"{n}:default"], ring[f"{n}:1thread"]
        lines.append(f"| {n} | {d:.1f} | {d / ring['1:default']:.2f}x | {o:.1f} | {o / ring['1:1thread']:.2f}x |")
    write_report(args.out, "cluster", result, lines)


if __name__ == "__main__":
    main()
