"""Speculative decoding benchmark: a 3-node ring with injected link latency, and a single node.

    python -m benchmarks.bench_speculative [--out DIR] [--tokens 120] [--delays 0,2,10]

Ring: three `exo-actor start` processes on loopback (manual peers, equal --memory); every node's
actor port sits behind a DelayProxy (benchmarks/latency_proxy.py) that adds the one-way delay to
each hop between nodes (node 0's router reaches its own shard directly). Node 0 drafts with
prompt lookup (`--enable-speculative --draft-model ngram`, adaptive length, at most 4); "plain"
runs go to the same cluster with `"draft_tokens": 0`, interleaved with the speculative ones, so both
see the same machine. Two prompts: an input-grounded one (rewrite a given paragraph: drafts are
good) and an open one (a story: drafts are poor). tok/s = (completion tokens - 1) / (last token -
first token) of a streamed greedy completion. Acceptance and tokens per pass come from the node's
/v1/cluster counters; theory is (1 - a^(N+1)) / (1 - a) with the measured a and the mean draft
length N.

Single node: the same prompts in one process (no gateway), plain vs each draft source.
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for this run.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402

from benchmarks.latency_proxy import DelayProxy  # noqa: E402
from benchmarks.report import write_report  # noqa: E402
from exo_actor.runtime.generation import generate  # noqa: E402
from exo_actor.runtime.local import load_local  # noqa: E402
from exo_actor.sampling import SamplingParams  # noqa: E402
from exo_actor.speculative import Speculation, expected_tokens  # noqa: E402
from exo_actor.speculative.drafts import load_drafter  # noqa: E402
from exo_actor.tokenizer import chat_prompt_ids  # noqa: E402
from tests.api.servers import free_port, loopback_ring  # noqa: E402

log = logging.getLogger("bench_speculative")

PARAGRAPH = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling in long strips. Every "
    "night for forty years, Margaret had climbed the one hundred and twelve steps to light the lamp. "
    "She knew every crack in the stone walls and every creak of the iron railing. When the storms came "
    "in from the north, she would sit by the great lens and listen to the waves crash against the rocks "
    "below, watching for ships that might need her light to find their way home."
)
PROMPTS = {
    "grounded": [{"role": "user", "content": f"Rewrite this paragraph exactly as it is:\n\n{PARAGRAPH}"}],
    "open": [{"role": "user", "content": "Write a long story about a robot who learns to paint."}],
}


def stream_tps(url: str, messages: list[dict[str, str]], tokens: int, draft_tokens: int | None) -> float:
    body: dict[str, object] = {
        "model": "smollm2-135m",
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if draft_tokens is not None:
        body["draft_tokens"] = draft_tokens
    first = last = None
    completion = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first, last = first or now, now
    return (completion - 1) / (last - first) if first and last and last > first else 0.0


def spec_counters(url: str) -> dict[str, float]:
    return httpx.get(url + "/v1/cluster", timeout=10).json()["speculative"]


def ring(
    tokens: int, delays: list[float], repeats: int, draft_tokens: int, prompts: list[str] | None = None
) -> list[dict[str, object]]:
    """Plain vs speculative (n-gram draft) decode through a 3-process ring, per link delay."""
    real, proxied = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    proxies = [DelayProxy(p, r).start() for p, r in zip(proxied, real)]
    per_node = [("--advertise", f"127.0.0.1:{p}") for p in proxied]
    per_node[0] += ("--enable-speculative", "--draft-model", "ngram", "--draft-tokens", str(draft_tokens))
    rows: list[dict[str, object]] = []
    try:
        with loopback_ring(Path(tempfile.mkdtemp()), ["4"] * 3, per_node=per_node, ports=real) as cluster:
            url = cluster["urls"][0]
            stream_tps(url, PROMPTS["open"], 8, None)  # warm up
            for delay in delays:
                for p in proxies:
                    p.delay = delay / 1000
                for name, messages in PROMPTS.items():
                    if prompts is not None and name not in prompts:
                        continue
                    plain, spec = [], []
                    before = spec_counters(url)
                    for _ in range(repeats):
                        plain.append(stream_tps(url, messages, tokens, 0))
                        spec.append(stream_tps(url, messages, tokens, None))
                    after = spec_counters(url)
                    drafted = after["drafted_tokens"] - before["drafted_tokens"]
                    accepted = after["accepted_tokens"] - before["accepted_tokens"]
                    passes = after["passes"] - before["passes"]
                    pass_tokens = after["pass_tokens"] - before["pass_tokens"]
                    a = accepted / drafted if drafted else 0.0
                    row = {
                        "delay_ms": delay,
                        "prompt": name,
                        "plain_tps": max(plain),
                        "spec_tps": max(spec),
                        "acceptance": a,
                        "tokens_per_pass": pass_tokens / passes if passes else 1.0,
                        "mean_draft": drafted / passes if passes else 0.0,
                    }
                    row["theory"] = expected_tokens(a, round(row["mean_draft"])) if drafted else 1.0  # type: ignore[arg-type]
                    rows.append(row)
                    log.info("%s", row)
    finally:
        for p in proxies:
            p.stop()
    return rows


def _decode(pipe, files, ids, params, spec: Speculation | None):  # type: ignore[no-untyped-def]
    deltas = list(generate(pipe, files.tokenizer, ids, params, 8192, speculation=spec))
    return deltas[-1].stats


DRAFTS = ("ngram", "smollm2-135m:layers=24", "smollm2-135m")


def single(tokens: int, repeats: int = 3, drafts: Sequence[str] = DRAFTS) -> list[dict[str, object]]:
    """Plain and speculative runs alternate (best of `repeats` each), so both see the same machine."""
    files, pipe = load_local("smollm2-135m")
    rows = []
    for name, messages in PROMPTS.items():
        ids = chat_prompt_ids(files.tokenizer, messages)
        params = SamplingParams(max_tokens=tokens)
        for draft in drafts:
            spec = Speculation(load_drafter(draft, files))
            plain = fast = 0.0
            drafted = accepted = passes = produced = 0
            for _ in range(repeats):
                plain = max(plain, _decode(pipe, files, ids, params, None).decode_tokens_per_second)
                st = _decode(pipe, files, ids, params, spec)
                fast = max(fast, st.decode_tokens_per_second)
                drafted, accepted = drafted + st.draft_tokens, accepted + st.accepted_tokens
                passes, produced = passes + st.decode_passes, produced + st.completion_tokens - 1
            rows.append(
                {
                    "prompt": name,
                    "draft": draft,
                    "plain_tps": plain,
                    "spec_tps": fast,
                    "acceptance": accepted / drafted if drafted else 0.0,
                    "tokens_per_pass": produced / passes if passes else 1.0,
                }
            )
            log.info("%s", rows[-1])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--tokens", type=int, default=120)
    ap.add_argument("--delays", default="0,2,10", help="one-way delay per hop, ms, comma-separated")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--draft-tokens", type=int, default=8, help="longest draft (the node adapts below it)")
    ap.add_argument("--skip-single", action="store_true")
    args = ap.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    ring_rows = ring(args.tokens, delays, args.repeats, args.draft_tokens)
    single_rows = [] if args.skip_single else single(args.tokens)
    lines = [
        "| link delay per hop | prompt | plain tok/s | speculative tok/s | speedup | acceptance "
        "| tokens per pass | theory (1-a^(N+1))/(1-a) |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['delay_ms']:g} ms | {r['prompt']} | {r['plain_tps']:.1f} | {r['spec_tps']:.1f} "
            f"| {r['spec_tps'] / r['plain_tps']:.2f}x | {r['acceptance']:.2f} | {r['tokens_per_pass']:.2f} "
            f"| {r['theory']:.2f} (N={r['mean_draft']:.1f}) |"
            for r in ring_rows
        ],
        "",
        "| single node, prompt | draft | plain tok/s | speculative tok/s | speedup | acceptance | tokens per pass |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['prompt']} | {r['draft']} | {r['plain_tps']:.1f} | {r['spec_tps']:.1f} "
            f"| {r['spec_tps'] / r['plain_tps']:.2f}x | {r['acceptance']:.2f} | {r['tokens_per_pass']:.2f} |"
            for r in single_rows
        ],
    ]
    result = {"ring": ring_rows, "single": single_rows}
    write_report(args.out, "speculative", result, lines)


if __name__ == "__main__":
    main()
