"""Tailscale's two views of a tailnet, read into one Device record, and which devices a node should reach.

Two formats, parsed here and nowhere else:

- the local daemon's `tailscale status --json` (Go's ipnstate.Status): {"BackendState": "Running",
  "Self": PeerStatus, "Peer": {"nodekey:...": PeerStatus}}, a PeerStatus holding "HostName", "DNSName",
  "TailscaleIPs", "Online" and, for tagged devices, "Tags";
- Tailscale's HTTP API, `GET /api/v2/tailnet/{tailnet}/devices`: {"devices": [{"nodeId", "hostname", "name",
  "addresses", "tags", "authorized", "connectedToControl", "lastSeen", ...}]}.

`select` keeps the devices to connect to (online, carrying the tag or hostname prefix, with a tailnet IPv4)
and says for every other one why it was skipped. Everything here is pure: the sources that run the command
or call the API are in tailscale_sources.py, the polling in tailscale_discovery.py.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import ExoError

DEFAULT_TAG = "tag:exo-actor"
# the API's devices have "connectedToControl"; where a reply lacks it, a device seen this recently is online
API_ONLINE_WITHIN = timedelta(minutes=5)


class TailscaleError(ExoError):
    """The tailnet cannot be listed (no daemon, a refused API key, a reply that is not the documented JSON)."""


@dataclass(frozen=True)
class Device:
    """One device of the tailnet, as either source describes it."""

    hostname: str
    dns_name: str  # the MagicDNS name, without the trailing dot
    ipv4: str | None  # its tailnet IPv4 (100.x.y.z), None when it has none
    online: bool
    tags: tuple[str, ...] = ()
    device_id: str = ""  # the API's nodeId, or the daemon's stable node ID
    is_self: bool = False  # the device this node runs on
    authorized: bool = True  # the API's "authorized" (the daemon lists only authorized peers)
    port: int | None = None  # the actor port its posture attribute names (API only; None: the default)


@dataclass(frozen=True)
class Found:
    """A device and what this node does with it: connect to `endpoint`, or skip it for `skipped`."""

    device: Device
    endpoint: str | None = None
    skipped: str | None = None


def _load(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TailscaleError(f"{what} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _ipv4(addresses: object) -> str | None:
    for text in addresses if isinstance(addresses, list) else []:
        try:
            if isinstance(text, str) and ipaddress.ip_address(text).version == 4:
                return text
        except ValueError:
            continue
    return None


def _tags(value: object) -> tuple[str, ...]:
    return tuple(t for t in value if isinstance(t, str)) if isinstance(value, list) else ()


def _peer_status(entry: object, what: str, is_self: bool) -> Device:
    if not isinstance(entry, dict) or not isinstance(entry.get("HostName"), str):
        raise TailscaleError(f"{what} is not a PeerStatus object with a HostName")
    return Device(
        hostname=entry["HostName"],
        dns_name=str(entry.get("DNSName") or "").rstrip("."),
        ipv4=_ipv4(entry.get("TailscaleIPs")),
        online=entry.get("Online") is True,
        tags=_tags(entry.get("Tags")),
        device_id=str(entry.get("ID") or ""),
        is_self=is_self,
    )


def parse_status(text: str) -> list[Device]:
    """The devices in `tailscale status --json` output (this device first); a daemon that is not running
    (BackendState other than Running) or output that is not ipnstate.Status is a TailscaleError."""
    status = _load(text, "`tailscale status --json` output")
    if not isinstance(status, dict) or "BackendState" not in status:
        raise TailscaleError("`tailscale status --json` output has no BackendState: not a Tailscale status")
    state = status["BackendState"]
    if state != "Running":
        hint = "log in with `tailscale up`" if state in ("NeedsLogin", "NeedsMachineAuth") else "run `tailscale up`"
        raise TailscaleError(f"Tailscale on this device is not connected (BackendState {state}): {hint}")
    peers = status.get("Peer")
    peers = {} if peers is None else peers  # null when the tailnet has no other device
    if not isinstance(peers, dict):
        raise TailscaleError("`tailscale status --json` output: Peer is not a map of node keys to peers")
    devices = [_peer_status(status.get("Self"), "`tailscale status --json` Self", is_self=True)]
    devices += [_peer_status(p, f"`tailscale status --json` peer {k}", is_self=False) for k, p in peers.items()]
    return devices


def _api_online(entry: dict[str, Any], now: datetime) -> bool:
    connected = entry.get("connectedToControl")
    if isinstance(connected, bool):
        return connected
    try:
        seen = datetime.fromisoformat(str(entry.get("lastSeen", "")).replace("Z", "+00:00"))
    except ValueError:
        return False
    return now - seen < API_ONLINE_WITHIN


def parse_devices(text: str, self_ips: frozenset[str] = frozenset(), now: datetime | None = None) -> list[Device]:
    """The devices in an API `GET /api/v2/tailnet/{tailnet}/devices` reply; a device holding one of
    `self_ips` is this node's own."""
    reply = _load(text, "the Tailscale API's device list")
    devices = reply.get("devices") if isinstance(reply, dict) else None
    if not isinstance(devices, list):
        raise TailscaleError('the Tailscale API\'s device list has no "devices" array')
    now = now or datetime.now(UTC)
    out = []
    for i, entry in enumerate(devices):
        if not isinstance(entry, dict) or not isinstance(entry.get("hostname"), str):
            raise TailscaleError(f"the Tailscale API's device {i} is not a device object with a hostname")
        addresses = entry.get("addresses")
        out.append(
            Device(
                hostname=entry["hostname"],
                dns_name=str(entry.get("name") or "").rstrip("."),
                ipv4=_ipv4(addresses),
                online=_api_online(entry, now),
                tags=_tags(entry.get("tags")),
                device_id=str(entry.get("nodeId") or entry.get("id") or ""),
                is_self=bool(self_ips & set(addresses if isinstance(addresses, list) else [])),
                authorized=entry.get("authorized", True) is not False,
            )
        )
    return out


def select(devices: list[Device], port: int, tag: str | None = DEFAULT_TAG, prefix: str | None = None) -> list[Found]:
    """Each device with the endpoint to connect to, or why it is skipped: a device must be online,
    authorized, have a tailnet IPv4, and carry `tag` (when given) and a hostname starting with `prefix`
    (when given). This node's own device is listed, skipped as "this device"."""
    out = []
    for d in devices:
        why = None
        if d.is_self:
            why = "this device"
        elif not d.online:
            why = "offline"
        elif not d.authorized:
            why = "not authorized in the tailnet"
        elif tag and tag not in d.tags:
            why = f"untagged (no {tag})"
        elif prefix and not d.hostname.startswith(prefix):
            why = f"hostname does not start with {prefix!r}"
        elif d.ipv4 is None:
            why = "no tailnet IPv4 address"
        endpoint = None if why else f"tcp://{d.ipv4}:{d.port or port}"
        out.append(Found(d, endpoint, why))
    return sorted(out, key=lambda f: (f.endpoint is None, f.device.hostname))


def criteria(tag: str | None, prefix: str | None) -> str:
    """What a device must be to be chosen, for messages: "online devices tagged tag:exo-actor"."""
    parts = [f"tagged {tag}"] if tag else []
    parts += [f"named {prefix}*"] if prefix else []
    return "online devices" + (" " + " and ".join(parts) if parts else "")
