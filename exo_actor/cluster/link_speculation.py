"""LinkSpeculation: prompt-lookup speculation switched on by itself when the ring's links are slow.

Each ring pass crosses every link, so on slow links (a tailnet across cities) a pass costs mostly round
trips, and verifying several drafted tokens per pass pays most (docs/speculative.md: 2.4x at 10 ms per
hop). Every `interval` this node times a Ping to each other node of its ring (a Ping like the heartbeat's,
carrying the same view, with a sequence number of its own range; the Pong echoes it). When the median of a
peer's last round trips exceeds `threshold_ms`, the routers of this node draft with prompt lookup (ngram)
for the requests that did not choose (`draft_tokens` unset; 0 still turns speculation off); below
`OFF_BELOW` of the threshold it turns off again. A node started with its own draft (--enable-speculative)
keeps it: the switch only fills in where nothing was configured.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..actors.router import RouterActor
from ..speculative import Speculation
from ..speculative.drafts import NgramDrafter
from ..transport.messages import Ping, Pong
from ..transport.peers import PeerNetwork, UnknownPeerError

log = logging.getLogger(__name__)

THRESHOLD_MS = 10.0  # the default --auto-speculation-ms
OFF_BELOW = 0.7  # the switch turns off below this fraction of the threshold (no flapping around it)
PROBE_SEQ = 1 << 40  # probe Pings count from here: the heartbeat's Pings count from 1
SAMPLES = 5  # round trips per peer the median is taken over


@dataclass
class AutoSpeculation(Speculation):
    """The prompt-lookup speculation this switch gave a router (and may take back); seeded sampled requests
    decode without it (Speculation.automatic)."""

    automatic: bool = True


def switched(rtt_ms: float | None, threshold_ms: float, on: bool) -> bool:
    """Whether the switch is on after measuring `rtt_ms` (None: nothing measured, no change)."""
    if rtt_ms is None or threshold_ms <= 0:
        return on and threshold_ms > 0
    return rtt_ms > threshold_ms * OFF_BELOW if on else rtt_ms > threshold_ms


class LinkSpeculation:
    def __init__(
        self,
        net: PeerNetwork,
        ring_peers: Callable[[], list[str]],
        routers: Callable[[], list[RouterActor]],
        threshold_ms: float = THRESHOLD_MS,
        draft_tokens: int = 8,
        configured: bool = False,
        interval: float = 1.0,
    ) -> None:
        self.net, self.ring_peers, self.routers = net, ring_peers, routers
        self.threshold_ms, self.draft_tokens, self.interval = threshold_ms, draft_tokens, interval
        self.configured = configured  # this node has its own speculation: the switch leaves it alone
        self.on = False
        self.rtts: dict[str, deque[float]] = {}  # node id -> its last round trips, seconds
        self._sent: dict[int, tuple[str, float]] = {}  # probe seq -> (node id, when sent)
        self._seq = PROBE_SEQ
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.net.on(Pong, self.on_pong)
        if self.threshold_ms > 0:
            self._task = asyncio.create_task(self._probe())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def on_pong(self, msg: Pong) -> None:
        sent = self._sent.pop(msg.seq, None)
        if sent is not None and sent[0] == msg.src:
            self.rtts.setdefault(msg.src, deque(maxlen=SAMPLES)).append(time.monotonic() - sent[1])

    def rtt_ms(self) -> float | None:
        """The slowest ring link: the largest median round trip to a ring peer, ms (None: not measured)."""
        ring = set(self.ring_peers())
        medians = [statistics.median(v) for k, v in self.rtts.items() if k in ring and v]
        return round(1000 * max(medians), 3) if medians else None

    def speculation(self) -> Speculation | None:
        """What a new router of this node speculates with (None: the switch is off)."""
        if not self.on or self.configured:
            return None
        return AutoSpeculation(NgramDrafter(), self.draft_tokens)

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.probe()
            self.decide()

    def probe(self) -> None:
        """Send a timed Ping to each ring peer (it carries this node's current view, as a heartbeat does)."""
        now = time.monotonic()
        self._sent = {s: v for s, v in self._sent.items() if now - v[1] < 10 * self.interval}
        ring = self.ring_peers()
        for gone in [k for k in self.rtts if k not in ring]:
            del self.rtts[gone]
        hears, lost = sorted(self.net.hearing()), sorted(self.net.losing())
        for node_id in ring:
            self._seq += 1
            self._sent[self._seq] = (node_id, now)
            try:
                self.net.send(node_id, Ping(self.net.node_id, self._seq, hears, lost))
            except UnknownPeerError:
                self._sent.pop(self._seq, None)

    def decide(self) -> None:
        """Turn the switch on or off from the measured round trips, and give the routers what it says."""
        rtt = self.rtt_ms()
        on = switched(rtt, self.threshold_ms, self.on)
        if on != self.on:
            self.on = on
            if self.configured:
                log.info("ring round trip %.1f ms: this node's own speculation stays as configured", rtt or 0.0)
            elif on:
                log.info(
                    "ring round trip %.1f ms > %g ms: prompt-lookup speculation on for requests that do not choose",
                    rtt or 0.0,
                    self.threshold_ms,
                )
            else:
                log.info("ring round trip %.1f ms: automatic speculation off again", rtt or 0.0)
        self.apply()

    def apply(self) -> None:
        """Give every router without a configured draft the switch's speculation, or take it back."""
        if self.configured:
            return
        for router in self.routers():
            if self.on and router.speculation is None:
                router.speculation = self.speculation()
            elif not self.on and isinstance(router.speculation, AutoSpeculation):
                router.speculation = None  # requests running keep theirs; new ones decode plainly

    def info(self) -> dict[str, Any]:
        """The /v1/cluster view: on or off, the slowest ring link, the threshold, each peer's round trip."""
        peers = {k: round(1000 * statistics.median(v), 3) for k, v in sorted(self.rtts.items()) if v}
        why = None
        if self.threshold_ms <= 0:
            why = "off: --auto-speculation-ms 0"
        elif self.configured:
            why = "this node speculates as configured (--enable-speculative)"
        return {
            "on": self.on and not self.configured,
            "rtt_ms": self.rtt_ms(),
            "threshold_ms": self.threshold_ms,
            "peers_rtt_ms": peers,
            "draft": "ngram",
            "why": why,
        }
