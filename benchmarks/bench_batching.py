"""Continuous-batching benchmark: aggregate decode tok/s of N concurrent streams vs one stream.

    python -m benchmarks.bench_batching [--out DIR] [--tokens 64] [--streams 1,2,4,8,16]

SmolLM2-135M in one process (numpy), a RouterActor over it, N greedy chat requests submitted at
once. Aggregate decode tok/s: the tokens decoded after each stream's first, over the time from the
first stream's first token to the last stream's last token. Interleaved rounds, best of each.
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset (see bench_engine).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.report import write_report  # noqa: E402
from exo_actor.actors.router import RouterActor  # noqa: E402
from exo_actor.runtime.local import load_local  # noqa: E402
from exo_actor.sampling import SamplingParams  # noqa: E402
from exo_actor.tokenizer import chat_prompt_ids  # noqa: E402

TOPICS = ["a robot who learns to paint", "a lighthouse keeper", "a dragon and a baker", "a journey to Mars"]


async def _streams(router: RouterActor, prompts: list[list[int]], tokens: int) -> dict[str, float]:
    async def one(ids: list[int]) -> tuple[float, float, int]:
        first = last = 0.0
        n = 0
        async for delta in router.submit(ids, SamplingParams(max_tokens=tokens)):
            if delta.token_ids:
                last = time.perf_counter()
                first = first or last
                n += len(delta.token_ids)
        return first, last, n

    t0 = time.perf_counter()
    got = await asyncio.gather(*(one(ids) for ids in prompts))
    start, end = min(f for f, _, _ in got), max(la for _, la, _ in got)
    decoded = sum(n - 1 for _, _, n in got)
    return {
        "aggregate_tps": decoded / (end - start),
        "per_stream_tps": min((n - 1) / (la - f) for f, la, n in got if la > f),
        "ttft_max_s": max(f for f, _, _ in got) - t0,
    }


def measure(streams: list[int], tokens: int, rounds: int) -> list[dict[str, float]]:
    """Best aggregate decode tok/s at each number of concurrent streams (rounds interleaved)."""
    files, pipe = load_local("smollm2-135m")
    prompts = [
        chat_prompt_ids(files.tokenizer, [{"role": "user", "content": f"Write a long story about {t}."}])
        for t in TOPICS
    ]
    router = RouterActor(pipe, files.tokenizer, 8192, max_concurrent=max(streams))
    router.start()
    best: dict[int, dict[str, float]] = {}
    try:
        asyncio.run(_streams(router, prompts[:1], 8))  # warm-up
        for _ in range(rounds):
            for n in streams:
                r = asyncio.run(_streams(router, [prompts[i % len(prompts)] for i in range(n)], tokens))
                if n not in best or r["aggregate_tps"] > best[n]["aggregate_tps"]:
                    best[n] = r
    finally:
        router.stop()
    base = best[streams[0]]["aggregate_tps"]
    return [{"streams": n, **best[n], "vs_one": best[n]["aggregate_tps"] / base} for n in streams]


def table(rows: list[dict[str, float]]) -> list[str]:
    return [
        "| concurrent streams | aggregate decode tok/s | vs 1 stream | slowest stream tok/s |",
        "|---|---|---|---|",
        *[
            f"| {r['streams']} | {r['aggregate_tps']:.1f} | {r['vs_one']:.2f}x | {r['per_stream_tps']:.1f} |"
            for r in rows
        ],
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", default="1,2,4,8,16")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    rows = measure([int(s) for s in args.streams.split(",")], args.tokens, args.rounds)
    write_report(args.out, "batching", {"rows": rows}, table(rows))


if __name__ == "__main__":
    main()
