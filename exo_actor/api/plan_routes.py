"""/v1/plan: `exo-actor plan` over HTTP, for the dashboard's "what if" panel and for scripts.

GET  /v1/plan  -> this cluster as devices (its nodes, with this machine's calibrated bandwidth), ready to edit
POST /v1/plan  {"devices": ["NAME:MEMORY_GB:BANDWIDTH_GBps[:TFLOPS][@HOST]" | {...}], "model": ..., "link_ms": ...,
                "link_gbps": ..., "streams": ..., "micro_batches": ..., "acceptance": ..., "quant": ...}
               -> the forecast (the same JSON as `exo-actor plan --json`)
"""

from __future__ import annotations

import math
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..forecast import QUANTS, Device, Link, forecast, load_calibration, workload
from ..forecast.cost import ForecastError, forecast_dict
from .errors import invalid
from .requests import parse_json

MAX_DEVICES = 64
FIELDS = {"model", "devices", "link_ms", "link_gbps", "streams", "micro_batches", "acceptance", "quant"}
DEFAULT_BANDWIDTH = 50.0  # GB/s, for a node when this machine is not calibrated


class PlanRoutes:
    def __init__(self, node: Any) -> None:
        self.node = node

    async def get(self, request: Request) -> Response:
        cal = load_calibration()
        bw = cal.measured.get("raw_bandwidth_gbps") if cal.measured else None
        bandwidth = max(map(float, bw.values())) if isinstance(bw, dict) and bw else DEFAULT_BANDWIDTH
        info = self.node.cluster_info()
        nodes = info.get("nodes") or [{"id": "this-node", "memory_bytes": 8 << 30}]
        devices = [f"{n['id']}:{max(n.get('memory_bytes', 0), 1 << 30) / 1e9:.1f}:{bandwidth:.0f}" for n in nodes]
        return JSONResponse({"model": self.node.model_id, "devices": devices, "calibrated": bool(cal.measured)})

    async def post(self, request: Request) -> Response:
        body = parse_json(await request.body())
        unknown = set(body) - {
            "model",
            "devices",
            "link_ms",
            "link_gbps",
            "streams",
            "micro_batches",
            "acceptance",
            "quant",
        }
        if unknown:
            raise invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
        devices = _devices(body.get("devices"))
        model = body.get("model", self.node.model_id)
        if not isinstance(model, str) or not model:
            raise invalid("model must be a model name")
        quant = body.get("quant", "q4")
        if quant not in QUANTS:
            raise invalid(f"quant must be one of {', '.join(QUANTS)}")
        link = Link(_number(body, "link_ms", 0.2, 0.0), _number(body, "link_gbps", 1.0, 1e-9))
        streams = _int(body, "streams", 1)
        micro = _int(body, "micro_batches", None)
        acceptance = body.get("acceptance")
        if acceptance is not None:
            acceptance = _number(body, "acceptance", 0.0, 0.0)
            if acceptance > 1:
                raise invalid("acceptance is a rate between 0 and 1")

        def run() -> dict[str, object]:
            try:
                work = workload(model, quant)
                return forecast_dict(forecast(work, devices, link, load_calibration(), streams, micro, acceptance))
            except ForecastError as exc:
                raise invalid(str(exc)) from None

        return JSONResponse(await run_in_threadpool(run))


def _devices(raw: Any) -> list[Device]:
    if not isinstance(raw, list) or not raw or len(raw) > MAX_DEVICES:
        raise invalid(f"devices must be a list of 1 to {MAX_DEVICES} devices")
    out = []
    for item in raw:
        try:
            if isinstance(item, str):
                out.append(Device.parse(item))
            elif isinstance(item, dict):
                spec = f"{item.get('name')}:{item.get('memory_gb')}:{item.get('bandwidth_gbps')}"
                if item.get("tflops") is not None:
                    spec += f":{item['tflops']}"
                if item.get("host"):
                    spec += f"@{item['host']}"
                out.append(Device.parse(spec))
            else:
                raise ForecastError("a device is a NAME:MEMORY_GB:BANDWIDTH_GBps string or an object")
        except ForecastError as exc:
            raise invalid(str(exc)) from None
    return out


def _number(body: dict[str, Any], key: str, default: float, low: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < low:
        raise invalid(f"{key} must be a number >= {low:g}")
    return float(value)


def _int(body: dict[str, Any], key: str, default: int | None) -> Any:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise invalid(f"{key} must be an integer from 1 to 4096")
    return value
