"""Ring throughput benchmark: a 3-process ring as it was (one batch in flight, logits back to the
router), with sampling on the last shard, and with micro-batches too (the default), beside one process,
serving 12 concurrent streams (and 1), with injected link latency.

    python -m benchmarks.bench_micro_batches [--out DIR] [--tokens 48] [--streams 12] [--delays 0,5]

Three `exo-actor start` processes on loopback (manual peers, equal --memory, the default engine), every
node's actor port behind a DelayProxy (benchmarks/latency_proxy.py) that adds the one-way delay to each
hop; one ring per configuration (RINGS), all in one run. The baseline: one `exo-actor start` process
serving the same streams. Bytes back per token: what node 0's actor socket received in the messages
that answer passes (logits, blogits, sampled: exo_message_bytes_received_total on /metrics) over the
tokens generated, during the aggregate runs. Aggregate tok/s = completion tokens of all streams / wall
time from the first request to the last answer (greedy, `max_tokens` each, distinct prompts); single
stream tok/s = (tokens - 1) / (last token - first token) of a streamed completion. Best of --repeats.
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for this run.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from benchmarks.latency_proxy import DelayProxy  # noqa: E402
from benchmarks.report import write_report  # noqa: E402
from tests.api.servers import cluster_info, free_port, loopback_ring  # noqa: E402

log = logging.getLogger("bench_micro_batches")

TOPICS = [
    "a lighthouse keeper",
    "a robot who paints",
    "the first snow of winter",
    "a city under the sea",
    "a dragon who is afraid of fire",
    "a clock that runs backwards",
    "a library on the moon",
    "a lost kite",
    "a baker who bakes at night",
    "a train that never stops",
    "an old map",
    "a garden on a rooftop",
    "a cat who runs a hotel",
    "a violin in the attic",
    "a mountain that moves",
    "a letter never sent",
]


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]}."}]


async def _one(client: httpx.AsyncClient, url: str, i: int, tokens: int) -> int:
    body = {"model": "smollm2-135m", "messages": messages(i), "temperature": 0, "max_tokens": tokens}
    r = await client.post(url + "/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"])


def aggregate_tps(url: str, streams: int, tokens: int) -> float:
    """All `streams` requests at once: their completion tokens / the wall time they took together."""

    async def main() -> float:
        async with httpx.AsyncClient() as client:
            t0 = time.perf_counter()
            counts = await asyncio.gather(*(_one(client, url, i, tokens) for i in range(streams)))
            return sum(counts) / (time.perf_counter() - t0)

    return asyncio.run(main())


def stream_tps(url: str, tokens: int) -> float:
    """One streamed request: (tokens - 1) / (last token - first token)."""
    body = {"model": "smollm2-135m", "messages": messages(0), "temperature": 0, "max_tokens": tokens, "stream": True}
    times: list[float] = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    times.append(time.perf_counter())
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


@contextmanager
def ring(nodes: int, flags: tuple[str, ...], max_concurrent: int) -> Iterator[tuple[str, list[DelayProxy]]]:
    """`nodes` processes on loopback, each actor port behind a DelayProxy (none for one process)."""
    real, proxied = [free_port() for _ in range(nodes)], [free_port() for _ in range(nodes)]
    proxies = [DelayProxy(p, r).start() for p, r in zip(proxied, real)] if nodes > 1 else []
    per_node = [("--advertise", f"127.0.0.1:{p}") for p in proxied] if proxies else None
    extra = ("--max-concurrent", str(max_concurrent), "--prefix-cache-mb", "0", *flags)
    try:
        with loopback_ring(Path(tempfile.mkdtemp()), ["4"] * nodes, extra=extra, per_node=per_node, ports=real) as c:
            yield c["urls"][0], proxies
    finally:
        for p in proxies:
            p.stop()


BACK = ("logits", "blogits", "sampled")  # what a last shard sends a router for a pass


def counters(url: str) -> dict[str, float]:
    """From node 0's /metrics: bytes its actor socket received per kind answering a pass, and tokens."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        for kind in BACK:
            if line.startswith(f'exo_message_bytes_received_total{{kind="{kind}"}}'):
                out[kind] = float(line.split()[-1])
        if line.startswith("exo_completion_tokens_total "):
            out["tokens"] = float(line.split()[-1])
    return out


