"""The cost model against measurements: `exo-actor plan`'s predicted tok/s beside the measured tok/s of
loopback rings of 1, 2 and 3 processes, with 0, 5 and 20 ms injected per hop, serving 1, 4 and 12 streams.

    python -m benchmarks.bench_plan [--out DIR] [--calibrate]

The constants come from the stored calibration (`exo-actor plan --calibrate`; --calibrate runs it first).
Each process is a device with this machine's raw bandwidth and GFLOPS at the threads it gets (cores
shared among the processes, as the nodes size them), all on one host whose cores run `cores / threads`
passes at once; the link is the injected delay (benchmarks/latency_proxy.py) at 10 Gbit/s. Measured: one
stream = 1 / seconds between streamed tokens; 4 and 12 streams = completion tokens / wall time of all
(benchmarks' usual probes). A cell is within target when |predicted / measured - 1| <= 20%.
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for this run.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.bench_micro_batches import ring  # noqa: E402
from benchmarks.report import write_report  # noqa: E402
from exo_actor.cluster.planner import blas_threads_for  # noqa: E402
from exo_actor.forecast import Device, Link, calibrate, forecast, load_calibration, save_calibration, workload  # noqa: E402
from exo_actor.forecast.probe import aggregate_tps, stream_seconds_per_token  # noqa: E402

log = logging.getLogger("bench_plan")
PROCESSES, DELAYS, STREAMS = (1, 2, 3), (0.0, 5.0, 20.0), (1, 4, 12)


def predict(processes: int, delay: float, streams: int, cal: Any) -> float:
    measured = dict(cal.measured)
    cores = int(measured["cores"])
    threads = blas_threads_for(processes, cores)
    bw = measured["raw_bandwidth_gbps"]
    fl = measured["raw_tflops"]
    key = str(threads) if str(threads) in bw else str(cores)
    host = "this" if processes > 1 else None
    devices = [Device(f"node{i}", 4.0, float(bw[key]), float(fl[key]), host) for i in range(processes)]
    f = forecast(
        workload("smollm2-135m"), devices, Link(delay, 10.0), cal, streams, slots={"this": max(1, cores // threads)}
    )
    return f.single_tps if streams == 1 else f.aggregate_tps


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--calibrate", action="store_true", help="calibrate this machine first (and store it)")
    args = ap.parse_args()
    if args.calibrate:
        save_calibration(calibrate())
    cal = load_calibration()
    if not cal.measured:
        raise SystemExit("no calibration stored: run `exo-actor plan --calibrate` (or pass --calibrate)")
    cells: list[dict[str, Any]] = []
    for processes in PROCESSES:
        with ring(processes, (), max(STREAMS)) as (url, proxies):
            aggregate_tps(url, 4, 8)  # warm up
            for delay in DELAYS if proxies else DELAYS[:1]:
                for p in proxies:
                    p.delay = delay / 1000
                for streams in STREAMS:
                    got = 1 / stream_seconds_per_token(url) if streams == 1 else aggregate_tps(url, streams)
                    for d in DELAYS if not proxies else (delay,):  # one process: no hop to delay
                        want = predict(processes, d, streams, cal)
                        cells.append(
                            {
                                "processes": processes,
                                "delay_ms": d,
                                "streams": streams,
                                "measured": got,
                                "predicted": want,
                            }
                        )
                        log.info("%s", cells[-1])
    for c in cells:
        c["error"] = c["predicted"] / c["measured"] - 1
    within = sum(abs(c["error"]) <= 0.2 for c in cells)
    lines = [
        f"{within} of {len(cells)} cells within +-20% (calibration of {cal.measured.get('date')}: "
        f"{cal.measured.get('engine')} engine, hop {cal.hop_ms:.2f} ms, router {cal.pass_ms:.2f} ms/pass + "
        f"{cal.token_ms:.2f} ms/token, bandwidth efficiency {cal.bandwidth_efficiency:.2f}).",
        "",
        "| processes | delay per hop | streams | measured tok/s | predicted tok/s | error |",
        "|---|---|---|---|---|---|",
        *[
            f"| {c['processes']} | {c['delay_ms']:g} ms | {c['streams']} | {c['measured']:.1f} | {c['predicted']:.1f} "
            f"| {c['error']:+.0%} |"
            for c in cells
        ],
    ]
    write_report(args.out, "plan", {"cells": cells, "within_20pct": within, "calibration": vars(cal)}, lines)


if __name__ == "__main__":
    main()
