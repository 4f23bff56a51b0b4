"""`exo-actor peers`: the nodes whose UDP beacons this machine hears (or, with --discovery tailscale, the
tailnet's devices: chosen and answering, or skipped and why)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from ..errors import ExoError
from .flags import cluster_key
from .tailscale_flags import list_tailnet, tailscale_flags
from .types import port, positive_float

if TYPE_CHECKING:
    from ..transport.messages import Beacon
    from .flags import Subparsers


def add_parser(sub: Subparsers) -> None:
    """Register `peers` and its flags."""
    peers = sub.add_parser("peers", help="list the nodes whose UDP beacons this machine hears")
    peers.add_argument("--timeout", type=positive_float, default=3.0, help="seconds to listen (3)")
    peers.add_argument("--discovery-port", type=port, default=52417, help="UDP beacon port (52417)")
    peers.add_argument(
        "--cluster-key", help="list only nodes signing beacons with this secret (or EXO_ACTOR_CLUSTER_KEY)"
    )
    peers.add_argument(
        "--discovery",
        choices=["udp", "tailscale"],
        default="udp",
        help="udp: listen for beacons (default); tailscale: list the tailnet's devices and probe their actor ports",
    )
    tailscale_flags(peers)
    peers.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Listen for --timeout seconds and print one line a node (exit 1 when none was heard)."""
    from ..transport.discovery import Discovery
    from ..transport.security import ClusterKey

    if args.discovery == "tailscale":
        return list_tailnet(args)
    secret = cluster_key(args)
    key = ClusterKey.from_secret(secret) if secret else None

    async def listen() -> list[Beacon]:
        d = Discovery(None, lambda b: None, args.discovery_port, key=key)
        d.start()
        await asyncio.sleep(args.timeout)
        d.stop()
        return d.peers()

    try:
        heard = asyncio.run(listen())
    except OSError as exc:
        raise ExoError(f"cannot listen for beacons on UDP port {args.discovery_port}: {exc.strerror}") from None
    if not heard:
        print(f"no nodes heard in {args.timeout:g} s on UDP port {args.discovery_port}", file=sys.stderr)
        return 1
    for b in sorted(heard, key=lambda b: b.src):
        print(f"{b.src}  {b.endpoint}  {b.engine}  {b.memory / 2**30:.1f} GiB  {b.model}")
    return 0
