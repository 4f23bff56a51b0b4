"""Settings of a cluster whose nodes are not on one LAN: Tailscale discovery and the latency switch.

WideAreaConfig is a ClusterConfig with two more settings; a plain ClusterConfig means no Tailscale and the
default threshold (`tailnet_of`, `auto_speculation_ms` read either). `start_tailnet` starts a node's
Tailscale discovery on its PeerNetwork.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ClusterConfig
from ..errors import ConfigError
from ..transport.peers import PeerNetwork
from ..transport.tailscale_discovery import TailnetDiscovery
from ..transport.tailscale_sources import TailscaleConfig, source_for
from .link_speculation import THRESHOLD_MS


@dataclass
class WideAreaConfig(ClusterConfig):
    tailscale: TailscaleConfig | None = None  # find peers on a tailnet too (transport/tailscale_discovery.py)
    auto_speculation_ms: float = THRESHOLD_MS  # ring round trip above which prompt lookup turns on (0: never)

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.auto_speculation_ms
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise ConfigError(type(self).__name__, "auto_speculation_ms", f"must be a number >= 0, got {value!r}")
        if self.tailscale is not None and not self.cluster_key:
            raise ConfigError(
                type(self).__name__,
                "tailscale",
                "needs a cluster key: across networks only key holders may join (`exo-actor keygen` makes one; "
                "start every node with EXO_ACTOR_CLUSTER_KEY)",
            )


def tailnet_of(cluster: ClusterConfig) -> TailscaleConfig | None:
    return cluster.tailscale if isinstance(cluster, WideAreaConfig) else None


def auto_speculation_ms(cluster: ClusterConfig) -> float:
    return cluster.auto_speculation_ms if isinstance(cluster, WideAreaConfig) else THRESHOLD_MS


def start_tailnet(cluster: ClusterConfig, net: PeerNetwork) -> TailnetDiscovery | None:
    """Start listing the tailnet for this node's peers (None: the cluster does not use Tailscale)."""
    settings = tailnet_of(cluster)
    if settings is None:
        return None
    port = settings.port or cluster.advertise_port or cluster.port
    discovery = TailnetDiscovery(
        source_for(settings, frozenset({cluster.advertise})),
        port,
        net.connect,
        settings.tag,
        settings.hostname_prefix,
        settings.interval,
        reached=lambda endpoint: any(p.endpoint == endpoint for p in net.peers.values()),
    )
    discovery.start()
    return discovery
