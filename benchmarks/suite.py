"""The benchmark suite behind `exo-actor bench`: every section in one run, one report.

    exo-actor bench [--profile quick|full] [--out DIR] [--only SECTION,...]
    python -m benchmarks.suite ...           (the same, from a source checkout)

Sections: transport (exo-actor's wire vs raw TCP), engine (numpy vs the memory-bandwidth bound,
HF transformers and llama.cpp when installed), pipeline (1/2/3 processes, injected link latency),
speculative, batching (concurrent streams), prefix (second chat turn), gateway (concurrent HTTP
streams), memory (resident memory of each shard process). Writes DIR/suite.json, DIR/suite.md and
one PNG per section, and prints the tables. Each section measures its baseline in the same run
(the machines are noisy). `quick` is the CI smoke run (small sizes; its numbers are not meant to be
quoted); `full` is what docs/performance.md reports and takes under 10 minutes on 2 cores.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are removed from this process's environment before numpy loads
(OpenBLAS then picks its kernels for the CPU), as in every benchmark here.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.report import machine  # noqa: E402

log = logging.getLogger("exo_actor.bench")

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "round_trip_repeats": 20,
        "decode_tokens": 16,
        "prompt_tokens": 64,
        "rounds": 1,
        "ring_procs": [1],
        "ring_tokens": 12,
        "delays_ms": [0.0, 5.0],
        "spec_tokens": 24,
        "drafts": ["ngram"],
        "streams": [1, 4],
        "stream_tokens": 12,
        "prefix_history": 200,
        "gateway_streams": [1, 4],
        "gateway_tokens": 12,
        "memory_nodes": 2,
        "ray_passes": 50,
        "ray_tokens": 0,  # quick: the transport chains only (a Ray ring start-up costs a minute)
    },
    "full": {
        "round_trip_repeats": 200,
        "decode_tokens": 96,
        "prompt_tokens": 400,
        "rounds": 2,
        "ring_procs": [1, 2, 3],
        "ring_tokens": 64,
        "delays_ms": [0.0, 5.0],
        "spec_tokens": 96,
        "drafts": ["ngram", "smollm2-135m:layers=24"],
        "streams": [1, 2, 4, 8, 16],
        "stream_tokens": 48,
        "prefix_history": 1000,
        "gateway_streams": [1, 4, 8],
        "gateway_tokens": 48,
        "memory_nodes": 3,
        "ray_passes": 300,
        "ray_tokens": 64,
    },
}


@dataclass
class Section:
    name: str
    rows: list[dict[str, Any]]
    table: list[str]
    notes: list[str] = field(default_factory=list)
    plot: Callable[[Any], None] | None = None  # draws on a matplotlib Axes
    seconds: float = 0.0


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# ---- sections ------------------------------------------------------------------------------------
def transport(p: dict[str, Any]) -> Section:
    from benchmarks.bench_cluster import round_trips

    rows = round_trips(p["round_trip_repeats"])
    for r in rows:
        r["ratio"] = r["zmq_us"] / r["tcp_us"]
        r["zmq_mbps"] = 2 * r["bytes"] / r["zmq_us"]  # bytes both ways per round trip, MB/s
        r["tcp_mbps"] = 2 * r["bytes"] / r["tcp_us"]
    table = [
        "| tensor | exo-actor wire round trip | raw TCP round trip | ratio | wire MB/s | TCP MB/s |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['bytes'] >> 10} KiB | {r['zmq_us']:.0f} us | {r['tcp_us']:.0f} us | {r['ratio']:.2f}x "
            f"| {r['zmq_mbps']:.0f} | {r['tcp_mbps']:.0f} |"
            for r in rows
        ],
    ]

    def plot(ax: Any) -> None:
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["zmq_us"] for r in rows], 0.4, label="exo-actor wire (ZeroMQ + codec)")
        ax.bar(x + 0.2, [r["tcp_us"] for r in rows], 0.4, label="raw TCP")
        ax.set_xticks(x, [f"{r['bytes'] >> 10} KiB" for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel("round trip (us)")
        ax.legend()

    return Section("transport", rows, table, plot=plot)


def engine(p: dict[str, Any]) -> Section:
    from benchmarks.bench_engine import LlamaCppRunner, NumpyRunner, TransformersRunner, streaming_bandwidth

    runners: list[Any] = [NumpyRunner()]
    notes = []
    for cls in (TransformersRunner, LlamaCppRunner):
        try:
            runners.append(cls(runners[0].prompt))
        except ImportError as exc:
            notes.append(f"{cls.name}: skipped, not installed ({exc})")
    best = {r.name: {"decode_tps": 0.0, "prefill_tps": 0.0} for r in runners}
    bw = 0.0
    for rnd in range(p["rounds"]):
        bw = max(bw, streaming_bandwidth(256 << 20, 2))
        prompt = np.random.default_rng(rnd).integers(100, 40000, size=p["prompt_tokens"])
        for r in runners:
            best[r.name]["decode_tps"] = max(best[r.name]["decode_tps"], r.decode(p["decode_tokens"]))
            best[r.name]["prefill_tps"] = max(best[r.name]["prefill_tps"], r.prefill(prompt))
    bound = bw * 1e9 / runners[0].weight_bytes
    rows = [{"engine": "memory-bandwidth bound (fp32 weights)", "decode_tps": bound, "prefill_tps": None}]
    rows += [{"engine": name, **v} for name, v in best.items()]
    table = [
        f"SmolLM2-135M, 1 stream, greedy, {p['decode_tokens']} decoded tokens, {p['prompt_tokens']}-token prefill; "
        f"{runners[0].weight_bytes / 1e6:.0f} MB of fp32 weights per token at {bw:.1f} GB/s",
        "",
        "| engine | decode tok/s | prefill tok/s | decode / bound |",
        "|---|---|---|---|",
        *[
            f"| {r['engine']} | {r['decode_tps']:.1f} | {_num(r['prefill_tps'], '.0f')} "
            f"| {r['decode_tps'] / bound:.2f} |"
            for r in rows
        ],
    ]

    def plot(ax: Any) -> None:
        names = [r["engine"].replace(" (fp32 weights)", "") for r in rows]
        ax.barh(names, [r["decode_tps"] for r in rows])
        ax.set_xlabel("decode tok/s (1 stream)")
        ax.invert_yaxis()

    return Section("engine", rows, table, notes, plot)


_RINGS: dict[str, list[dict[str, Any]]] = {}


def _delayed_ring(p: dict[str, Any]) -> list[dict[str, Any]]:
    """Plain and speculative decode through a 3-process ring at each link delay: run once, used by
    the pipeline section (plain) and the speculative section."""
    from benchmarks.bench_speculative import ring

    key = json.dumps(p, sort_keys=True)
    if key not in _RINGS:
        _RINGS[key] = ring(p["ring_tokens"], p["delays_ms"], 1, 8)
    return _RINGS[key]


def pipeline(p: dict[str, Any]) -> Section:
    from benchmarks.bench_cluster import ring_decode

    rows: list[dict[str, Any]] = []
    for n in p["ring_procs"]:
        rows.append({"processes": n, "delay_ms": 0.0, "decode_tps": ring_decode(n, p["ring_tokens"], False, 2)})
    base = rows[0]["decode_tps"]
    for r in rows:
        r["vs_one"] = r["decode_tps"] / base
    delayed = [r for r in _delayed_ring(p) if r["delay_ms"] and r["prompt"] == "open"]
    for r in delayed:
        rows.append(
            {"processes": 3, "delay_ms": r["delay_ms"], "decode_tps": r["plain_tps"], "vs_one": r["plain_tps"] / base}
        )
    table = [
        f"SmolLM2-135M split evenly over `exo-actor start` processes on loopback, greedy, {p['ring_tokens']} tokens; "
        "link delay injected per hop by a TCP proxy",
        "",
        "| processes | link delay per hop | decode tok/s | vs 1 process |",
        "|---|---|---|---|",
        *[f"| {r['processes']} | {r['delay_ms']:g} ms | {r['decode_tps']:.1f} | {r['vs_one']:.2f}x |" for r in rows],
    ]

    def plot(ax: Any) -> None:
        labels = [f"{r['processes']} proc" + (f"\n+{r['delay_ms']:g} ms/hop" if r["delay_ms"] else "") for r in rows]
        ax.bar(labels, [r["decode_tps"] for r in rows])
        ax.set_ylabel("decode tok/s")

    return Section("pipeline", rows, table, plot=plot)


def speculative(p: dict[str, Any]) -> Section:
    from benchmarks.bench_speculative import ring as delayed_ring
    from benchmarks.bench_speculative import single

    rows = [{"where": "1 process", **r} for r in single(p["spec_tokens"], p["rounds"], drafts=p["drafts"])]
    rows += [
        {"where": f"3 processes, {r['delay_ms']:g} ms/hop", "draft": "ngram", **r}
        for r in delayed_ring(p["spec_tokens"], p["delays_ms"][-1:], 1, 8)
    ]
    table = [
        f"SmolLM2-135M, greedy, {p['spec_tokens']} tokens in one process, {p['ring_tokens']} through the ring; "
        "plain and speculative decoding alternate in the same run",
        "",
        "| where | prompt | draft | plain tok/s | speculative tok/s | speedup | acceptance | tokens per pass |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['where']} | {r['prompt']} | {r['draft']} | {r['plain_tps']:.1f} | {r['spec_tps']:.1f} "
            f"| {r['spec_tps'] / r['plain_tps']:.2f}x | {r['acceptance']:.2f} | {r['tokens_per_pass']:.2f} |"
            for r in rows
        ],
    ]

    def plot(ax: Any) -> None:
        labels = [f"{r['where']}\n{r['prompt']}, {r['draft']}" for r in rows]
        ax.barh(labels, [r["spec_tps"] / r["plain_tps"] for r in rows])
        ax.axvline(1.0, color="grey", lw=1)
        ax.set_xlabel("speculative / plain decode tok/s")
        ax.invert_yaxis()

    return Section("speculative", rows, table, plot=plot)


def batching(p: dict[str, Any]) -> Section:
    from benchmarks.bench_batching import measure, table

    rows = measure(p["streams"], p["stream_tokens"], p["rounds"])

    def plot(ax: Any) -> None:
        ax.plot([r["streams"] for r in rows], [r["aggregate_tps"] for r in rows], "o-", label="aggregate")
        ax.plot([r["streams"] for r in rows], [r["per_stream_tps"] for r in rows], "s--", label="slowest stream")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("decode tok/s")
        ax.legend()

    head = f"SmolLM2-135M, one process, continuous batching, greedy, {p['stream_tokens']} tokens per stream"
    return Section("batching", rows, [head, "", *table(rows)], plot=plot)


def prefix(p: dict[str, Any]) -> Section:
    from benchmarks.bench_prefix import measure

    r = measure(p["prefix_history"], p["rounds"] + 1)
    rows = [r]
    table = [
        f"SmolLM2-135M, one process: a chat's second turn with a {r['history_tokens']}-token history",
        "",
        "| second turn | time to first token |",
        "|---|---|",
        f"| cold (whole conversation prefilled) | {r['cold_s'] * 1000:.0f} ms |",
        f"| continuing the prefix cache ({r['cached_tokens']} tokens reused) | {r['cached_s'] * 1000:.0f} ms "
        f"({r['ratio']:.1%} of cold) |",
    ]

    def plot(ax: Any) -> None:
        ax.bar(["cold", "prefix cache"], [r["cold_s"] * 1000, r["cached_s"] * 1000])
        ax.set_ylabel("time to first token (ms)")

    return Section("prefix", rows, table, plot=plot)


def gateway(p: dict[str, Any]) -> Section:
    from benchmarks.bench_gateway import concurrent
    from tests.api.servers import process_server

    top = max(p["gateway_streams"])
    with process_server("--model", "smollm2-135m", "--max-concurrent", str(top)) as srv:
        asyncio.run(concurrent(srv.url, 1, 4))  # warm-up
        rows = [asyncio.run(concurrent(srv.url, n, p["gateway_tokens"])) for n in p["gateway_streams"]]
    table = [
        f"`exo-actor start` in its own process, httpx streaming clients on loopback, {p['gateway_tokens']} tokens each",
        "",
        "| concurrent streams | aggregate tok/s (incl. prefill) | TTFT p50 | TTFT p99 |",
        "|---|---|---|---|",
        *[
            f"| {r['streams']} | {r['aggregate_tps']:.1f} | {r['ttft_p50']:.2f} s | {r['ttft_p99']:.2f} s |"
            for r in rows
        ],
    ]

    def plot(ax: Any) -> None:
        ax.plot([r["streams"] for r in rows], [r["aggregate_tps"] for r in rows], "o-")
        ax.set_xlabel("concurrent HTTP streams")
        ax.set_ylabel("aggregate tok/s")

    return Section("gateway", rows, table, plot=plot)


def _rss_mb(pid: int) -> float:
    from exo_actor.runtime.memory import rss_bytes

    return rss_bytes(pid) / 2**20


def memory(p: dict[str, Any]) -> Section:
    from tests.api.servers import loopback_ring

    n = p["memory_nodes"]
    with loopback_ring(Path(tempfile.mkdtemp()), ["4"] * n) as ring:
        for url in ring["urls"]:  # one request, so every shard has run
            httpx.post(
                url + "/v1/chat/completions",
                json={"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
                timeout=300,
            ).raise_for_status()
        plan = httpx.get(ring["urls"][0] + "/v1/cluster", timeout=30).json()["plan"]
        rows = []
        for i, proc in enumerate(ring["procs"]):
            a = next(x for x in plan if x["node"] == f"node{i}")
            rows.append({"node": f"node{i}", "layers": f"[{a['start']}, {a['end']})", "rss_mb": _rss_mb(proc.pid)})
    from tests.api.servers import process_server

    with process_server("--model", "smollm2-135m") as srv:
        httpx.post(
            srv.url + "/v1/chat/completions",
            json={"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            timeout=300,
        ).raise_for_status()
        whole = _rss_mb(srv.process.pid)
    rows.append({"node": "single process", "layers": "[0, 30) + head", "rss_mb": whole})
    table = [
        f"Resident memory (RSS) of each `exo-actor start` process after a request: a {n}-node ring vs one process",
        "",
        "| process | layers | RSS |",
        "|---|---|---|",
        *[f"| {r['node']} | {r['layers']} | {r['rss_mb']:.0f} MB |" for r in rows],
    ]

    def plot(ax: Any) -> None:
        ax.bar([r["node"] for r in rows], [r["rss_mb"] for r in rows])
        ax.set_ylabel("RSS (MB)")

    return Section("memory", rows, table, plot=plot)


def ray_backend(p: dict[str, Any]) -> Section:
    import importlib.util

    from benchmarks.bench_ray import measure, table

    if importlib.util.find_spec("ray") is None:
        raise RuntimeError("the ray section needs the `ray` package: pip install 'exo-actor[ray]'")
    r = measure(p["ray_tokens"], p["rounds"], p["ray_passes"])
    t = r["transport"]
    rows = [{"path": k.removesuffix("_us"), "us_per_pass": v} for k, v in t.items() if isinstance(v, float)]
    for name, tps in (r["decode_tps"] or {}).items():
        rows.append({"path": f"decode {name}", "decode_tps": tps})
    notes = [f"Ray Compiled Graph {t['ray_compiled_us']}"] if isinstance(t["ray_compiled_us"], str) else []

    def plot(ax: Any) -> None:
        chains = [row for row in rows if "us_per_pass" in row]
        ax.bar([row["path"] for row in chains], [row["us_per_pass"] for row in chains])
        ax.set_ylabel("us per pass, driver -> 3 stages -> driver")

    return Section("ray", rows, table(r), notes, plot=plot)


SECTIONS: dict[str, Callable[[dict[str, Any]], Section]] = {
    "transport": transport,
    "engine": engine,
    "pipeline": pipeline,
    "speculative": speculative,
    "batching": batching,
    "prefix": prefix,
    "gateway": gateway,
    "memory": memory,
    "ray": ray_backend,
}


# ---- the run -------------------------------------------------------------------------------------
def _plot(section: Section, out: Path) -> str | None:
    if section.plot is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    section.plot(ax)
    ax.set_title(section.name)
    fig.tight_layout()
    path = out / f"{section.name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def run(profile: str, out: Path, only: list[str]) -> int:
    """Run the sections, write the report; returns the exit status (1 if any section failed)."""
    p = PROFILES[profile]
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {"date": date.today().isoformat(), "machine": machine(), "profile": profile}
    md = [f"# exo-actor benchmark suite ({profile}), {report['date']}", "", f"Machine: {report['machine']}", ""]
    failed = []
    for name in only:
        log.info("== %s", name)
        t0 = time.perf_counter()
        try:
            section = SECTIONS[name](p)
        except Exception as exc:  # noqa: BLE001 - the report says which section failed and why
            failed.append(name)
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            md += [f"## {name}", "", f"FAILED: {type(exc).__name__}: {exc}", ""]
            log.error("section %s failed:\n%s", name, traceback.format_exc())
            continue
        section.seconds = time.perf_counter() - t0
        png = _plot(section, out)
        report[name] = {"rows": section.rows, "notes": section.notes, "seconds": round(section.seconds, 1), "plot": png}
        md += [f"## {name}", "", *section.table, ""]
        md += [f"Note: {n}" for n in section.notes] + ([""] if section.notes else [])
        md += [f"![{name}]({png})", ""] if png else []
        print("\n".join(["", f"## {name} ({section.seconds:.0f} s)", *section.table, *section.notes]), flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["failed"] = failed
    md.append(f"Total: {report['seconds']:.0f} s" + (f"; FAILED sections: {', '.join(failed)}" if failed else ""))
    (out / "suite.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "suite.md").write_text("\n".join(md) + "\n")
    print(f"\nwrote {out / 'suite.md'}, {out / 'suite.json'} and the plots in {report['seconds']:.0f} s", flush=True)
    return 1 if failed else 0


def parse_sections(text: str | None) -> list[str]:
    names = list(SECTIONS) if not text else [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise ValueError(f"unknown section(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(SECTIONS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="exo-actor bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=list(PROFILES), default="quick")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--only", help=f"comma-separated sections ({', '.join(SECTIONS)}); default: all")
    args = ap.parse_args(argv)
    try:
        sections = parse_sections(args.only)
    except ValueError as exc:
        ap.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return run(args.profile, args.out, sections)


if __name__ == "__main__":
    sys.exit(main())
