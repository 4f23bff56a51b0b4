"""The automatic speculation switch (cluster/link_speculation.py) on slow links: tok/s with and without it.

    python -m benchmarks.bench_tailscale_speculation [--out DIR] [--tokens 120] [--delays 0,20]

Three `exo-actor start` processes on loopback (manual peers, equal --memory, SmolLM2-135M), each actor
port behind a DelayProxy (benchmarks/latency_proxy.py) that adds the one-way delay to every hop between
nodes, as a tailnet across cities would. No node is started with --enable-speculative: node 0 speculates
only when its switch sees a ring round trip above --auto-speculation-ms (10 ms, the default). Per delay,
"without" requests send `"draft_tokens": 0` (plain decoding, what a node without the switch does) and
"with" requests choose nothing (the switch decides), interleaved so both see the same machine; the switch's
state and measured round trip come from node 0's /v1/cluster. tok/s as in bench_speculative (streamed,
greedy, (completion tokens - 1) / (last token - first token)), best of --repeats.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_speculative import PROMPTS, stream_tps
from benchmarks.latency_proxy import DelayProxy
from benchmarks.report import write_report
from tests.api.servers import free_port, loopback_ring

log = logging.getLogger("bench_tailscale_speculation")


def switch_state(url: str, settle: float = 30.0, want: bool | None = None) -> dict[str, Any]:
    """Node 0's auto_speculation block, once it says `want` (or after `settle` seconds)."""
    deadline = time.monotonic() + settle
    while True:
        info: dict[str, Any] = httpx.get(url + "/v1/cluster", timeout=10).json()["auto_speculation"]
        if want is None or info["on"] == want or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def run(tokens: int, delays: list[float], repeats: int) -> list[dict[str, Any]]:
    real, proxied = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    proxies = [DelayProxy(p, r).start() for p, r in zip(proxied, real)]
    per_node = [("--advertise", f"127.0.0.1:{p}") for p in proxied]
    rows: list[dict[str, Any]] = []
    try:
        with loopback_ring(Path(tempfile.mkdtemp()), ["4"] * 3, per_node=per_node, ports=real) as cluster:
            url = cluster["urls"][0]
            stream_tps(url, PROMPTS["open"], 8, 0)  # warm up
            for delay in delays:
                for p in proxies:
                    p.delay = delay / 1000
                # a round trip crosses two delayed hops: the switch turns on above 10 ms, so at 5 ms per hop
                state = switch_state(url, want=2 * delay > 10.0)
                for name, messages in PROMPTS.items():
                    without, with_switch = [], []
                    for _ in range(repeats):
                        without.append(stream_tps(url, messages, tokens, 0))
                        with_switch.append(stream_tps(url, messages, tokens, None))
                    row = {
                        "delay_ms": delay,
                        "prompt": name,
                        "switch_on": state["on"],
                        "rtt_ms": state["rtt_ms"],
                        "threshold_ms": state["threshold_ms"],
                        "without_tps": max(without),
                        "with_tps": max(with_switch),
                    }
                    rows.append(row)
                    log.info("%s", row)
    finally:
        for p in proxies:
            p.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--tokens", type=int, default=120)
    ap.add_argument("--delays", default="0,20", help="one-way delay per hop, ms, comma-separated")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = run(args.tokens, [float(d) for d in args.delays.split(",")], args.repeats)
    lines = [
        "| link delay per hop | prompt | switch | ring round trip | without the switch tok/s | with it tok/s "
        "| speedup |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['delay_ms']:g} ms | {r['prompt']} | {'on' if r['switch_on'] else 'off'} "
            f"| {r['rtt_ms'] if r['rtt_ms'] is not None else '-'} ms | {r['without_tps']:.1f} | {r['with_tps']:.1f} "
            f"| {r['with_tps'] / r['without_tps']:.2f}x |"
            for r in rows
        ],
    ]
    write_report(args.out, "tailscale_speculation", {"rows": rows}, lines)


if __name__ == "__main__":
    main()
