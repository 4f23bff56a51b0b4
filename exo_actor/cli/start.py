"""`exo-actor start`: its flags, and the hand-over of the configs they make to `serve()`."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from ..config import RAY_PLACEMENTS, RayConfig
from .flags import engine_flags, speculation_flags
from .tailscale_flags import DiscoveryAction, speculation_switch_flag, tailscale_flags
from .types import non_negative_int, port, positive_float, positive_int

if TYPE_CHECKING:
    from .flags import Subparsers

log = logging.getLogger(__name__)


def add_parser(sub: Subparsers) -> None:
    """Register `start` and its flags."""
    start = sub.add_parser("start", help="start this device's node and the OpenAI-compatible gateway")
    start.add_argument(
        "--model",
        default="smollm2-135m",
        help="model to serve: a registry name, path or Hub repo id, downloaded when missing (default smollm2-135m)",
    )
    engine_flags(start)
    _gateway_flags(start)
    start.add_argument("--node-id", help="this node's id (default: random)")
    _cluster_flags(start)
    speculation_flags(start)
    speculation_switch_flag(start)
    tailscale_flags(start)
    _ray_flags(start)
    start.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Build the node, gateway and cluster (or Ray) configs from the flags and serve until Ctrl-C."""
    from ..server import serve
    from .start_config import (
        cluster_config,
        finding_peers,
        gateway_config,
        named_by_flags,
        ray_config,
        start_node_config,
    )

    gateway = gateway_config(args)
    with named_by_flags():
        node = start_node_config(args)
        ray = ray_config(args) if args.backend == "ray" else None
        cluster = cluster_config(args) if ray is None else None
    if ray is None:
        log.info("%s", finding_peers(args, cluster))
    serve(node, gateway, args.api_host, args.api_port, cluster, args.node_id, ray)
    return 0


def _gateway_flags(start: argparse.ArgumentParser) -> None:
    start.add_argument("--api-host", default="0.0.0.0", help="address the gateway listens on (0.0.0.0)")
    start.add_argument("--api-port", type=port, default=52415, help="gateway port (52415; 0 picks a free one)")
    start.add_argument("--no-api", action="store_true", help="run the node without the HTTP gateway")
    start.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or set EXO_ACTOR_API_KEY)")
    start.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate (needs --tls-key)")
    start.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key, unencrypted")
    start.add_argument("--max-concurrent", type=positive_int, default=8, help="requests in flight (8); more get 429")
    start.add_argument(
        "--micro-batches",
        type=non_negative_int,
        default=0,
        help="micro-batches of requests a ring keeps in flight at once, so that its nodes compute at the same "
        "time (0, the default: one per ring node; 1: one batch at a time)",
    )
    start.add_argument(
        "--sample-on",
        choices=["last-shard", "router"],
        default="last-shard",
        help="where a ring chooses each pass's tokens: on its last shard, which sends back token ids (the "
        "default), or on the router, which gets the logits rows back (the old path: more bytes per token)",
    )
    start.add_argument("--max-body-bytes", type=positive_int, default=4 << 20, help="largest request body (4 MiB)")
    start.add_argument(
        "--prefix-cache-mb",
        type=non_negative_int,
        default=512,
        help="memory for KV caches kept for the next chat turn, which then prefills only its new tokens (512; 0: off)",
    )
    start.add_argument(
        "--request-timeout",
        type=positive_float,
        default=600.0,
        help="seconds a request may take, streamed or not, before it ends with a timeout error (600)",
    )
    start.add_argument(
        "--max-tokens", type=positive_int, help="most completion tokens a request may ask for (default: the context)"
    )
    start.add_argument(
        "--max-context",
        type=positive_int,
        help="most tokens (prompt + completion) a request may use (default: the model's context length)",
    )


def _cluster_flags(start: argparse.ArgumentParser) -> None:
    start.add_argument("--host", default="0.0.0.0", help="address of the actor (ROUTER) socket (0.0.0.0)")
    start.add_argument("--port", type=port, default=52416, help="actor (ROUTER) port (52416)")
    start.add_argument(
        "--advertise", help="HOST[:PORT] other nodes use to reach the actor port (default: --host, --port)"
    )
    start.add_argument(
        "--discovery",
        action=DiscoveryAction,
        metavar="MODE",
        help="how this node finds peers: udp (the default, or $EXO_ACTOR_DISCOVERY): UDP beacons on the LAN "
        "(signed with the cluster key), no configuration; manual: only the nodes in --peers FILE, or none "
        "(a node on its own, sending nothing); --peers without --discovery means manual; tailscale: the tagged "
        "devices of this tailnet (needs the cluster key; udp,tailscale for both)",
    )
    start.add_argument("--rings", type=positive_int, default=1, help="whole copies of the model (1: one ring)")
    start.add_argument("--discovery-port", type=port, default=52417, help="UDP beacon port (52417)")
    start.add_argument(
        "--cluster-key",
        help="the cluster secret (or EXO_ACTOR_CLUSTER_KEY; prefer the variable: flags show in ps): "
        "CURVE-encrypted, authenticated actor sockets and signed beacons; every node needs the same one",
    )
    start.add_argument("--heartbeat", type=positive_float, default=0.5, help="seconds between pings to each peer (0.5)")
    start.add_argument(
        "--peer-timeout",
        type=positive_float,
        default=3.0,
        help="a peer silent this long is down: its requests end with an error and the ring re-plans (3)",
    )
    start.add_argument(
        "--step-timeout",
        type=positive_float,
        default=300.0,
        help="longest one ring pass may take (a long prefill on a slow device) before the request fails (300)",
    )
    start.add_argument("--peers", help='TOML file: peers = ["HOST:PORT", ...] (other nodes\' actor ports)')
    start.add_argument("--memory", type=positive_float, help="memory to advertise, in GiB (default: all of it)")
    start.add_argument(
        "--wait-for-peers",
        type=non_negative_int,
        default=0,
        help="plan and load layers only once N other nodes are known",
    )


def _ray_flags(start: argparse.ArgumentParser) -> None:
    ray = start.add_argument_group("Ray backend (pip install 'exo-actor[ray]')")
    ray.add_argument(
        "--backend",
        choices=["lan", "ray"],
        default="lan",
        help="lan: this device is one node of the ring (default); ray: the shards run as Ray actors, "
        "the router and gateway here",
    )
    ray.add_argument(
        "--ray-address",
        help="the Ray cluster: auto (the one on this machine), HOST:PORT or ray://HOST:PORT "
        "(default: start a local Ray instance)",
    )
    ray.add_argument("--ray-shards", type=positive_int, help="shards of the ring (default: one per Ray node)")
    ray.add_argument(
        "--ray-placement",
        choices=RAY_PLACEMENTS,
        default=RayConfig.placement,
        help=f"placement group strategy for the shards' bundles ({RayConfig.placement})",
    )
    ray.add_argument(
        "--ray-cpus-per-shard",
        type=positive_float,
        default=RayConfig.cpus_per_shard,
        help="CPUs each shard reserves; may be a fraction (1)",
    )
