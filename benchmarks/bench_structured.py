"""Constrained decoding's cost: decode tok/s on SmolLM2 with and without a JSON schema, in one run.

    python -m benchmarks.bench_structured [--out DIR] [--tokens 128] [--repeats 5] [--engine torch]

One process (the engine's LocalPipeline, no gateway), greedy, the same chat prompt; the schema holds one
long string ({"story": string of >= 2,000 characters}) so both runs decode the full --tokens. tok/s is the
generation's own decode rate (first token to last); the best of --repeats, runs interleaved. Also: the
grammar's own time per token (llguidance's mask, measured around Constraint.plan/advance).
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for this run.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.report import write_report  # noqa: E402
from exo_actor.runtime.generation import generate  # noqa: E402
from exo_actor.runtime.local import load_local  # noqa: E402
from exo_actor.sampling import SamplingParams  # noqa: E402
from exo_actor.sampling import grammar as grammar_module  # noqa: E402
from exo_actor.sampling.grammar import json_grammar  # noqa: E402
from exo_actor.tokenizer import chat_prompt_ids  # noqa: E402

SCHEMA = {"type": "object", "properties": {"story": {"type": "string", "minLength": 2000}}, "required": ["story"]}
ASK = [{"role": "user", "content": "Write a long story about a robot who learns to paint, as JSON."}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engine", default="torch")
    args = ap.parse_args()
    files, pipe = load_local("smollm2-135m", engine=args.engine)
    ids = chat_prompt_ids(files.tokenizer, ASK)
    grammar = json_grammar(SCHEMA)
    grammar_seconds = [0.0]
    for name in ("plan", "advance"):  # time the grammar's own work
        original = getattr(grammar_module.Constraint, name)

        def timed(self, *a, _original=original):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return _original(self, *a)
            finally:
                grammar_seconds[0] += time.perf_counter() - t

        setattr(grammar_module.Constraint, name, timed)

    def run(g: str | None) -> tuple[float, int]:
        params = SamplingParams(max_tokens=args.tokens, grammar=g)
        deltas = list(generate(pipe, files.tokenizer, ids, params, files.args.max_position_embeddings))
        stats = deltas[-1].stats
        assert stats is not None
        return stats.decode_tokens_per_second, stats.completion_tokens

    run(None), run(grammar)  # warm up
    plain, constrained = [], []
    grammar_seconds[0] = 0.0
    constrained_tokens = 0
    for _ in range(args.repeats):
        plain.append(run(None)[0])
        tps, n = run(grammar)
        constrained.append(tps)
        constrained_tokens += n
    per_token_us = grammar_seconds[0] / max(constrained_tokens, 1) * 1e6
    best_plain, best_constrained = max(plain), max(constrained)
    result = {
        "engine": args.engine,
        "tokens": args.tokens,
        "plain_tps": best_plain,
        "constrained_tps": best_constrained,
        "ratio": best_constrained / best_plain,
        "grammar_us_per_token": per_token_us,
        "runs": {"plain": plain, "constrained": constrained},
    }
    lines = [
        f"SmolLM2-135M-Instruct, {args.engine} engine, greedy, {args.tokens} tokens, "
        f"best of {args.repeats} (interleaved):",
        "",
        "| decode | tok/s | vs plain |",
        "|---|---|---|",
        f"| plain | {best_plain:.1f} | 1.00x |",
        f"| JSON schema (llguidance) | {best_constrained:.1f} | {best_constrained / best_plain:.2f}x |",
        "",
        f"The grammar's own work: {per_token_us:.0f} us per token (mask + consume).",
    ]
    write_report(args.out, "structured", result, lines)


if __name__ == "__main__":
    main()
