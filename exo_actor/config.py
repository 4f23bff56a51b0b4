"""The settings of a node, a LAN cluster and the Ray backend, checked where they are made.

The CLI builds these from flags; `serve()` and the tests build them in code: either way an impossible
combination is one ConfigError naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .models.config import ModelArgs

if TYPE_CHECKING:
    from .speculative import Speculation
    from .weights import ModelFiles


@dataclass
class NodeConfig:
    model: str = "smollm2-135m"
    engine: str = "numpy"
    quantize: str | None = None  # None: weights as stored; q4 / q8 / none (weights.base.load_shard_tensors)
    device: str = "auto"  # the torch engine's device (auto: a GPU torch sees, else the CPU)
    max_concurrent: int = 8
    address: str = ""
    draft_model: str | None = None  # speculative decoding: ngram, NAME or NAME:layers=K (None: off)
    draft_tokens: int = 8  # longest draft (the adaptive length stays at or below it)
    adaptive_draft: bool = True  # pick the draft length from the measured acceptance rate and costs
    prefix_cache_mb: int = 512  # KV caches of finished requests kept for the next chat turn (0: off)

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
