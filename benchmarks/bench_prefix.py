"""Prefix-cache benchmark: time to first token of a chat's next turn, cold vs continuing the cache.

    python -m benchmarks.bench_prefix [--out DIR] [--history 1000]

SmolLM2-135M in one process (numpy). A conversation whose first turn is a user message of about
HISTORY tokens; the second turn adds the assistant's reply and a short question. Cold: the second
turn's prompt prefilled from scratch. Cached: the first turn ran through a PrefixCache, so the
second turn adopts its KV cache and prefills only the new tokens. Best of 3 each, same run.
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.report import write_report  # noqa: E402
from exo_actor.runtime.generation import generate  # noqa: E402
from exo_actor.runtime.local import load_local  # noqa: E402
from exo_actor.runtime.prefix_cache import PrefixCache  # noqa: E402
from exo_actor.sampling import SamplingParams  # noqa: E402
from exo_actor.tokenizer import chat_prompt_ids  # noqa: E402

TEXT = (
    "The history of the printing press begins with movable type in East Asia and continues with "
    "Gutenberg's press in Mainz around 1440, which spread across Europe within decades. "
)


def measure(history: int, rounds: int = 3) -> dict[str, float]:
    """Best time to first token of the second turn, cold and continuing the prefix cache."""
    files, pipe = load_local("smollm2-135m")
    tok = files.tokenizer
    words = TEXT * (history // len(tok.encode(TEXT)) + 1)
    user = tok.decode(tok.encode("Summarize this text: " + words)[:history])
    params = SamplingParams(max_tokens=24)
    turn1 = [{"role": "user", "content": user}]
    reply = "".join(d.text for d in generate(pipe, tok, chat_prompt_ids(tok, turn1), params, 8192))
    turn2 = [*turn1, {"role": "assistant", "content": reply}, {"role": "user", "content": "Who built it?"}]
    ids2 = chat_prompt_ids(tok, turn2)

    def ttft(prefix: PrefixCache | None) -> tuple[float, int]:
        deltas = list(generate(pipe, tok, ids2, SamplingParams(max_tokens=1), 8192, None, None, prefix))
        stats = deltas[-1].stats
        return stats.time_to_first_token, stats.cached_tokens

    cold = min(ttft(None)[0] for _ in range(rounds))
    cached, reused = float("inf"), 0
    for _ in range(rounds):
        cache = PrefixCache(budget_tokens=100_000)
        list(generate(pipe, tok, chat_prompt_ids(tok, turn1), params, 8192, None, None, cache))
        t, reused = ttft(cache)
        cached = min(cached, t)
        for rid in cache.clear():
            pipe.free(rid)
    return {
        "history_tokens": len(ids2),
        "cached_tokens": reused,
        "cold_s": cold,
        "cached_s": cached,
        "ratio": cached / cold,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--history", type=int, default=1000)
    args = ap.parse_args()
    r = measure(args.history)
    lines = [
        f"| second turn ({r['history_tokens']} prompt tokens) | time to first token | prefilled tokens |",
        "|---|---|---|",
        f"| cold (no prefix cache) | {r['cold_s'] * 1000:.0f} ms | {r['history_tokens']} |",
        f"| continuing turn 1's cache | {r['cached_s'] * 1000:.0f} ms ({r['ratio']:.1%} of cold) "
        f"| {r['history_tokens'] - r['cached_tokens']} |",
    ]
    write_report(args.out, "prefix", r, lines)


if __name__ == "__main__":
    main()
