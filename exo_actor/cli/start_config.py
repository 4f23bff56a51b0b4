"""`start`'s flags turned into the configs `serve()` takes; an impossible value is one error naming its flag."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..cluster.link_speculation import THRESHOLD_MS
from ..cluster.wide_area import WideAreaConfig, tailnet_of
from ..config import ClusterConfig, NodeConfig, RayConfig
from ..errors import ConfigError, ExoError
from ..transport.tailscale import criteria
from .flags import cluster_key, node_config
from .tailscale_flags import MODES_HELP, parse_discovery, tailnet_address, tailscale_config
from .types import port

if TYPE_CHECKING:
    from ..api import GatewayConfig

# the flag that sets a config setting, where it is not --<setting with dashes>
_FLAGS = {"timeout": "--peer-timeout", "advertise_port": "--advertise"}
_RAY_FLAGS = {
    "address": "--ray-address",
    "shards": "--ray-shards",
    "placement": "--ray-placement",
    "cpus_per_shard": "--ray-cpus-per-shard",
}
_LAN_ONLY_FLAGS = ("--peers", "--discovery", "--rings", "--wait-for-peers", "--memory")


@contextlib.contextmanager
def named_by_flags() -> Iterator[None]:
    """Re-word a ConfigError raised while building configs from flags: "--peer-timeout ...", not
    "ClusterConfig.timeout ..."."""
    try:
        yield
    except ConfigError as exc:
        renamed = _RAY_FLAGS if exc.config == RayConfig.__name__ else {}
        flag = renamed.get(exc.setting) or _FLAGS.get(exc.setting) or "--" + exc.setting.replace("_", "-")
        raise ExoError(f"{flag} {exc.problem}") from None


def gateway_config(args: argparse.Namespace) -> GatewayConfig | None:
    """The HTTP gateway's limits and TLS files (None with --no-api); the key from --api-key or EXO_ACTOR_API_KEY."""
    from ..api import GatewayConfig

    if args.no_api:
        if args.tls_cert is not None or args.tls_key is not None:
            raise ExoError("--tls-cert and --tls-key are the gateway's: they do not go with --no-api")
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        given, missing = ("--tls-cert", "--tls-key") if args.tls_key is None else ("--tls-key", "--tls-cert")
        raise ExoError(f"{given} needs {missing} too (HTTPS takes the certificate and its private key)")
    with named_by_flags():  # a bad TLS file: "--tls-key k.pem is not the private key of ..."
        return GatewayConfig(
            api_key=args.api_key or os.environ.get("EXO_ACTOR_API_KEY") or None,
            max_body_bytes=args.max_body_bytes,
            request_timeout=args.request_timeout,
            max_tokens=args.max_tokens,
            max_context=args.max_context,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )


def start_node_config(args: argparse.Namespace) -> NodeConfig:
    """The node: model, engine and speculation flags plus the ring's request limits."""
    return node_config(
        args,
        max_concurrent=args.max_concurrent,
        prefix_cache_mb=args.prefix_cache_mb,
        micro_batches=args.micro_batches,
        sample_on=args.sample_on,
    )


def discovery_mode(args: argparse.Namespace) -> tuple[str, str]:
    """How a LAN node finds peers, and what chose it: --discovery, else $EXO_ACTOR_DISCOVERY, else manual
    with --peers (the file's nodes only) and udp without (beacons: one command per device, nothing else)."""
    if args.discovery:
        return args.discovery, f"--discovery {args.discovery}"
    env = os.environ.get("EXO_ACTOR_DISCOVERY")
    if env:  # argparse checks only the flag, so the variable is checked here
        try:
            mode = parse_discovery(env)
        except ValueError:
            raise ExoError(f"EXO_ACTOR_DISCOVERY={env!r} is not a discovery mode (choose {MODES_HELP})") from None
        return mode, f"EXO_ACTOR_DISCOVERY={env}"
    if args.peers:
        return "manual", "--peers without --discovery"
    return "udp", "the default"


