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
import json  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

from exo_actor.generation import generate  # noqa: E402
from exo_actor.local import load_local  # noqa: E402
from exo_actor.prefix_cache import PrefixCache  # noqa: E402
from exo_actor.sampling import SamplingParams  # noqa: E402
from exo_actor.tokenizer import chat_prompt_ids  # noqa: E402

TEXT = (
    "The history of the printing press begins with movable type in East Asia and continues with "
    "Gutenberg's press in Mainz around 1440, which spread across Europe within decades. "
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--history", type=int, default=1000)
    args = ap.parse_args()
    files, pipe = load_local("smollm2-135m")
    tok = files.tokenizer
    words = TEXT * (args.history // len(tok.encode(TEXT)) + 1)
    user = tok.decode(tok.encode("Summarize this text: " + words)[: args.history])
    params = SamplingParams(max_tokens=24)
    turn1 = [{"role": "user", "content": user}]
    reply = "".join(d.text for d in generate(pipe, tok, chat_prompt_ids(tok, turn1), params, 8192))
    turn2 = [*turn1, {"role": "assistant", "content": reply}, {"role": "user", "content": "Who built it?"}]
    ids2 = chat_prompt_ids(tok, turn2)

    def ttft(prefix: PrefixCache | None) -> tuple[float, int]:
        deltas = list(generate(pipe, tok, ids2, SamplingParams(max_tokens=1), 8192, None, None, prefix))
        stats = deltas[-1].stats
        return stats.time_to_first_token, stats.cached_tokens

    cold = min(ttft(None)[0] for _ in range(3))
    cached, reused = float("inf"), 0
    for _ in range(3):
        cache = PrefixCache(budget_tokens=100_000)
        list(generate(pipe, tok, chat_prompt_ids(tok, turn1), params, 8192, None, None, cache))
        t, reused = ttft(cache)
        cached = min(cached, t)
        for rid in cache.clear():
            pipe.free(rid)
    lines = [
        f"| second turn ({len(ids2)} prompt tokens) | time to first token | prefilled tokens |",
        "|---|---|---|",
        f"| cold (no prefix cache) | {cold * 1000:.0f} ms | {len(ids2)} |",
        f"| continuing turn 1's cache | {cached * 1000:.0f} ms ({cached / cold:.1%} of cold) | {len(ids2) - reused} |",
    ]
    result = {
        "date": date.today().isoformat(),
        "prompt_tokens": len(ids2),
        "reused_tokens": reused,
        "cold_ttft_s": cold,
        "cached_ttft_s": cached,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prefix.json").write_text(json.dumps(result, indent=2))
    (args.out / "prefix.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