def measure(url: str, proxies: list[DelayProxy], delays: list[float], streams: int, tokens: int, repeats: int):
    rows = []
    aggregate_tps(url, streams, 8)  # warm up
    for delay in delays:
        for p in proxies:
            p.delay = delay / 1000
        before = counters(url)
        agg = max(aggregate_tps(url, streams, tokens) for _ in range(repeats))
        after = counters(url)
        one = max(stream_tps(url, tokens) for _ in range(repeats))
        batching = cluster_info(url)["rings"][0]["batching"] if proxies else {}
        back = sum(after.get(k, 0.0) - before.get(k, 0.0) for k in BACK)
        made = after.get("tokens", 0.0) - before.get("tokens", 0.0)
        row = {
            "delay_ms": delay,
            "aggregate_tps": agg,
            "single_tps": one,
            "bytes_back_per_token": back / made if made and proxies else None,
            "batching": batching,
        }
        rows.append(row)
        log.info("%s", row)
    return rows


RINGS = {  # name -> the flags of its three nodes
    "1 batch, sampling on the router (before)": ("--micro-batches", "1", "--sample-on", "router"),
    "1 batch, sampling on the last shard": ("--micro-batches", "1"),
    "micro-batches + last-shard sampling (default)": (),
}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--streams", type=int, default=12)
    ap.add_argument("--delays", default="0,5", help="one-way delay per hop, ms, comma-separated")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    result: dict[str, Any] = {"streams": args.streams, "tokens": args.tokens, "rings": {}}
    with ring(1, (), args.streams) as (url, proxies):
        result["single_process"] = measure(url, proxies, [0.0], args.streams, args.tokens, args.repeats)[0]
    for name, flags in RINGS.items():
        with ring(3, flags, args.streams) as (url, proxies):
            result["rings"][name] = measure(url, proxies, delays, args.streams, args.tokens, args.repeats)
    one = result["single_process"]
    names = list(RINGS)
    before, default = result["rings"][names[0]], result["rings"][names[-1]]
    lines = [
        f"{args.streams} concurrent greedy streams of {args.tokens} tokens (torch engine unless $EXO_ACTOR_ENGINE); "
        f"one process: {one['aggregate_tps']:.1f} tok/s aggregate, {one['single_tps']:.1f} tok/s one stream.",
        "",
        "| ring of 3 processes | delay per hop | aggregate tok/s | vs before | vs one process | 1 stream tok/s "
        "| vs before | bytes back per token | most micro-batches in flight |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for row, base in zip(result["rings"][name], before):
            back = row["bytes_back_per_token"]
            lines.append(
                f"| {name} | {row['delay_ms']:g} ms | {row['aggregate_tps']:.1f} "
                f"| {row['aggregate_tps'] / base['aggregate_tps']:.2f}x "
                f"| {row['aggregate_tps'] / one['aggregate_tps']:.2f}x | {row['single_tps']:.1f} "
                f"| {row['single_tps'] / base['single_tps']:.2f}x | {back:,.0f} "
                f"| {row['batching'].get('most_micro_batches_in_flight', '?')} |"
            )
    result["summary"] = {
        "gain_at_each_delay": [d["aggregate_tps"] / b["aggregate_tps"] for d, b in zip(default, before)],
        "vs_one_process_at_first_delay": default[0]["aggregate_tps"] / one["aggregate_tps"],
        "single_stream_ratio": [d["single_tps"] / b["single_tps"] for d, b in zip(default, before)],
    }
    write_report(args.out, "micro_batches", result, lines)


if __name__ == "__main__":
    main()
