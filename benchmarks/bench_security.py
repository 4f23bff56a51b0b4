"""Security benchmark: what the cluster key (CURVE on every actor socket) costs.

    python -m benchmarks.bench_security [--out DIR] [--tokens 96]

Round trip: a message with an N-byte float32 tensor goes to an echo process and back over ZeroMQ
DEALER/ROUTER with exo-actor's codec, plain and with CURVE (the keys `--cluster-key` derives), in
the same run. Ring: three `exo-actor start` processes on loopback serving SmolLM2-135M, greedy
decode tok/s seen by a streaming client on node 0, without and with EXO_ACTOR_CLUSTER_KEY.
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from benchmarks.bench_cluster import SIZES, ring_decode  # noqa: E402
from exo_actor.transport.messages import Logits, decode  # noqa: E402
from exo_actor.transport.security import ClusterKey, new_key  # noqa: E402
from tests.api.servers import free_port  # noqa: E402


def _echo(port: int, secret: str | None) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    if secret:
        ClusterKey.from_secret(secret).serve(s)
    s.bind(f"tcp://127.0.0.1:{port}")
    while True:
        frames = s.recv_multipart(copy=False)
        s.send_multipart([frames[0], *decode(frames[1:]).encode()], copy=False)


def round_trip_us(secret: str | None, repeats: int = 200) -> dict[int, float]:
    port = free_port()
    proc = mp.Process(target=_echo, args=(port, secret), daemon=True)
    proc.start()
    time.sleep(0.5)
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    if secret:
        ClusterKey.from_secret(secret).client(d)
    d.connect(f"tcp://127.0.0.1:{port}")
    out = {}
    for size in SIZES:
        arr = np.zeros(size // 4, np.float32)
        n = max(20, repeats * (2 << 10) // size)
        best = float("inf")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--tokens", type=int, default=96)
    args = ap.parse_args()
    secret = new_key()
    plain, curve = round_trip_us(None), round_trip_us(secret)
    tps_plain = ring_decode(3, args.tokens, False)
    os.environ["EXO_ACTOR_CLUSTER_KEY"] = secret
    try:
        tps_curve = ring_decode(3, args.tokens, False)
    finally:
        del os.environ["EXO_ACTOR_CLUSTER_KEY"]
    lines = [
        "| tensor | round trip, plain | round trip, CURVE | ratio |",
        "|---|---|---|---|",
        *[
            f"| {size >> 10} KiB | {plain[size]:.0f} us | {curve[size]:.0f} us | {curve[size] / plain[size]:.2f}x |"
            for size in SIZES
        ],
        "",
        "| 3-process ring, SmolLM2-135M | decode tok/s |",
        "|---|---|",
        f"| no cluster key | {tps_plain:.1f} |",
        f"| cluster key (CURVE) | {tps_curve:.1f} ({tps_curve / tps_plain:.2f}x) |",
    ]
    result = {
        "date": date.today().isoformat(),
        "round_trip_us": {"plain": plain, "curve": curve},
        "ring_decode_tps": {"plain": tps_plain, "curve": tps_curve},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "security.json").write_text(json.dumps(result, indent=2))
    (args.out / "security.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
