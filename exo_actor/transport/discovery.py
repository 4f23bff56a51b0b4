"""mDNS-style discovery: UDP beacons by multicast (239.255.77.77) and broadcast, no configuration.

Every node sends a Beacon (node id, actor endpoint, memory, engine, model; protocol version in the
header) each `interval` seconds to the multicast group and to the broadcast address, on
`port` (default 52417, --discovery-port). Listeners connect to every new endpoint they hear; the
PeerNetwork's heartbeats then decide liveness. Entries not heard for `ttl` seconds expire.
Beacons of another protocol version are ignored with one log line per sender. With a cluster key,
each beacon carries an HMAC-SHA256 tag (transport/security.py) and unsigned ones are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable

from .messages import PROTOCOL_VERSION, Beacon, ProtocolError, decode
from .security import ClusterKey

log = logging.getLogger(__name__)

GROUP = "239.255.77.77"
PORT = 52417


def _receiver(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("", port))
    try:
        mreq = struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton("0.0.0.0"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    except OSError as exc:  # no multicast route: broadcast still works
        log.info("multicast unavailable (%s); listening for broadcast beacons", exc)
    s.setblocking(False)
    return s


def _sender(interface: str | None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)  # never beyond the local network
    if interface:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    s.setblocking(False)
    return s


class Discovery:
    """Announces this node and reports the endpoints of nodes it hears."""

    def __init__(
        self,
        beacon: Callable[[], Beacon] | None,
        on_peer: Callable[[Beacon], None],
        port: int = PORT,
        interval: float = 1.0,
        ttl: float = 5.0,
        interface: str | None = None,
        key: ClusterKey | None = None,
    ) -> None:
        self.beacon, self.on_peer, self.port = beacon, on_peer, port
        self.key = key  # beacons carry an HMAC tag; untagged or wrongly tagged ones are dropped
        self.rejected = 0
        self.interval, self.ttl, self.interface = interval, ttl, interface
        self.heard: dict[str, tuple[Beacon, float]] = {}
        self._ignored: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.rx = _receiver(self.port)
        self._tasks.append(asyncio.create_task(self._listen()))
        if self.beacon is not None:
            self.tx = _sender(self.interface)
            self._tasks.append(asyncio.create_task(self._announce()))

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self.rx.close()
        if self.beacon is not None:
            self.tx.close()

    def peers(self) -> list[Beacon]:
        """Nodes heard within the TTL."""
        now = time.monotonic()
        self.heard = {k: v for k, v in self.heard.items() if now - v[1] < self.ttl}
        return [b for b, _ in self.heard.values()]

    async def _announce(self) -> None:
        assert self.beacon is not None
        while True:
            data = b"".join(bytes(f) for f in self.beacon().encode())
            if self.key is not None:
                data = self.key.sign(data)
            for addr in (GROUP, "255.255.255.255"):
                try:
                    self.tx.sendto(data, (addr, self.port))
                except OSError as exc:
                    log.debug("beacon to %s failed: %s", addr, exc)
            await asyncio.sleep(self.interval)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        me = self.beacon().src if self.beacon else None
        while True:
            data, addr = await loop.sock_recvfrom(self.rx, 65536)
            if self.key is not None:
                payload = self.key.verify(data)
                if payload is None:
                    self.rejected += 1
                    if addr[0] not in self._ignored:
                        self._ignored.add(addr[0])
                        log.warning("ignoring beacons from %s: not signed with this cluster's key", addr[0])
                    continue
                data = payload
            try:
                msg = decode([data])
            except ProtocolError as exc:
                if addr[0] not in self._ignored:
                    self._ignored.add(addr[0])
                    log.warning(
                        "ignoring beacons from %s: %s (this node speaks protocol %d)", addr[0], exc, PROTOCOL_VERSION
                    )
                continue
            if not isinstance(msg, Beacon) or msg.src == me:
                continue
            self.heard[msg.src] = (msg, time.monotonic())
            # every beacon, not only a new node's: a peer dropped after a freeze or a healed partition is
            # reconnected by its next beacon (connect() of a known endpoint costs one lookup)
            self.on_peer(msg)
