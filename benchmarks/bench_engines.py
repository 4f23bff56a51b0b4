"""Engine benchmark: decode and prefill tok/s of each engine on SmolLM2-135M, numpy as the reference.

    python -m benchmarks.bench_engines [--out DIR] [--decode 32] [--prefill 128]

One process, engines one after another, each on the whole model as one shard: a warm-up round
(tinygrad compiles its kernels and captures its decode JIT there), then the best of 3 rounds of a
prefill of N prompt tokens and of M greedy decode steps. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are
unset for this run.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.report import write_report  # noqa: E402
from exo_actor.engines import get_engine  # noqa: E402
from exo_actor.storage.registry import resolve_model  # noqa: E402
from exo_actor.weights import open_model  # noqa: E402


def measure(name: str, files, prefill: int, decode: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    runner = get_engine(name).load_shard(files, 0, files.args.num_hidden_layers)
    prompt = (np.arange(prefill) * 7919 % 40000 + 100).astype(np.int64)
    best_prefill = best_decode = 0.0
    for round_ in range(4):  # round 0 warms up
        rid = f"r{round_}"
        t = time.perf_counter()
        logits = runner.forward(rid, prompt, 0)
        prefill_tps = prefill / (time.perf_counter() - t)
        token, t = int(np.argmax(logits[-1])), time.perf_counter()
        for i in range(decode):
            token = int(np.argmax(runner.forward(rid, np.array([token]), prefill + i)[-1]))
        decode_tps = decode / (time.perf_counter() - t)
        runner.free(rid)
        if round_:
            best_prefill, best_decode = max(best_prefill, prefill_tps), max(best_decode, decode_tps)
    return {"engine": name, "prefill_tps": best_prefill, "decode_tps": best_decode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--prefill", type=int, default=128)
    args = ap.parse_args()
    files = open_model(resolve_model("smollm2-135m"))
    rows = []
    for name, module in (("numpy", "numpy"), ("mlx", "mlx"), ("tinygrad", "tinygrad")):
        if importlib.util.find_spec(module) is None:
            print(f"{name}: not installed, skipped")
            continue
        rows.append(measure(name, files, args.prefill, args.decode))
        print(rows[-1], flush=True)
    ref = rows[0]
    lines = [
        f"| engine | decode tok/s | vs numpy | prefill tok/s ({args.prefill} tokens) | vs numpy |",
        "|---|---|---|---|---|",
        *[
            f"| {r['engine']} | {r['decode_tps']:.1f} | {r['decode_tps'] / ref['decode_tps']:.2f}x "
            f"| {r['prefill_tps']:.0f} | {r['prefill_tps'] / ref['prefill_tps']:.2f}x |"
            for r in rows
        ],
    ]
    write_report(args.out, "engines", {"rows": rows}, lines)


if __name__ == "__main__":
    main()
