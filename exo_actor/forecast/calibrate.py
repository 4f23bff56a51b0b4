"""`exo-actor plan --calibrate`: measure this machine and fit the cost model's constants to it.

What it measures (a minute or so, on the embedded model):
- raw memory bandwidth (numpy streams a 256 MiB array) and raw float32 GFLOPS (a 1024^3 matmul), with one
  thread and with all cores: this machine as a `--device`;
- the engine's decode pass through every layer with 1 and with 8 rows: bandwidth and compute efficiency
  (achieved / raw) and the fixed cost per layer;
- the gateway's and router's work per pass and per token: one `exo-actor start` process serving 1 and 8
  streams, against its passes alone (probe.py);
- a hop: a ring of two one-thread processes against one (at least a ZeroMQ round trip through the codec).

The result is stored as JSON (calibration_path()) and loaded by `exo-actor plan` and /v1/plan.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..storage.registry import exo_home
from .cost import Calibration
from .workload import workload

log = logging.getLogger(__name__)


def calibration_path() -> Path:
    return exo_home() / "calibration.json"


def load_calibration(path: Path | None = None) -> Calibration:
    """The stored calibration, or the defaults when there is none (or it is unreadable: logged)."""
    path = path or calibration_path()
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        fields = {k: raw[k] for k in Calibration.__dataclass_fields__ if k in raw}
        for k, v in fields.items():
            if k == "measured":
                if not isinstance(v, dict):
                    raise ValueError("measured is not an object")
            elif isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < float("inf"):
                raise ValueError(f"{k} is not a non-negative number")
        return Calibration(**fields)
    except FileNotFoundError:
        return Calibration()
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring the calibration at %s (%s): using the defaults", path, exc)
        return Calibration()


def save_calibration(cal: Calibration, path: Path | None = None) -> Path:
    path = path or calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(cal), indent=2, default=float) + "\n")
    return path


def _best(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def raw_bandwidth_gbps(threads: int) -> float:
    """GB/s numpy reaches streaming a 256 MiB float32 array with `threads` threads (each a slice)."""
    a = np.ones(64 << 20, dtype=np.float32)
    parts = np.array_split(a, threads)

    def run() -> None:
        ts = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    run()
    return a.nbytes / _best(run, 5) / 1e9


def raw_tflops(threads: int) -> float:
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    with threadpool_limits(threads, user_api="blas"):
        a @ a
        return 2 * 1024**3 / _best(lambda: a @ a, 5) / 1e12


def hop_ms() -> float:
    """Half a round trip of a one-row Forward between two ZeroMQ sockets, encoded and decoded."""
    import zmq

    from ..transport.messages import Forward, decode

    ctx = zmq.Context()
    server, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client.connect(f"tcp://127.0.0.1:{port}")
    msg = Forward("r", "a", "a", 1, 10, 1, np.zeros((1, 576), np.float32))

    def echo() -> None:
        for _ in range(rounds + 10):
            frames = server.recv_multipart(copy=False)
            server.send_multipart([frames[0], *decode(frames[1:]).encode()])

    rounds = 300
    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    for _ in range(10):
        client.send_multipart(msg.encode())
        decode(client.recv_multipart())
    t = time.perf_counter()
    for _ in range(rounds):
        client.send_multipart(msg.encode())
        decode(client.recv_multipart())
    elapsed = time.perf_counter() - t
    thread.join(5)
    client.close(0)
    server.close(0)
    ctx.term()
    return elapsed / rounds / 2 * 1000


def calibrate(model: str = "smollm2-135m", engine: str = "auto") -> Calibration:
    """Measure this machine and the engine; returns the fitted constants (see the module docstring)."""
    from ..engines import Pass, resolve_engine
    from ..runtime.local import load_local
    from . import probe

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    engine = resolve_engine(engine)
    bw = {1: raw_bandwidth_gbps(1), cores: raw_bandwidth_gbps(cores)}
    fl = {1: raw_tflops(1), cores: raw_tflops(cores)}
    _, pipe = load_local(model, engine=engine)
    work = workload(model)
    prompt = np.arange(1, 101, dtype=np.int64) % 1000 + 1

    def decode_pass(rows: int) -> float:
        passes = [Pass(f"cal{i}", prompt, 0) for i in range(rows)]
        for p in passes:
            pipe.forward(p.request_id, p.tokens, 0)
        steps = [Pass(p.request_id, np.array([5]), 100) for p in passes]

        def run() -> None:
            pipe.forward_batch(steps)
            for p in passes:
                pipe.truncate(p.request_id, 100)

        t = _best(run, 7)
        for p in passes:
            pipe.free(p.request_id)
        return t

    one, eight = decode_pass(1), decode_pass(8)
    nbytes = work.shard_bytes(0, work.layers)
    flops = work.layers * work.layer_flops + work.head_flops
    per_row = max(0.0, (eight - one) / 7)
    tflops_eff = flops / per_row / 1e12 if per_row > 0 else fl[cores]
    # the one-row pass = streaming + one row's arithmetic + a fixed cost per layer; split the rest evenly
    stream = max(one - per_row, 1e-6)
    layer_s = 0.0
    achieved = nbytes / stream / 1e9
    if achieved > bw[cores]:  # faster than raw streaming (caches): no fixed cost visible
        achieved = bw[cores]
    else:
        layer_s = max(0.0, stream - nbytes / (bw[cores] * 1e9)) / work.layers / 2
        achieved = nbytes / max(stream - layer_s * work.layers, 1e-6) / 1e9

    # the gateway and router per pass and per token, from one process serving 1 and 8 streams
    with probe.loopback_ring(1, model) as url:
        t1 = probe.stream_seconds_per_token(url)
        t8 = 8 / probe.aggregate_tps(url, 8)
    over1, over8 = max(0.0, t1 - one), max(0.0, t8 - eight)
    token_s = max(0.0, (over8 - over1) / 7)
    pass_s = max(0.0, over1 - token_s)
    # a hop between processes: a ring of two vs one process, both with one thread, one batch in flight
    single = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with probe.loopback_ring(1, model, single) as url:
        alone = probe.stream_seconds_per_token(url)
    with probe.loopback_ring(2, model, single, ("--micro-batches", "1")) as url:
        paired = probe.stream_seconds_per_token(url)
    hop = max(hop_ms() / 1000, (paired - alone) / 2)
    measured = {
        "engine": engine,
        "model": model,
        "cores": cores,
        "raw_bandwidth_gbps": {str(k): round(v, 2) for k, v in bw.items()},
        "raw_tflops": {str(k): round(v, 4) for k, v in fl.items()},
        "decode_pass_ms": {"1": round(one * 1000, 3), "8": round(eight * 1000, 3)},
        "achieved_bandwidth_gbps": round(achieved, 2),
        "achieved_tflops": round(tflops_eff, 4),
        "gateway_ms_per_token": {"1 stream": round(t1 * 1000, 3), "8 streams": round(t8 * 1000, 3)},
        "one_thread_ms_per_token": {"1 process": round(alone * 1000, 3), "2 processes": round(paired * 1000, 3)},
        "date": time.strftime("%Y-%m-%d"),
    }
    cal = Calibration(
        bandwidth_efficiency=min(1.0, achieved / bw[cores]),
        flops_efficiency=min(1.0, tflops_eff / fl[cores]),
        layer_ms=layer_s * 1000,
        hop_ms=hop * 1000,
        token_ms=token_s * 1000,
        pass_ms=pass_s * 1000,
        measured=measured,
    )
    log.info("calibrated: %s", cal)
    return cal
