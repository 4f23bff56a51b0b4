"""Churn soak: 4 loopback nodes under 8 streaming clients while nodes are killed and frozen in turn.

    python -m benchmarks.bench_churn [--minutes 20] [--every 120] [--down 8] [--out DIR] [--strict]

Four `exo-actor start` processes serve SmolLM2-135M (numpy engine, --discovery manual and a peers file, so no
beacon leaves loopback; equal --memory, one ring of four). Eight client threads stream greedy chat requests
(four prompts, 48-96 tokens) through the gateways. Every --every seconds one node, round-robin, is killed
(SIGKILL, then after --down seconds started again with the same command) or frozen (SIGSTOP for --down seconds,
longer than the 3 s peer timeout, then SIGCONT); kills and freezes alternate, and over the run each node gets
both. Before a fault the victim's gateway is taken out of the clients' rotation and drained: a client whose
gateway process dies loses its connection, which no server can save; what is measured is the failover of the
requests in flight on the ring, which the victim's shard serves until the fault. A 503 "not ready" at
admission (a gateway re-planning) is retried after 1 s, as OpenAI's client does, and counted.

Measured: requests completed and failed (each failure's error is printed); every output against the
single-process greedy text (load_local + generate, computed here first); the longest gap between two stream
events any client saw; per-node RSS (VmRSS), open descriptors and threads after warm-up and at the end (a
restarted node is a new process, compared with its slot's first warm-up value). Exit code 1 if a request
failed, an output differed or the ring did not heal (--strict: also RSS beyond +-10% or descriptors growing).
Node logs stay in OUT/churn-logs. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from benchmarks.report import write_report  # noqa: E402
from tests.api.servers import cluster_info, free_port, restart_node, stop_processes, wait_ready  # noqa: E402

NODES = 4
CLIENTS = 8
MODEL = "smollm2-135m"
PEER_TIMEOUT = 3.0  # --peer-timeout's default: a frozen node must stay frozen longer than this
ADMISSION_WAIT = 120.0  # how long a client retries 503 "not ready" before the request counts as failed
READ_TIMEOUT = 120.0  # a stream silent this long counts as failed
RSS_TOLERANCE = 0.10
FD_SLACK = 3  # descriptors an end value may exceed its warm-up value by and still count as flat
PROMPTS: list[tuple[str, int]] = [
    ("Write a long story about a robot who learns to paint.", 96),
    ("Explain how a bicycle works to a ten-year-old.", 64),
    ("List some tips for growing tomatoes at home.", 80),
    ("What is the capital of France? Tell me about its history.", 48),
]


@dataclass
class Outcome:
    client: int
    node: int  # the gateway's slot
    prompt: int
    started: float  # seconds since the soak began
    ok: bool
    matches: bool
    tokens: int
    seconds: float
    first_chunk_s: float  # from the first attempt to the first event, 503 retries included
    longest_pause: float  # longest gap between two stream events after the first
    pause_ended: float  # when that gap ended, seconds since the soak began (which fault it follows)
    retries_503: int
    error: str = ""


@dataclass
class Fault:
    index: int
    node: int
    kind: str  # kill | freeze
    at: float  # seconds since the soak began
    clock: str  # the wall clock at the fault, as the node logs write it
    drained_s: float  # waiting for the clients on the victim's gateway to finish
    in_flight: int  # requests streaming through the other gateways when the fault hit
    survivors_ready_s: float | None  # until every other gateway was ready on a plan without the victim
    whole_s: float | None  # from the node's return (restart or SIGCONT) until all four were on one plan
    pid_before: int
    pid_after: int


def references() -> list[str]:
    """The single-process greedy text of each prompt (what `exo-actor run` prints), numpy engine."""
    from exo_actor.runtime.generation import generate
    from exo_actor.runtime.local import load_local
    from exo_actor.sampling import SamplingParams
    from exo_actor.tokenizer import chat_prompt_ids

    files, pipe = load_local(MODEL, engine="numpy")
    texts = []
    for prompt, n in PROMPTS:
        ids = chat_prompt_ids(files.tokenizer, [{"role": "user", "content": prompt}])
        params = SamplingParams(temperature=0, max_tokens=n)
        texts.append("".join(d.text for d in generate(pipe, files.tokenizer, ids, params, 8192)))
    del files, pipe
    gc.collect()
    return texts


def proc_stats(pid: int) -> dict[str, float] | None:
    """RSS (MiB), open descriptors and threads of a live process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = {line.split(":")[0]: line.split()[1] for line in status if line.startswith(("VmRSS:", "Threads:"))}
    if "VmRSS" not in fields:  # a zombie: killed, not reaped yet
        return None
    return {"rss_mb": round(int(fields["VmRSS"]) / 1024, 1), "fds": fds, "threads": int(fields["Threads"])}


