"""The settings of a node, a LAN cluster and the Ray backend, checked where they are made.

The CLI builds these from flags; `serve()` and the tests build them in code: either way an impossible
combination is one ConfigError naming the setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import ConfigError
from .models.config import ModelArgs
from .sampling.params import MAX_DRAFT_TOKENS

if TYPE_CHECKING:
    from .speculative import Speculation
    from .weights import ModelFiles

RAY_PLACEMENTS = ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")  # Ray's placement group strategies
DISCOVERY_MODES = ("manual", "udp")  # a peers list, or UDP beacons (transport/discovery.py)
SAMPLE_ON = ("last-shard", "router")  # where a ring chooses a pass's tokens (actors/sampling_wire.py)
MAX_MICRO_BATCHES = 64  # a router's micro-batches in flight (each waits on its own pool thread)


@dataclass
class NodeConfig:
    model: str = "smollm2-135m"
    engine: str = "numpy"
    engine_by_auto: bool = False  # `--engine auto` chose it: numpy instead for a family it does not run
    quantize: str | None = None  # None: weights as stored; q4 / q8 / none (weights.base.load_shard_tensors)
    device: str = "auto"  # the torch engine's device (auto: a GPU torch sees, else the CPU)
    max_concurrent: int = 8
    address: str = ""
    draft_model: str | None = None  # speculative decoding: ngram, NAME or NAME:layers=K (None: off)
    draft_tokens: int = 8  # longest draft (the adaptive length stays at or below it)
    adaptive_draft: bool = True  # pick the draft length from the measured acceptance rate and costs
    prefix_cache_mb: int = 512  # KV caches of finished requests kept for the next chat turn (0: off)
    micro_batches: int = 0  # a ring's micro-batches in flight at once (0: as many as the ring has nodes)
    sample_on: str = "last-shard"  # where a ring pass's tokens are chosen: last-shard, or router (logits come back)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            _fail(self, "model", f"must name a model (registry name, path or ORG/NAME), got {self.model!r}")
        _check_int(self, "max_concurrent", 1)
        _check_int(self, "draft_tokens", 1, MAX_DRAFT_TOKENS)
        _check_int(self, "prefix_cache_mb", 0)
        _check_int(self, "micro_batches", 0, MAX_MICRO_BATCHES)
        if self.sample_on not in SAMPLE_ON:
            _fail(self, "sample_on", f"must be one of {', '.join(SAMPLE_ON)}, got {self.sample_on!r}")

    def micro_batches_for(self, ring_nodes: int) -> int:
        """Micro-batches a router keeps in flight on a ring of `ring_nodes` nodes: --micro-batches, or by
        default one per node (each node then has one to compute while the others compute theirs)."""
        return self.micro_batches or max(1, ring_nodes)

    def prefix_cache_tokens(self, args: ModelArgs) -> int:
        """The prefix cache budget in tokens: MB / the model's float32 KV bytes per token."""
        per_token = 2 * args.num_hidden_layers * args.num_key_value_heads * args.dim_head * 4
        return self.prefix_cache_mb * 2**20 // per_token

    def speculation(self, files: ModelFiles) -> Speculation | None:
        """Load the configured draft for a target model (None when speculation is off)."""
        if not self.draft_model:
            return None
        from .speculative import Speculation
        from .speculative.drafts import load_drafter

        drafter = load_drafter(self.draft_model, files, self.engine)
        return Speculation(drafter, self.draft_tokens, self.adaptive_draft)


