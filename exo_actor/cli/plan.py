"""`exo-actor plan`: the layer plan and the predicted speed of a cluster that does not exist yet."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from .types import int_at_least, positive_float

if TYPE_CHECKING:
    from ..forecast import Forecast
    from .flags import Subparsers


def _acceptance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"the acceptance rate is between 0 and 1, got {text}")
    return value


def _non_negative(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else positive_float(text)


def add_parser(sub: Subparsers) -> None:
    """Register `plan`."""
    plan = sub.add_parser(
        "plan",
        help="predict a cluster's layer plan and speed before wiring it (--calibrate measures this machine)",
        description="Split MODEL over the given devices as a cluster would, and predict its tok/s from a cost "
        "model (docs/plan.md). Device: NAME:MEMORY_GB:BANDWIDTH_GBps[:TFLOPS][@HOST]; devices with the same "
        "@HOST share that machine (give its parallel slots with --host-slots HOST=N).",
    )
    plan.add_argument("model", nargs="?", help="registry name (priced from its recorded shape if not here) or path")
    plan.add_argument("--device", action="append", default=[], metavar="SPEC", help="a device (repeat)")
    plan.add_argument("--quant", default="q4", choices=["q4", "q8", "f16"], help="weights of a model not here (q4)")
    plan.add_argument("--link-ms", type=_non_negative, default=0.2, help="one-way latency per hop, ms (0.2)")
    plan.add_argument("--link-gbps", type=positive_float, default=1.0, help="link bandwidth, Gbit/s (1)")
    plan.add_argument("--streams", type=lambda t: int_at_least(t, 1), default=1, help="concurrent requests (1)")
    plan.add_argument("--micro-batches", type=lambda t: int_at_least(t, 1), help="in flight (default: devices)")
    plan.add_argument("--acceptance", type=_acceptance, help="speculative decoding's acceptance rate, 0-1")
    plan.add_argument("--host-slots", action="append", default=[], metavar="HOST=N", help="passes a host runs at once")
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.add_argument("--calibrate", action="store_true", help="measure this machine and store the constants")
    plan.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from ..errors import InvalidRequestError
    from ..forecast import Device, Link, calibrate, forecast, load_calibration, save_calibration, workload
    from ..forecast.cost import forecast_dict

    if args.calibrate:
        cal = calibrate()
        path = save_calibration(cal)
        print(json.dumps({"saved": str(path), **asdict(cal)}, indent=2, default=str))
        if not args.model:
            return 0
    if not args.model:
        raise InvalidRequestError("name a MODEL to plan (or pass --calibrate alone)")
    if not args.device:
        raise InvalidRequestError("give the devices: --device NAME:MEMORY_GB:BANDWIDTH_GBps[:TFLOPS][@HOST] ...")
    slots = {}
    for item in args.host_slots:
        host, _, n = item.partition("=")
        if not host or not n.isdigit() or int(n) < 1:
            raise InvalidRequestError(f"--host-slots {item!r}: expected HOST=N with N >= 1")
        slots[host] = int(n)
    devices = [Device.parse(d) for d in args.device]
    f = forecast(
        workload(args.model, args.quant),
        devices,
        Link(args.link_ms, args.link_gbps),
        load_calibration(),
        args.streams,
        args.micro_batches,
        args.acceptance,
        slots=slots,
    )
    print(json.dumps(forecast_dict(f), indent=2) if args.json else render(f, args.acceptance))
    return 0


def render(f: Forecast, acceptance: float | None) -> str:
    rows = [("DEVICE", "LAYERS", "WEIGHTS", "MEMORY", "PASS (1 ROW)")]
    for d in f.devices:
        rows.append(
            (
                d.device.name + (f"@{d.device.host}" if d.device.host else ""),
                f"{d.start}-{d.end - 1} ({d.end - d.start})",
                f"{d.weights_gb:.2f} GB",
                f"{d.device.memory_gb:g} GB",
                f"{d.pass_ms:.2f} ms",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if f.idle:
        lines.append(f"idle (no layers): {', '.join(f.idle)}")
    lines.append(f"one stream: {f.single_tps:.1f} tok/s")
    if f.streams > 1:
        lines.append(
            f"{f.streams} streams: {f.aggregate_tps:.1f} tok/s in all ({f.micro_batches} micro-batch"
            f"{'es' if f.micro_batches > 1 else ''} in flight; limited by {f.bound})"
        )
    if f.speculative_tps is not None:
        lines.append(
            f"one stream, speculative at acceptance {acceptance:g}: {f.speculative_tps:.1f} tok/s "
            f"({f.draft_tokens} drafts per pass)"
        )
    return "\n".join(lines)