@contextlib.contextmanager
def ring_of_four(folder: Path) -> Iterator[dict[str, list[Any]]]:
    """`exo-actor -v start` node0..node3 on loopback: manual peers (no beacons), equal --memory, one ring.
    -v logs plans, failovers and replays into folder/nodeN.log, the evidence when something goes wrong."""
    ports, api = [free_port() for _ in range(NODES)], [free_port() for _ in range(NODES)]
    (folder / "peers.toml").write_text(f"peers = {json.dumps([f'127.0.0.1:{p}' for p in ports])}\n")
    procs = []
    for i in range(NODES):
        cmd = [sys.executable, "-m", "exo_actor.cli", "-v", "start", "--model", MODEL, "--engine", "numpy"]
        cmd += ["--node-id", f"node{i}", "--host", "127.0.0.1", "--port", str(ports[i]), "--memory", "4"]
        cmd += ["--api-host", "127.0.0.1", "--api-port", str(api[i]), "--peers", str(folder / "peers.toml")]
        cmd += ["--discovery", "manual"]
        with open(folder / f"node{i}.log", "w") as log:  # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    urls = [f"http://127.0.0.1:{p}" for p in api]
    try:
        for url in urls:
            wait_ready(url, timeout=300)
        yield {"urls": urls, "procs": procs, "ports": ports}
    finally:
        for proc in procs:  # never leave a frozen node behind
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        stop_processes(procs)


