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
from pathlib import Path  # noqa: E402

from benchmarks.bench_cluster import SIZES, ring_decode, zmq_round_trips  # noqa: E402
from benchmarks.report import write_report  # noqa: E402
from exo_actor.transport.security import new_key  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--tokens", type=int, default=96)
    args = ap.parse_args()
    secret = new_key()
    plain, curve = zmq_round_trips(), zmq_round_trips(secret)
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
        "round_trip_us": {"plain": plain, "curve": curve},
        "ring_decode_tps": {"plain": tps_plain, "curve": tps_curve},
    }
    write_report(args.out, "security", result, lines)


if __name__ == "__main__":
    main()
