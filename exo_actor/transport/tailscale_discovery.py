"""TailnetDiscovery: list the tailnet every few seconds and connect to the devices that run exo-actor nodes.

Each listing (tailscale_sources.py) is filtered by tailscale.select; every chosen device's endpoint goes
to `on_peer`, as the UDP Discovery hands over each beacon's endpoint: the PeerNetwork connects, the
Hellos and heartbeats decide liveness, and the node re-plans as for a LAN peer. A device that goes
offline is no longer handed over, so once its heartbeats stop it leaves and nobody dials it again; when it
is online again, the next listing reconnects it.

A listing that fails (no daemon, a refused key) or finds no device to reach is one warning line, logged
again only when the problem changes; the node keeps serving with the peers it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from .tailscale import Device, Found, TailscaleError, criteria, select
from .tailscale_sources import Source

log = logging.getLogger(__name__)


class TailnetDiscovery:
    def __init__(
        self,
        source: Source,
        port: int,
        on_peer: Callable[[str], None],
        tag: str | None,
        prefix: str | None = None,
        interval: float = 5.0,
        reached: Callable[[str], bool] = lambda endpoint: True,
    ) -> None:
        self.source, self.port, self.on_peer = source, port, on_peer
        self.tag, self.prefix, self.interval = tag, prefix, interval
        self.reached = reached  # whether a peer answers at an endpoint (for the status: "unreachable")
        self.found: list[Found] = []
        self.error: str | None = None  # the last listing's problem, if any
        self.listings = 0  # successful listings so far
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def candidate(self, device: Device) -> bool:
        """A device worth asking more about (its port): one that select() could choose."""
        return device.online and not device.is_self and (not self.tag or self.tag in device.tags)

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(Exception):  # a bug must not stop discovery; it is logged below
                await self.poll_once(loop)
            await asyncio.sleep(self.interval)

    async def poll_once(self, loop: asyncio.AbstractEventLoop | None = None) -> list[Found]:
        """List the tailnet once and hand every chosen endpoint to on_peer."""
        loop = loop or asyncio.get_running_loop()
        try:
            devices = await loop.run_in_executor(None, self.source.fetch, self.candidate)
        except TailscaleError as exc:
            self._problem(f"cannot list the tailnet: {exc}")
            return self.found
        except Exception:
            log.exception("listing the tailnet failed")
            raise
        found = select(devices, self.port, self.tag, self.prefix)
        self._log_changes(found)
        self.found, self.listings = found, self.listings + 1
        chosen = [f.endpoint for f in found if f.endpoint]
        for endpoint in chosen:
            self.on_peer(endpoint)
        if chosen:
            self._problem(None)
        else:
            skipped = ", ".join(f"{f.device.hostname} ({f.skipped})" for f in found if not f.device.is_self)
            hint = (
                f"tag the nodes' devices: tailscale up --advertise-tags={self.tag}" if self.tag else "check the filter"
            )
            self._problem(
                f"no {criteria(self.tag, self.prefix)} on the tailnet ({skipped or 'no other device'}); {hint}"
            )
        return found

    def _problem(self, message: str | None) -> None:
        """One warning per distinct problem (not one per listing); one info line when it is solved."""
        if message == self.error:
            return
        if message is not None:
            log.warning("tailscale discovery: %s; serving with the peers this node has", message)
        elif self.error is not None:
            log.info("tailscale discovery: listing the tailnet again (%s)", self.source.describe())
        self.error = message

    def _log_changes(self, found: list[Found]) -> None:
        before = {f.device.hostname: f.endpoint for f in self.found}
        for f in found:
            if f.endpoint and before.get(f.device.hostname) != f.endpoint:
                log.info("tailscale discovery: %s at %s", f.device.hostname, f.endpoint)
            elif not f.endpoint and before.get(f.device.hostname):
                log.info("tailscale discovery: %s left the choice: %s", f.device.hostname, f.skipped)

    def rows(self) -> list[dict[str, Any]]:
        """One row per device of the last listing: its state (connected, unreachable, skipped) and why."""
        out = []
        for f in self.found:
            d = f.device
            if f.endpoint is None:
                state, why = "skipped", f.skipped
            elif self.reached(f.endpoint):
                state, why = "connected", None
            else:
                state, why = "unreachable", f"no exo-actor node answers at {f.endpoint.removeprefix('tcp://')}"
            out.append(
                {
                    "hostname": d.hostname,
                    "dns_name": d.dns_name,
                    "ipv4": d.ipv4,
                    "tags": list(d.tags),
                    "online": d.online,
                }
                | {"endpoint": f.endpoint, "state": state, "why": why}
            )
        return out

    def info(self) -> dict[str, Any]:
        """The /v1/cluster view: the source, its last problem, and the devices."""
        return {
            "source": self.source.describe(),
            "filter": criteria(self.tag, self.prefix),
            "error": self.error,
            "listings": self.listings,
            "devices": self.rows(),
        }
