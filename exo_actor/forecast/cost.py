"""The cost model behind `exo-actor plan`: what speed a ring of given devices gives a model. Pure functions.

Decode on a device is memory-bound: each pass streams the weights of the device's layers once, whatever
the number of rows in it, and each row adds its arithmetic (2 FLOPs per weight). So a pass of B rows
through a device takes

    t(B) = bytes / (bandwidth x e_bw) + B x flops / (compute x e_fl) + layers x c_layer

(e_bw, e_fl: the fractions of the nominal figures an engine reaches; c_layer: the fixed cost of a layer's
kernels and bookkeeping; a device without a compute figure is taken as bandwidth-bound). A pass around a
ring of R devices adds R hops of (link latency + software cost of a hop + B activations over the link)
and the router's work per token. With K micro-batches of B = ceil(N / K) rows in flight (K = R by
default), N streams get

    aggregate = min(K x B / round_trip(B),  B / slowest device's t(B),  1 / router time per token)

and one stream gets 1 / round_trip(1). Devices on one host (NAME@HOST) also share that host's cores: the
host can run at most `slots` of their passes at once. Speculative decoding at acceptance rate a with n
drafts yields (1 - a^(n+1)) / (1 - a) tokens per verification pass of n + 1 rows (Leviathan et al. 2023);
the best n up to the longest draft is taken. The constants come from `exo-actor plan --calibrate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from ..errors import ExoError
from ..partition import Assignment, NodeCapacity, PartitionError, memory_weighted
from ..speculative.speculation import expected_tokens

GB = 1e9


class ForecastError(ExoError, ValueError):
    """A device, link or setting the cost model cannot use; the message says which and why."""


@dataclass(frozen=True)
class Device:
    """A device of the cluster: memory it gives the model (GB), memory bandwidth (GB/s), optional compute
    (TFLOPS) and the host it shares with other devices (several processes on one machine)."""

    name: str
    memory_gb: float
    bandwidth_gbps: float
    tflops: float | None = None
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> Device:
        """NAME:MEMORY_GB:BANDWIDTH_GBps[:TFLOPS][@HOST]."""
        spec, _, host = text.partition("@")
        parts = spec.split(":")
        if len(parts) not in (3, 4) or not parts[0]:
            raise ForecastError(f"{text!r}: a device is NAME:MEMORY_GB:BANDWIDTH_GBps[:TFLOPS][@HOST]")
        try:
            numbers = [float(p) for p in parts[1:]]
        except ValueError:
            raise ForecastError(f"{text!r}: memory, bandwidth and TFLOPS must be numbers") from None
        if not all(math.isfinite(x) and x > 0 for x in numbers):
            raise ForecastError(f"{text!r}: memory, bandwidth and TFLOPS must be positive")
        return cls(parts[0], numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None, host or None)


@dataclass(frozen=True)
class Link:
    """The network between devices: one-way latency per hop and bandwidth."""

    latency_ms: float = 0.2
    gbps: float = 1.0  # Gbit/s

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ForecastError(f"link latency must be >= 0 ms, got {self.latency_ms}")
        if not (math.isfinite(self.gbps) and self.gbps > 0):
            raise ForecastError(f"link bandwidth must be > 0 Gbit/s, got {self.gbps}")


@dataclass(frozen=True)
class Calibration:
    """The constants of the model, as measured on a machine (`exo-actor plan --calibrate`)."""

    bandwidth_efficiency: float = 0.6  # e_bw
    flops_efficiency: float = 0.3  # e_fl
    layer_ms: float = 0.02  # c_layer
    hop_ms: float = 0.25  # software cost of one hop: encode, ZeroMQ, decode, scheduling
    token_ms: float = 0.3  # the router's work per generated token (sampling, detokenizing, HTTP)
    pass_ms: float = 0.5  # the router's work per pass (scheduling, the answer's handling)
    measured: Mapping[str, object] = field(default_factory=dict)  # what calibration measured, for the record


@dataclass(frozen=True)
class Workload:
    """What a model costs per layer: bytes streamed per pass, FLOPs per row, activation bytes per hop."""

    name: str
    layers: int
    layer_bytes: int  # weights of one decoder layer, as the engine holds them
    layer_flops: int  # per row
    head_bytes: int  # final norm + output head (on the last device)
    head_flops: int
    activation_bytes: int  # one row's hidden state between devices (float32)

    def shard_bytes(self, start: int, end: int) -> int:
        return (end - start) * self.layer_bytes + (self.head_bytes if end == self.layers else 0)


@dataclass(frozen=True)
class DeviceForecast:
    device: Device
    start: int
    end: int
    weights_gb: float  # the memory its layers take
    pass_ms: float  # one pass of one row through its layers


@dataclass(frozen=True)
class Forecast:
    model: str
    devices: tuple[DeviceForecast, ...]
    idle: tuple[str, ...]  # devices given no layers (the model fits without them, or they are too small)
    streams: int
    micro_batches: int
    single_tps: float  # one stream
    aggregate_tps: float  # `streams` streams
    speculative_tps: float | None = None  # one stream with speculation at the given acceptance
    draft_tokens: int = 0  # the draft length that gives it
    bound: str = ""  # what limits the aggregate: the ring's latency, a device, a host or the router


def place(devices: Sequence[Device], work: Workload) -> tuple[list[Assignment], list[str]]:
    """The layer plan the cluster would make (memory-weighted, the same partitioner, each device keeping
    room for the output head), and the idle devices."""
    if not devices:
        raise ForecastError("give at least one device (--device NAME:MEMORY_GB:BANDWIDTH_GBps)")
    if len({d.name for d in devices}) != len(devices):
        raise ForecastError("device names must be unique")
    # any device may end the ring: each keeps room for the output head beside its layers
    nodes = [NodeCapacity(d.name, max(0, int(d.memory_gb * GB) - work.head_bytes)) for d in devices]
    try:
        plan = memory_weighted(nodes, work.layers, work.layer_bytes)
    except PartitionError as exc:
        raise ForecastError(str(exc)) from None
    used = {a.node_id for a in plan}
    return plan, [d.name for d in devices if d.name not in used]


def device_seconds(device: Device, work: Workload, start: int, end: int, rows: int, cal: Calibration) -> float:
    """One pass of `rows` rows through layers [start, end) on `device`."""
    last = end == work.layers
    nbytes = work.shard_bytes(start, end)
    flops = (end - start) * work.layer_flops + (work.head_flops if last else 0)
    read = nbytes / (device.bandwidth_gbps * GB * cal.bandwidth_efficiency)
    compute = rows * flops / (device.tflops * 1e12 * cal.flops_efficiency) if device.tflops else 0.0
    return read + compute + (end - start) * cal.layer_ms / 1000


def forecast(
    work: Workload,
    devices: Sequence[Device],
    link: Link,
    cal: Calibration,
    streams: int = 1,
    micro_batches: int | None = None,
    acceptance: float | None = None,
    max_draft: int = 8,
    slots: Mapping[str, int] | None = None,
) -> Forecast:
    """Predicted tok/s of `devices` running `work` as one ring (see the module docstring)."""
    if streams < 1:
        raise ForecastError(f"streams must be at least 1, got {streams}")
    if acceptance is not None and not 0.0 <= acceptance <= 1.0:
        raise ForecastError(f"the acceptance rate is between 0 and 1, got {acceptance}")
    plan, idle = place(devices, work)
    by_name = {d.name: d for d in devices}
    ring = [(by_name[a.node_id], a.start, a.end) for a in plan]

    def seconds(rows: int) -> list[float]:
        return [device_seconds(d, work, s, e, rows, cal) for d, s, e in ring]

    def round_trip(rows: int) -> float:
        hops = len(ring) if len(ring) > 1 else 0  # router -> ... -> last -> router; none in one process
        per_hop = link.latency_ms / 1000 + cal.hop_ms / 1000 + rows * work.activation_bytes * 8 / (link.gbps * GB)
        return sum(seconds(rows)) + hops * per_hop + cal.pass_ms / 1000 + rows * cal.token_ms / 1000

    k = min(micro_batches or len(ring), streams)
    rows = -(-streams // k)  # each micro-batch takes its share (runtime/batching.micro_batch) ...
    k = -(-streams // rows)  # ... so fewer may fly: 4 streams on 3 nodes are 2 micro-batches of 2
    times = seconds(rows)
    bounds = {"the ring's round trip": k * rows / round_trip(rows)}
    slowest = max(range(len(ring)), key=lambda i: times[i])
    bounds[f"device {ring[slowest][0].name}"] = rows / times[slowest]
    router_host = ring[0][0].host  # the router runs beside the first shard
    for host in {d.host for d, _, _ in ring if d.host}:
        # the host's cores also run the router's work and each hop's software cost (not the link's wait)
        here = [t for (d, _, _), t in zip(ring, times) if d.host == host]
        busy = sum(here) + len(here) * cal.hop_ms / 1000 * (len(ring) > 1)
        if host == router_host:
            busy += cal.pass_ms / 1000 + rows * cal.token_ms / 1000
        bounds[f"host {host}"] = rows * (slots or {}).get(host, 1) / busy
    bounds["the router"] = 1000 / cal.token_ms if cal.token_ms > 0 else math.inf
    bound = min(bounds, key=lambda b: bounds[b])
    spec_tps, best_n = None, 0
    if acceptance is not None:
        options = [(expected_tokens(acceptance, n) / round_trip(n + 1), n) for n in range(0, max_draft + 1)]
        spec_tps, best_n = max(options)
    dev = tuple(
        DeviceForecast(d, s, e, work.shard_bytes(s, e) / GB, t * 1000) for (d, s, e), t in zip(ring, seconds(1))
    )
    return Forecast(work.name, dev, tuple(idle), streams, k, 1 / round_trip(1), bounds[bound], spec_tps, best_n, bound)


def forecast_dict(f: Forecast) -> dict[str, object]:
    """A Forecast as JSON (the CLI's --json, /v1/plan)."""
    out = asdict(f)
    out["devices"] = [
        {
            "name": d.device.name,
            "host": d.device.host,
            "memory_gb": d.device.memory_gb,
            "bandwidth_gbps": d.device.bandwidth_gbps,
            "tflops": d.device.tflops,
            "layers": [d.start, d.end],
            "weights_gb": round(d.weights_gb, 3),
            "pass_ms": round(d.pass_ms, 3),
        }
        for d in f.devices
    ]
    for key in ("single_tps", "aggregate_tps", "speculative_tps"):
        if out[key] is not None:
            out[key] = round(float(out[key]), 2)  # type: ignore[arg-type]
    return out