@dataclass
class ClusterConfig:
    host: str = "0.0.0.0"  # where the ROUTER binds
    port: int = 52416
    advertise: str = "127.0.0.1"  # the host peers use to reach us
    advertise_port: int | None = None  # the port peers use, if not `port` (NAT, a proxy)
    peers: list[str] = field(default_factory=list)  # HOST:PORT of other nodes
    memory: int | None = None  # bytes to advertise (default: physical memory)
    wait_for_peers: int = 0
    heartbeat: float = 0.5
    timeout: float = 3.0
    step_timeout: float = 300.0
    rings: int = 1  # whole copies of the model, each on its own group of nodes
    discovery: str = "manual"  # or "udp": beacons (transport/discovery.py)
    discovery_port: int = 52417
    cluster_key: str | None = None  # the cluster secret (transport/security.py); None: open, trusted LAN

    def __post_init__(self) -> None:
        _check_port(self, "port", 0)  # 0: any free port
        if not isinstance(self.advertise, str) or not self.advertise:
            _fail(self, "advertise", f"must be the host peers reach this node at, got {self.advertise!r}")
        if self.advertise_port is not None:
            _check_port(self, "advertise_port", 1)
        if self.memory is not None:
            _check_int(self, "memory", 1)
        _check_int(self, "wait_for_peers", 0)
        _check_int(self, "rings", 1)
        if self.discovery not in DISCOVERY_MODES:
            _fail(self, "discovery", f"must be one of {', '.join(DISCOVERY_MODES)}, got {self.discovery!r}")
        _check_port(self, "discovery_port", 1)
        _check_liveness(self)


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local Ray instance (or use the one this process runs)
    shards: int | None = None  # None: one per alive Ray node
    placement: str = "SPREAD"  # the placement group strategy
    cpus_per_shard: float = 1.0
    host: str = "0.0.0.0"  # where the driver's ROUTER binds
    port: int = 52416
    advertise: str | None = None  # the address hosts use to reach the driver (default: Ray's node IP)
    heartbeat: float = 0.5
    timeout: float = 3.0
    step_timeout: float = 300.0
    cluster_key: str | None = None
    placement_timeout: float = 120.0  # how long Ray may take to reserve the bundles
    init_options: dict[str, Any] = field(default_factory=dict)  # more ray.init arguments (a local instance)

    def __post_init__(self) -> None:
        if self.address and self.address != "auto":
            host, _, port = self.address.removeprefix("ray://").rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                _fail(self, "address", f"{self.address}: expected auto, HOST:PORT or ray://HOST:PORT")
        if self.shards is not None:
            _check_int(self, "shards", 1)
        if self.placement not in RAY_PLACEMENTS:
            _fail(self, "placement", f"must be one of {', '.join(RAY_PLACEMENTS)}, got {self.placement!r}")
        _check_positive(self, "cpus_per_shard")
        _check_port(self, "port", 0)
        _check_liveness(self)
        _check_positive(self, "placement_timeout")


def _fail(config: object, setting: str, problem: str) -> NoReturn:
    raise ConfigError(type(config).__name__, setting, problem)


def _check_int(config: object, setting: str, minimum: int, maximum: int | None = None) -> None:
    value = getattr(config, setting)
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(config, setting, f"must be an integer, got {value!r}")
    if value < minimum:
        _fail(config, setting, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        _fail(config, setting, f"must be <= {maximum}, got {value}")


def _check_port(config: object, setting: str, lowest: int) -> None:
    value = getattr(config, setting)
    if not isinstance(value, int) or isinstance(value, bool) or not lowest <= value <= 65535:
        _fail(config, setting, f"must be a port ({lowest}-65535), got {value!r}")


def _check_positive(config: object, setting: str) -> None:
    value = getattr(config, setting)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
        _fail(config, setting, f"must be a positive number, got {value!r}")


def _check_liveness(config: ClusterConfig | RayConfig) -> None:
    """The heartbeat, peer timeout and step timeout that LAN clusters and the Ray driver share."""
    for setting in ("heartbeat", "timeout", "step_timeout"):
        _check_positive(config, setting)
    if config.timeout <= 2 * config.heartbeat:  # one late ping must not mark a live peer down
        _fail(config, "timeout", f"({config.timeout:g} s) must exceed twice heartbeat ({config.heartbeat:g} s)")