def plan_seconds(urls: list[str], nodes: list[str], timeout: float) -> float | None:
    """Seconds until every gateway in `urls` is ready on a plan of exactly `nodes` (None: not in time)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            infos = [cluster_info(u) for u in urls]
            if all(i["state"] == "ready" and [p["node"] for p in i["plan"]] == nodes for i in infos):
                return time.monotonic() - start
        time.sleep(0.25)
    return None


class Soak:
    def __init__(self, ring: dict[str, list[Any]], expected: list[str], logs: Path) -> None:
        self.ring, self.expected, self.logs = ring, expected, logs
        self.urls: list[str] = ring["urls"]
        self.names = [f"node{i}" for i in range(NODES)]
        self.lock = threading.Lock()
        self.available = set(range(NODES))
        self.in_flight = [0] * NODES
        self.outcomes: list[Outcome] = []
        self.faults: list[Fault] = []
        self.samples: list[dict[str, Any]] = []
        self.heal_failures: list[str] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.started = datetime.now().isoformat(sep=" ", timespec="milliseconds")

    def now(self) -> float:
        return time.monotonic() - self.t0

    # clients --------------------------------------------------------------------------------------
    def _pick(self, client: int) -> int:
        """The available gateway with the fewest of our streams (ties: by client), counted in flight."""
        while True:
            with self.lock:
                if self.available:
                    slot = min(self.available, key=lambda s: (self.in_flight[s], (s - client) % NODES))
                    self.in_flight[slot] += 1
                    return slot
            time.sleep(0.1)

    def request(self, client: int, slot: int, prompt: int) -> Outcome:
        """One greedy streamed chat completion through gateway `slot`, checked against its reference."""
        text, n = PROMPTS[prompt]
        messages = [{"role": "user", "content": text}]
        body = {"model": MODEL, "messages": messages, "max_tokens": n, "temperature": 0, "stream": True}
        out = Outcome(client, slot, prompt, self.now(), False, False, 0, 0.0, 0.0, 0.0, 0.0, 0)
        started, events, arrivals = time.monotonic(), [], []  # arrivals: (time, content) of each chunk
        timeout = httpx.Timeout(10.0, read=READ_TIMEOUT)
        try:
            while True:
                with httpx.stream("POST", self.urls[slot] + "/v1/chat/completions", json=body, timeout=timeout) as r:
                    if r.status_code == 503 and time.monotonic() - started < ADMISSION_WAIT:
                        r.read()
                        out.retries_503 += 1
                        time.sleep(1.0)
                        continue
                    if r.status_code != 200:
                        out.error = f"HTTP {r.status_code}: {r.read().decode(errors='replace')[:300]}"
                        break
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            event = line[6:] if line == "data: [DONE]" else json.loads(line[6:])
                            events.append(event)
                            choices = event.get("choices") if isinstance(event, dict) else None
                            arrivals.append(
                                (time.monotonic(), (choices[0]["delta"].get("content") or "") if choices else "")
                            )
                    break
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            out.error = f"{type(exc).__name__}: {exc}"
        times = [t for t, _ in arrivals]
        out.seconds = time.monotonic() - started
        out.first_chunk_s = (times[0] - started) if times else out.seconds
        gaps = [(b - a, b) for a, b in zip(times, times[1:])]
        if gaps:
            out.longest_pause, ended = max(gaps)
            out.pause_ended = ended - self.t0
        pieces = [piece for _, piece in arrivals if piece]
        out.tokens = len(pieces)
        errors = [e for e in events if isinstance(e, dict) and "error" in e]
        if not out.error and errors:
            out.error = f"error event: {json.dumps(errors[0])[:300]}"
        elif not out.error and (not events or events[-1] != "[DONE]"):
            out.error = f"the stream ended without [DONE]: {str(events[-2:])[:300]}"
        out.ok = not out.error
        out.matches = out.ok and "".join(pieces) == self.expected[prompt]
        if out.ok and not out.matches:
            out.error = f"output differs from the reference{self._divergence(arrivals, prompt)}: {''.join(pieces)!r}"
        return out

    def _divergence(self, arrivals: list[tuple[float, str]], prompt: int) -> str:
        """Where a stream left its reference: the chunk, and when it came (seconds since the soak began)."""
        got = ""
        for k, (at, piece) in enumerate(arrivals):
            got += piece
            if not self.expected[prompt].startswith(got):
                return f" from event {k} (came at {at - self.t0:.1f} s) on"
        return " (a prefix of it)"

    def client(self, client: int) -> None:
        """Stream request after request, each through the least busy available gateway, until stopped."""
        k = client
        while not self.stop.is_set():
            slot = self._pick(client)
            try:
                out = self.request(client, slot, k % len(PROMPTS))
            finally:
                with self.lock:
                    self.in_flight[slot] -= 1
            k += 1
            if out.error:
                print(f"FAILED client {client} via node{slot} at {out.started:.0f} s: {out.error}", flush=True)
            with self.lock:
                self.outcomes.append(out)

    def warm_up(self) -> list[Outcome]:
        """Every prompt through every gateway once, CLIENTS at a time."""
        jobs = [(slot, p) for slot in range(NODES) for p in range(len(PROMPTS))]
        results: list[Outcome] = []

        def run(i: int) -> None:
            for slot, p in jobs[i::CLIENTS]:
                results.append(self.request(i, slot, p))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    # faults ---------------------------------------------------------------------------------------
    def fault(self, index: int, slot: int, kind: str, down: float) -> Fault:
        """Drain the victim's gateway, kill or freeze it for `down` s, bring it back, wait for the whole ring."""
        with self.lock:
            self.available.discard(slot)
        t = time.monotonic()
        while self.in_flight[slot] and time.monotonic() - t < READ_TIMEOUT + ADMISSION_WAIT:
            time.sleep(0.1)
        drained = time.monotonic() - t
        proc = self.ring["procs"][slot]
        at, in_flight, pid = self.now(), sum(self.in_flight), proc.pid
        clock = datetime.now().isoformat(sep=" ", timespec="milliseconds")
        print(f"[{at:6.0f} s] fault {index}: {kind} node{slot} ({in_flight} streams in flight)", flush=True)
        t = time.monotonic()
        if kind == "kill":
            proc.kill()
            proc.wait()
        else:
            proc.send_signal(signal.SIGSTOP)
        others = [j for j in range(NODES) if j != slot]
        ready = plan_seconds([self.urls[j] for j in others], [self.names[j] for j in others], 120)
        time.sleep(max(0.0, down - (time.monotonic() - t)))
        if kind == "kill":
            restart_node(self.ring, slot, self.logs / f"node{slot}-restart{index}.log")
        else:
            proc.send_signal(signal.SIGCONT)
        whole = plan_seconds(self.urls, self.names, 300)
        if ready is None:
            self.heal_failures.append(f"fault {index}: the survivors of node{slot}'s {kind} never served without it")
        if whole is None:
            self.heal_failures.append(f"fault {index}: the ring of four did not come back after node{slot}'s {kind}")
        with self.lock:
            self.available.add(slot)
        done = Fault(index, slot, kind, at, clock, drained, in_flight, ready, whole, pid, self.ring["procs"][slot].pid)
        print(f"[{self.now():6.0f} s] fault {index} healed: {done}", flush=True)
        return done

    def inject(self, minutes: float, every: float, down: float) -> None:
        """A fault at every*(k + 1/2) s, node k mod 4, kills and freezes alternating (each node gets both)."""
        k = 0
        while (at := every * (k + 0.5)) < minutes * 60:
            time.sleep(max(0.0, at - self.now()))
            kind = "kill" if (k + k // NODES) % 2 == 0 else "freeze"
            self.faults.append(self.fault(k, k % NODES, kind, down))
            k += 1

    def sample(self, every: float = 10.0) -> None:
        """RSS, descriptors and threads of each node's current process every `every` s."""
        while not self.stop.wait(every):
            self.snapshot("run")

    def snapshot(self, label: str) -> list[dict[str, Any]]:
        rows = []
        for slot, proc in enumerate(self.ring["procs"]):
            if proc.poll() is None and (stats := proc_stats(proc.pid)) is not None:
                rows.append({"t": round(self.now(), 1), "label": label, "node": slot, "pid": proc.pid, **stats})
        with self.lock:
            self.samples.extend(rows)
        return rows

    def kv_check(self) -> dict[str, Any]:
        """KV caches each node holds once idle, against the entries the routers' prefix caches keep."""
        infos = [cluster_info(u) for u in self.urls]
        return {
            "kv_requests": [i["kv_requests"] for i in infos],
            "prefix_entries": sum((i.get("prefix_cache") or {}).get("entries", 0) for i in infos),
            "in_flight": [i["ring"]["in_flight"] for i in infos],
        }


def log_errors(logs: Path) -> dict[str, int]:
    """ERROR lines and tracebacks in each node log."""
    counts = {}
    for log in sorted(logs.glob("node*.log")):
        text = log.read_text(errors="replace")
        counts[log.name] = sum(" ERROR " in line or line.startswith("Traceback") for line in text.splitlines())
    return counts


def node_rows(
    warm: list[dict[str, Any]], end: list[dict[str, Any]], faults: list[Fault], samples: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per node slot: its first warm-up sample against its end sample (a new process after a restart), and
    the highest RSS and descriptor count sampled during the run."""
    rows = []
    for slot in range(NODES):
        w = next(r for r in warm if r["node"] == slot)
        e = next((r for r in end if r["node"] == slot), None)
        run = [r for r in samples if r["node"] == slot]
        row: dict[str, Any] = {
            "node": slot,
            "restarts": sum(f.node == slot and f.kind == "kill" for f in faults),
            "freezes": sum(f.node == slot and f.kind == "freeze" for f in faults),
            "warm_up": w,
            "end": e,
            "peak_rss_mb": max((r["rss_mb"] for r in run), default=None),
            "peak_fds": max((r["fds"] for r in run), default=None),
        }
        if e is not None:
            row["rss_change"] = e["rss_mb"] / w["rss_mb"] - 1
            row["fd_change"] = e["fds"] - w["fds"]
            row["rss_ok"] = abs(row["rss_change"]) <= RSS_TOLERANCE
            row["fds_flat"] = row["fd_change"] <= FD_SLACK
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--minutes", type=float, default=20.0, help="length of the soak after warm-up (20)")
    ap.add_argument("--every", type=float, default=120.0, help="seconds between two faults (120)")
    ap.add_argument("--down", type=float, default=8.0, help="seconds a node stays killed or frozen (8)")
    ap.add_argument("--strict", action="store_true", help="also exit 1 on RSS beyond +-10%% or growing descriptors")
    args = ap.parse_args()
    if args.down <= PEER_TIMEOUT:
        ap.error(f"--down must exceed the peer timeout ({PEER_TIMEOUT:g} s)")
    logs = args.out / "churn-logs"
    logs.mkdir(parents=True, exist_ok=True)
    print("computing the single-process references ...", flush=True)
    expected = references()
    with ring_of_four(logs) as ring:
        soak = Soak(ring, expected, logs)
        try:
            if plan_seconds(soak.urls, soak.names, 120) is None:
                sys.exit("the ring of four did not form")
            warm_outcomes = soak.warm_up()
            warm = soak.snapshot("warm-up")
            soak.t0, soak.started = time.monotonic(), datetime.now().isoformat(sep=" ", timespec="milliseconds")
            clients = [threading.Thread(target=soak.client, args=(i,)) for i in range(CLIENTS)]
            sampler = threading.Thread(target=soak.sample, daemon=True)
            for t in [*clients, sampler]:
                t.start()
            soak.inject(args.minutes, args.every, args.down)
            time.sleep(max(0.0, args.minutes * 60 - soak.now()))
            soak.stop.set()
            for t in clients:
                t.join()
            duration = soak.now()
            if plan_seconds(soak.urls, soak.names, 300) is None:
                soak.heal_failures.append("the ring of four was not whole at the end")
            time.sleep(5)  # let the last replies' buffers go
            end = soak.snapshot("end")
            kv = soak.kv_check()
        finally:
            soak.stop.set()
    result = summarize(args, soak, warm_outcomes, warm, end, kv, duration, logs)
    write_report(args.out, "churn", result, render(result))
    if not result["passed"] or (args.strict and not result["memory_flat"]):
        print(f"node logs: {logs}", file=sys.stderr)
        sys.exit(1)


def summarize(
    args: argparse.Namespace,
    soak: Soak,
    warm_outcomes: list[Outcome],
    warm: list[dict[str, Any]],
    end: list[dict[str, Any]],
    kv: dict[str, Any],
    duration: float,
    logs: Path,
) -> dict[str, Any]:
    """The soak's figures, as churn.json holds them."""
    outs, faults = soak.outcomes, soak.faults
    failed = [o for o in [*warm_outcomes, *outs] if not o.ok]
    differ = [o for o in [*warm_outcomes, *outs] if o.ok and not o.matches]
    nodes = node_rows(warm, end, faults, soak.samples)
    tokens = sum(o.tokens for o in outs)
    memory_ok = all(r.get("rss_ok") and r.get("fds_flat") for r in nodes)
    return {
        "settings": {
            "nodes": NODES,
            "clients": CLIENTS,
            "minutes": args.minutes,
            "every_s": args.every,
            "down_s": args.down,
            "prompts": [{"prompt": p, "max_tokens": n} for p, n in PROMPTS],
        },
        "started": soak.started,
        "duration_s": duration,
        "requests": len(outs),
        "completed": sum(o.ok for o in outs),
        "matching": sum(o.matches for o in outs),
        "failed": len(failed),
        "outputs_differing": len(differ),
        "warm_up_requests": len(warm_outcomes),
        "retries_503": sum(o.retries_503 for o in outs),
        "kills_and_restarts": sum(f.kind == "kill" for f in faults),
        "freezes": sum(f.kind == "freeze" for f in faults),
        "longest_pause_s": max((o.longest_pause for o in outs), default=None),
        "longest_pause_ended_s": max(outs, key=lambda o: o.longest_pause).pause_ended if outs else None,
        "longest_first_chunk_s": max((o.first_chunk_s for o in outs), default=None),
        "tokens": tokens,
        "aggregate_tps": tokens / duration if duration else 0.0,
        "heal_failures": soak.heal_failures,
        "kv_at_end": kv,
        "node_log_errors": log_errors(logs),
        "nodes": nodes,
        "faults": [asdict(f) for f in faults],
        "failures": [asdict(o) for o in failed + differ],
        "samples": soak.samples,
        "passed": not failed and not differ and not soak.heal_failures,
        "memory_flat": memory_ok,
    }


def render(r: dict[str, Any]) -> list[str]:
    """churn.md: the figures, one row per fault, one row per node, then each failure."""

    def s(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f} s"

    settings, faults, kv = r["settings"], r["faults"], r["kv_at_end"]
    lines = [
        f"SmolLM2-135M, {settings['nodes']} loopback `exo-actor start` nodes (numpy engine, one ring), "
        f"{settings['clients']} streaming clients, greedy; {settings['minutes']:g} min after warm-up, a fault every "
        f"{settings['every_s']:g} s (the node down {settings['down_s']:g} s); started {r['started']}.",
        "",
        "| measure | figure |",
        "|---|---|",
        f"| requests completed | {r['completed']} of {r['requests']} (+{r['warm_up_requests']} warm-up) |",
        f"| failed requests | {r['failed']} |",
        f"| outputs equal to the single-process text | {r['matching']} of {r['requests']} "
        f"({r['outputs_differing']} differ) |",
        f"| nodes killed and restarted / frozen and resumed | {r['kills_and_restarts']} / {r['freezes']} |",
        f"| streams in flight on the ring when a fault hit | {sum(f['in_flight'] for f in faults)} in all |",
        f"| longest pause between two stream events | {s(r['longest_pause_s'])} "
        f"(it ended at {s(r.get('longest_pause_ended_s'))}) |",
        f"| longest wait for a first event (503 retries included) | {s(r['longest_first_chunk_s'])} |",
        f'| 503 "not ready" answers retried at admission | {r["retries_503"]} |',
        f"| tokens streamed, aggregate | {r['tokens']} ({r['aggregate_tps']:.1f} tok/s) |",
        f"| KV caches held at the end, per node / prefix-cache entries kept | {kv['kv_requests']} / "
        f"{kv['prefix_entries']} |",
        "",
        "| # | at | node | fault | drain | streams in flight | survivors serving after | ring of four again after |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {f['index']} | {f['at']:.0f} s | node{f['node']} | {f['kind']} | {f['drained_s']:.1f} s "
            f"| {f['in_flight']} | {s(f['survivors_ready_s'])} | {s(f['whole_s'])} |"
            for f in faults
        ],
        "",
        "| node | faults | RSS after warm-up -> end | change | peak RSS | open fds after warm-up -> end (peak) "
        "| threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in r["nodes"]:
        w, e = n["warm_up"], n["end"] or {}
        new = " (a new process: compared with the slot's first)" if n["restarts"] else ""
        lines.append(
            f"| node{n['node']} | {n['restarts']} restart(s), {n['freezes']} freeze(s){new} "
            f"| {w['rss_mb']:.0f} -> {e.get('rss_mb', 0):.0f} MiB | {n.get('rss_change', 0):+.1%} "
            f"{'ok' if n.get('rss_ok') else 'BEYOND +-10%'} | {n['peak_rss_mb'] or 0:.0f} MiB "
            f"| {w['fds']} -> {e.get('fds', '-')} ({n['peak_fds']}) {'flat' if n.get('fds_flat') else 'GREW'} "
            f"| {w['threads']} -> {e.get('threads', '-')} |"
        )
    result = "PASS" if r["passed"] else "FAIL"
    lines += ["", f"Result: {result}; memory and descriptors {'flat' if r['memory_flat'] else 'NOT flat'}."]
    for o in r["failures"]:
        lines.append(
            f"- client {o['client']} via node{o['node']}, prompt {o['prompt']}, at {o['started']:.0f} s: {o['error']}"
        )
    lines += [f"- {why}" for why in r["heal_failures"]]
    return lines


if __name__ == "__main__":
    main()
