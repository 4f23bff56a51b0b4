"""Before and after a change, same run: SmolLM2-135M decode and prefill tok/s of the code at another git
revision against this checkout, engine by engine.

    python -m benchmarks.bench_ab [--before REV] [--engines numpy,torch] [--rounds 5] [--out DIR]

The other revision is checked out into a temporary git worktree. Each round runs one process per
(revision, engine) pair, alternating before / after so that the machine's drift hits both alike; a
process loads the model as one shard, warms up, and times a prefill of 128 prompt tokens and 64 greedy
decode steps (bench_engines.measure, the same code for both). The table gives the median and the best
of the rounds. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for the children.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import write_report

ROOT = Path(__file__).resolve().parent.parent
# one measurement in a child process whose sys.path starts at the revision's tree
_CHILD = """
import json, sys
from benchmarks.bench_engines import measure
from exo_actor.storage.registry import resolve_model
from exo_actor.weights import open_model
files = open_model(resolve_model("smollm2-135m"))
print(json.dumps(measure(sys.argv[1], files, 128, 64)))
"""


def _measure(tree: Path, engine: str, cache: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
    env["PYTHONPATH"] = str(tree)
    env["EXO_ACTOR_CACHE"] = str(cache)  # each tree packs its own torch weights
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, engine], cwd=tree, env=env, capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="9e82e8a", help="the revision to compare with (default: before #22)")
    ap.add_argument("--engines", default="numpy,torch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    args = ap.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True)
        try:
            runs: dict[str, dict[str, list[dict[str, float]]]] = {e: {"before": [], "after": []} for e in engines}
            for r in range(args.rounds):
                for engine in engines:
                    for label, tree in (("before", before), ("after", ROOT)):
                        runs[engine][label].append(_measure(tree, engine, Path(tmp) / f"cache-{label}"))
                        print(r, engine, label, runs[engine][label][-1], flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    lines = [
        f"SmolLM2-135M Q4_1, one shard, {args.rounds} alternating rounds: {args.before} (before) vs "
        f"{head.stdout.strip()} (after); median (best) of the rounds",
        "",
        "| engine | decode tok/s before | after | after / before | prefill tok/s before | after |",
        "|---|---|---|---|---|---|",
    ]
    summary = {}
    for engine in engines:
        row = {}
        for label in ("before", "after"):
            d = [m["decode_tps"] for m in runs[engine][label]]
            p = [m["prefill_tps"] for m in runs[engine][label]]
            row[label] = {"decode": statistics.median(d), "decode_best": max(d), "prefill": statistics.median(p)}
        summary[engine] = row
        b, a = row["before"], row["after"]
        lines.append(
            f"| {engine} | {b['decode']:.1f} ({b['decode_best']:.1f}) | {a['decode']:.1f} ({a['decode_best']:.1f}) "
            f"| {a['decode'] / b['decode']:.2f}x | {b['prefill']:.0f} | {a['prefill']:.0f} |"
        )
    write_report(args.out, "ab", {"before": args.before, "summary": summary, "runs": runs}, lines)


if __name__ == "__main__":
    main()
