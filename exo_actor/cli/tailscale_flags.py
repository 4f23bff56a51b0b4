"""The command line of clusters across networks: `--discovery` with tailscale, the --tailscale-* flags
(`start` and `peers`), --auto-speculation-ms, and `exo-actor peers --discovery tailscale`."""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import ExoError
from .types import port, positive_float

log = logging.getLogger(__name__)

MODES = ("manual", "udp", "tailscale")  # in the order a combination is written: udp,tailscale
MODES_HELP = "manual, udp, tailscale, or udp,tailscale"


def parse_discovery(text: str) -> str:
    """A discovery mode or a comma-separated combination, written canonically ("tailscale,udp" ->
    "udp,tailscale"); ValueError naming what is wrong."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or any(p not in MODES for p in parts):
        raise ValueError(f"invalid choice: {text!r} (choose {MODES_HELP})")
    if "manual" in parts and len(set(parts)) > 1:
        raise ValueError(f"{text!r}: manual means no discovery (only --peers): it does not combine with others")
    return ",".join(m for m in MODES if m in parts)


class DiscoveryAction(argparse.Action):
    """--discovery MODE[,MODE]; repeating the flag adds modes (--discovery udp --discovery tailscale)."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        before = getattr(namespace, self.dest, None)
        try:
            setattr(namespace, self.dest, parse_discovery(f"{before},{values}" if before else str(values)))
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None


def tailscale_flags(p: argparse.ArgumentParser) -> None:
    """--tailscale-cli, --tailscale-api-key, --tailnet, --tailscale-api-url, --tailscale-tag,
    --tailscale-hostname-prefix, --tailscale-port, --tailscale-interval (`start` and `peers`)."""
    g = p.add_argument_group("Tailscale discovery (--discovery tailscale)")
    g.add_argument(
        "--tailscale-cli",
        metavar="COMMAND",
        default=os.environ.get("EXO_ACTOR_TAILSCALE_CLI", "tailscale"),
        help="the tailscale command whose `status --json` lists the tailnet (tailscale, or $EXO_ACTOR_TAILSCALE_CLI)",
    )
    g.add_argument(
        "--tailscale-api-key",
        metavar="KEY",
        help="list the tailnet by Tailscale's HTTP API with this access token, not by the local daemon "
        "(or $EXO_ACTOR_TAILSCALE_API_KEY; needs --tailnet)",
    )
    g.add_argument("--tailnet", help="the API's tailnet name (- is the key's own tailnet)")
    g.add_argument(
        "--tailscale-api-url", default="https://api.tailscale.com", help="the API (https://api.tailscale.com)"
    )
    g.add_argument(
        "--tailscale-tag",
        default="tag:exo-actor",
        help="connect only to devices with this ACL tag (tag:exo-actor; '' for any device)",
    )
    g.add_argument("--tailscale-hostname-prefix", metavar="PREFIX", help="connect only to hostnames starting with it")
    g.add_argument(
        "--tailscale-port",
        type=port,
        help="the other nodes' actor port (default: this node's --port; a device's custom:exo_actor_port "
        "posture attribute wins, with the API)",
    )
    g.add_argument(
        "--tailscale-interval", type=positive_float, default=5.0, help="seconds between listings of the tailnet (5)"
    )


def speculation_switch_flag(p: argparse.ArgumentParser) -> None:
    """--auto-speculation-ms (`start`)."""
    p.add_argument(
        "--auto-speculation-ms",
        type=non_negative_float,
        default=10.0,
        help="when a round trip to a ring peer exceeds this many ms, requests that do not choose get "
        "prompt-lookup speculation (10; 0: never)",
    )


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def tailscale_config(args: argparse.Namespace, default_port: int | None = None) -> Any:
    """The TailscaleConfig the flags make; an API key without a tailnet (or the reverse) is one error."""
    from ..transport.tailscale_sources import TailscaleConfig

    key = args.tailscale_api_key or os.environ.get("EXO_ACTOR_TAILSCALE_API_KEY") or None
    if key and not args.tailnet:
        raise ExoError("--tailscale-api-key needs --tailnet (the tailnet's name, or - for the key's own tailnet)")
    if args.tailnet and not key:
        raise ExoError("--tailnet needs --tailscale-api-key (or $EXO_ACTOR_TAILSCALE_API_KEY): the API wants a key")
    return TailscaleConfig(
        cli=args.tailscale_cli,
        api_key=key,
        tailnet=args.tailnet,
        api_url=args.tailscale_api_url,
        tag=args.tailscale_tag or None,
        hostname_prefix=args.tailscale_hostname_prefix,
        port=args.tailscale_port or default_port,
        interval=args.tailscale_interval,
    )


def tailnet_address(settings: Any) -> str | None:
    """This device's tailnet IPv4, the address peers reach it at: the daemon's Self, or with the API the
    device named like this host (None, with one warning line, when the tailnet cannot be listed)."""
    from ..transport.tailscale import TailscaleError
    from ..transport.tailscale_sources import source_for

    source = source_for(settings)
    try:
        devices = source.fetch(lambda d: False)
    except TailscaleError as exc:
        log.warning("cannot learn this device's tailnet address (%s); pass --advertise TAILNET_IP", exc)
        return None
    finally:
        getattr(source, "close", lambda: None)()
    hostname = socket.gethostname()
    mine = [d for d in devices if d.is_self] or [d for d in devices if d.hostname == hostname]
    return mine[0].ipv4 if mine else None


def _answers(endpoint: str, timeout: float) -> bool:
    host, _, port_text = endpoint.removeprefix("tcp://").rpartition(":")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout):
            return True
    except OSError:
        return False


def list_tailnet(args: argparse.Namespace) -> int:
    """`peers --discovery tailscale`: one line per device of the tailnet, chosen (and whether its actor
    port answers) or skipped and why; exit 1 when no chosen device answers."""
    from ..transport.tailscale import select
    from ..transport.tailscale_discovery import TailnetDiscovery
    from ..transport.tailscale_sources import source_for

    settings = tailscale_config(args, default_port=52416)
    source = source_for(settings)
    probe = TailnetDiscovery(source, settings.port or 52416, lambda e: None, settings.tag, settings.hostname_prefix)
    devices = source.fetch(probe.candidate)
    found = select(devices, settings.port or 52416, settings.tag, settings.hostname_prefix)
    answering = 0
    for f in found:
        where = (f.endpoint or "").removeprefix("tcp://") or (f.device.ipv4 or "-")
        if f.endpoint is None:
            state = f"skipped: {f.skipped}"
        elif _answers(f.endpoint, min(args.timeout, 2.0)):
            state, answering = "reachable", answering + 1
        else:
            state = f"unreachable: nothing answers on port {f.endpoint.rsplit(':', 1)[1]}"
        print(f"{f.device.hostname:<24} {where:<22} {state}")
    if not answering:
        print(f"no reachable exo-actor node among {len(found)} device(s) of {source.describe()}", file=sys.stderr)
        return 1
    return 0


def has_tailscale(modes: str | Sequence[str]) -> bool:
    return "tailscale" in (modes.split(",") if isinstance(modes, str) else modes)
