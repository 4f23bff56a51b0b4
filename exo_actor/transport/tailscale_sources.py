"""Where a node lists its tailnet: the local daemon (`tailscale status --json`) or Tailscale's HTTP API.

Each source's `fetch()` returns the tailnet's devices (tailscale.py parses them) or raises one
TailscaleError whose message says what to fix: no `tailscale` command, a daemon that is not running, an
API key the API refuses, a tailnet it does not know. Both block (a subprocess, an HTTP request): the node
calls them on a worker thread.

The API source also reads each candidate device's posture attributes (`GET /api/v2/device/{id}/attributes`)
for the actor port: a device whose `custom:exo_actor_port` attribute is set is reached on that port, every
other one on the default port. A key without the scope to read attributes only loses that (one log line).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from .tailscale import DEFAULT_TAG, Device, TailscaleError, parse_devices, parse_status

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

API_URL = "https://api.tailscale.com"
PORT_ATTRIBUTE = "custom:exo_actor_port"
ATTRIBUTES_TTL = 60.0  # seconds a device's posture attributes are reused before being asked for again


@dataclass(frozen=True)
class TailscaleConfig:
    """How a node finds its peers on a tailnet (`--discovery tailscale`)."""

    cli: str = "tailscale"  # the command (split like a shell line) whose `status --json` lists the tailnet
    api_key: str | None = None  # with `tailnet`: list the tailnet by the HTTP API instead of the daemon
    tailnet: str | None = None  # the API's tailnet name ("-": the key's default tailnet)
    api_url: str = API_URL
    tag: str | None = DEFAULT_TAG  # devices must carry it (None: any tag or none)
    hostname_prefix: str | None = None  # devices' hostnames must start with it (None: any)
    port: int | None = None  # the actor port of the devices (None: this node's own)
    port_attribute: str = PORT_ATTRIBUTE  # posture attribute naming a device's port (API only)
    interval: float = 5.0  # seconds between listings

    @property
    def uses_api(self) -> bool:
        return self.api_key is not None


class Source(Protocol):
    """A view of the tailnet."""

    def fetch(self, candidate: Callable[[Device], bool]) -> list[Device]:
        """The tailnet's devices; `candidate` marks those worth more requests (their actor port)."""
        ...

    def describe(self) -> str:
        """The source, for messages ("`tailscale status --json`")."""
        ...


class CliSource:
    """The local daemon, through `tailscale status --json`."""

    def __init__(self, command: str = "tailscale", timeout: float = 10.0) -> None:
        self.argv = [*shlex.split(command), "status", "--json"]
        self.timeout = timeout

    def describe(self) -> str:
        return f"`{shlex.join(self.argv)}`"

    def fetch(self, candidate: Callable[[Device], bool] = lambda d: True) -> list[Device]:
        try:
            done = subprocess.run(self.argv, capture_output=True, text=True, timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise TailscaleError(
                f"cannot run {self.describe()}: {self.argv[0]} is not installed (install Tailscale, pass "
                "--tailscale-cli PATH, or list the tailnet by its API: --tailscale-api-key with --tailnet)"
            ) from None
        except PermissionError:
            raise TailscaleError(f"cannot run {self.describe()}: {self.argv[0]} is not executable") from None
        except subprocess.TimeoutExpired:
            raise TailscaleError(
                f"{self.describe()} did not answer in {self.timeout:g} s: is tailscaled running?"
            ) from None
        if done.returncode != 0:
            said = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            why = said[-1] if said else f"exit status {done.returncode}"
            raise TailscaleError(f"{self.describe()} failed: {why} (is tailscaled running? `tailscale up` starts it)")
        return parse_status(done.stdout)


class ApiSource:
    """Tailscale's HTTP API: the tailnet's device list, with an API access token."""

    def __init__(
        self,
        api_key: str,
        tailnet: str,
        url: str = API_URL,
        port_attribute: str = PORT_ATTRIBUTE,
        self_ips: frozenset[str] = frozenset(),
        timeout: float = 10.0,
    ) -> None:
        import httpx  # here, not at the module's top: with rich and pygments it costs a node ~6 MiB resident

        self.tailnet, self.url, self.port_attribute, self.self_ips = tailnet, url.rstrip("/"), port_attribute, self_ips
        self.client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout, follow_redirects=True
        )
        self._attributes: dict[str, tuple[float, int | None]] = {}  # device id -> (when read, port)
        self._read_attributes = True  # until the API refuses them

    def describe(self) -> str:
        return f"the Tailscale API at {self.url} (tailnet {self.tailnet})"

    def close(self) -> None:
        self.client.close()

    def _get(self, path: str) -> httpx.Response:
        import httpx

        try:
            return self.client.get(path)
        except httpx.HTTPError as exc:
            raise TailscaleError(f"cannot reach the Tailscale API at {self.url}: {exc or type(exc).__name__}") from None

    def fetch(self, candidate: Callable[[Device], bool] = lambda d: True) -> list[Device]:
        r = self._get(f"/api/v2/tailnet/{self.tailnet}/devices")
        if r.status_code in (401, 403):
            raise TailscaleError(
                f"the Tailscale API refused the API key (HTTP {r.status_code}: {_message(r)}): check "
                "--tailscale-api-key (an unexpired tskey-api-... access token of this tailnet, allowed to read devices)"
            )
        if r.status_code == 404:
            raise TailscaleError(
                f"the Tailscale API knows no tailnet {self.tailnet!r} (HTTP 404: {_message(r)}): check --tailnet "
                "(- is the key's own tailnet)"
            )
        if r.status_code != 200:
            raise TailscaleError(f"the Tailscale API answered HTTP {r.status_code}: {_message(r)}")
        devices = parse_devices(r.text, self.self_ips)
        return [replace(d, port=self._port(d)) if candidate(d) and d.device_id else d for d in devices]

    def _port(self, device: Device) -> int | None:
        """The actor port the device's posture attribute names (None: none, or the key cannot read it)."""
        if not self._read_attributes:
            return None
        cached = self._attributes.get(device.device_id)
        if cached is not None and time.monotonic() - cached[0] < ATTRIBUTES_TTL:
            return cached[1]
        r = self._get(f"/api/v2/device/{device.device_id}/attributes")
        if r.status_code in (401, 403):
            self._read_attributes = False
            log.warning(
                "the Tailscale API key may not read posture attributes (HTTP %d): every device is reached on "
                "the default port",
                r.status_code,
            )
            return None
        port = None
        if r.status_code == 200:
            try:
                value = r.json().get("attributes", {}).get(self.port_attribute)
            except (ValueError, AttributeError):
                value = None
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
                port = value
            elif value is not None:
                log.warning(
                    "device %s: %s=%r is not a port; using the default", device.hostname, self.port_attribute, value
                )
        self._attributes[device.device_id] = (time.monotonic(), port)
        return port


def _message(r: httpx.Response) -> str:
    """The API's error message ({"message": ...}), else the start of the body."""
    try:
        body = r.json()
    except ValueError:
        return r.text[:200].strip() or r.reason_phrase
    return str(body.get("message") or body) if isinstance(body, dict) else str(body)[:200]


def source_for(config: TailscaleConfig, self_ips: frozenset[str] = frozenset()) -> CliSource | ApiSource:
    """The API when the config has a key, else the daemon."""
    if config.api_key is not None:
        return ApiSource(config.api_key, config.tailnet or "-", config.api_url, config.port_attribute, self_ips)
    return CliSource(config.cli)