def cluster_config(args: argparse.Namespace) -> ClusterConfig | None:
    """The LAN backend's cluster: UDP beacons unless discovery is manual (see discovery_mode); None with
    manual discovery and no --peers (a node on its own, off the network). Refuses --ray-*."""
    from ..transport.peers_file import read_peers

    given = [f for f in ("ray_address", "ray_shards") if getattr(args, f) is not None]
    if given or args.ray_placement != RayConfig.placement or args.ray_cpus_per_shard != RayConfig.cpus_per_shard:
        raise ExoError("the --ray-* options need --backend ray")
    discovery, _ = discovery_mode(args)
    if discovery == "manual" and not args.peers:
        return None
    tailscale = tailscale_config(args) if "tailscale" in discovery.split(",") else None
    secret = cluster_key(args)
    if tailscale is not None and not secret:
        raise ExoError(
            "--discovery tailscale needs a cluster key: across networks only nodes holding it may join; make one "
            "with `exo-actor keygen` and start every node with EXO_ACTOR_CLUSTER_KEY=<key> (or --cluster-key)"
        )
    host, advertise_port = advertise(args)
    if tailscale is not None and not args.advertise and args.host in ("0.0.0.0", "::"):
        host = tailnet_address(tailscale) or host  # peers reach this node at its tailnet address
    settings: dict[str, Any] = dict(
        host=args.host,
        port=args.port,
        advertise=host,
        advertise_port=advertise_port,
        peers=read_peers(args.peers) if args.peers else [],
        discovery="udp" if "udp" in discovery.split(",") else "manual",  # beacons or not
        discovery_port=args.discovery_port,
        memory=int(args.memory * 2**30) if args.memory else None,
        wait_for_peers=args.wait_for_peers,
        rings=args.rings,
        cluster_key=secret,
        step_timeout=args.step_timeout,
        heartbeat=args.heartbeat,
        timeout=args.peer_timeout,
    )
    if tailscale is None and args.auto_speculation_ms == THRESHOLD_MS:
        return ClusterConfig(**settings)
    return WideAreaConfig(**settings, tailscale=tailscale, auto_speculation_ms=args.auto_speculation_ms)


def finding_peers(args: argparse.Namespace, cluster: ClusterConfig | None) -> str:
    """The start log's line on how this LAN node finds peers, and what chose that."""
    _, chosen_by = discovery_mode(args)
    if cluster is None:
        return f"serving alone: no actor socket, no beacons ({chosen_by}, no --peers)"
    listed = f"the {len(cluster.peers)} peer(s) in {args.peers}" if args.peers else ""
    tailnet = tailnet_of(cluster)
    if tailnet is not None:
        via = f"the tailnet ({criteria(tailnet.tag, tailnet.hostname_prefix)}, listed by "
        via += ("the Tailscale API" if tailnet.uses_api else f"`{tailnet.cli} status --json`") + ")"
        also = f" and UDP beacons on port {cluster.discovery_port}" if cluster.discovery == "udp" else ""
        return f"finding peers on {via}{also}" + (f" and from {listed}" if listed else "") + f" ({chosen_by})"
    if cluster.discovery == "manual":
        return f"finding peers only from {listed}, sending no beacons ({chosen_by})"
    beacons = f"UDP beacons on port {cluster.discovery_port}" + (f" and {listed}" if listed else "")
    return f"finding peers by {beacons} ({chosen_by}; --discovery manual keeps this node off the network)"


def ray_config(args: argparse.Namespace) -> RayConfig:
    """The Ray backend's settings; one clear error if ray is missing or a LAN-only flag is given."""
    if importlib.util.find_spec("ray") is None:
        raise ExoError("--backend ray needs the `ray` package: pip install 'exo-actor[ray]'")
    lan_values = (args.peers, args.discovery, args.rings != 1, args.wait_for_peers, args.memory)
    for flag, given in zip(_LAN_ONLY_FLAGS, lan_values):
        if given:
            raise ExoError(f"{flag} is for LAN clusters: with --backend ray, Ray places the shards (see --ray-shards)")
    host, advertise_port = advertise(args) if args.advertise else (None, None)
    if advertise_port is not None and advertise_port != args.port:
        raise ExoError("--advertise with --backend ray takes a HOST only (the driver listens on --port)")
    return RayConfig(
        address=args.ray_address,
        shards=args.ray_shards,
        placement=args.ray_placement,
        cpus_per_shard=args.ray_cpus_per_shard,
        host=args.host,
        port=args.port,
        advertise=host,
        heartbeat=args.heartbeat,
        timeout=args.peer_timeout,
        step_timeout=args.step_timeout,
        cluster_key=cluster_key(args),
    )


def advertise(args: argparse.Namespace) -> tuple[str, int | None]:
    """The host and port peers use to reach this node's actor socket (--advertise, else --host)."""
    if not args.advertise:
        host = args.host if args.host not in ("0.0.0.0", "::") else socket.gethostbyname(socket.gethostname())
        return host, None
    host, _, port_text = args.advertise.rpartition(":") if ":" in args.advertise else (args.advertise, "", "")
    try:
        advertise_port = port(port_text) if port_text else None
    except argparse.ArgumentTypeError as exc:
        raise ExoError(f"--advertise {args.advertise}: {exc}") from None
    if not host:
        raise ExoError(f"--advertise {args.advertise}: expected HOST or HOST:PORT")
    return host, advertise_port
