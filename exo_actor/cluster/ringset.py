"""RingSet: this node's routers and the rings under them, and what the network tells them.

A LAN node may serve several whole copies of the model (rings); the Ray driver serves one. Each router
drives a FailoverRing, which outlives the RemoteRing under it: a re-plan suspends the routers (passes in
flight wait), and when the next plan's ring is ready the same routers continue on it, replaying what
their requests had computed (actors/failover.py). Replies and failures from shards fan out to every
current ring (each picks its own requests); a new request goes to the least-loaded router.
status() is the `rings` list of /v1/cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..actors.failover import FailoverRing
from ..actors.ring import RemoteRing
from ..actors.router import RouterActor
from ..transport.messages import Failure, Logits, LogitsBatch, Sampled
from ..transport.peers import PeerNetwork


class RingSet:
    def __init__(self) -> None:
        self._routers: dict[int, tuple[FailoverRing, RouterActor]] = {}  # by ring index

    def add(self, index: int, ring: RemoteRing, start_router: Callable[[FailoverRing], RouterActor]) -> None:
        """Serve ring `index`: continue its suspended router on `ring`, or start one."""
        entry = self._routers.get(index)
        if entry is not None:
            entry[0].attach(ring)
            entry[1].ring_changed(len(ring.nodes))
            return
        failover = FailoverRing(ring)
        self._routers[index] = (failover, start_router(failover))

    def ready(self, index: int) -> bool:
        entry = self._routers.get(index)
        return entry is not None and entry[0].ring is not None and not entry[0].ring.broken

    def orphans(self, rings: int) -> list[int]:
        """Suspended routers of rings the current plan no longer has (it has `rings`)."""
        return [i for i in self._routers if i >= rings and not self.ready(i)]

    def ring(self, index: int) -> RemoteRing | None:
        entry = self._routers.get(index)
        return entry[0].ring if entry else None

    def router(self, index: int) -> RouterActor | None:
        entry = self._routers.get(index)
        return entry[1] if entry else None

    def failover(self, index: int) -> FailoverRing | None:
        entry = self._routers.get(index)
        return entry[0] if entry else None

    def least_loaded(self) -> RouterActor | None:
        """The router of a ready ring with the fewest requests in flight (None when no ring is ready)."""
        ready = [router for i, (_, router) in self._routers.items() if self.ready(i)]
        return min(ready, key=lambda r: r.in_flight, default=None)

    @property
    def in_flight(self) -> int:
        return sum(router.in_flight for _, router in self._routers.values())

    # fan-out of what shards send back: each ring keeps only its own requests ------------------------
    def _rings(self) -> list[RemoteRing]:
        return [ring for failover, _ in list(self._routers.values()) if (ring := failover.ring) is not None]

    def listen(self, net: PeerNetwork) -> None:
        """Route what last shards send back (logits, chosen tokens, failures) to the rings' requests."""
        net.on(Logits, self.on_logits)
        net.on(LogitsBatch, self.on_logits_batch)
        net.on(Sampled, self.on_sampled)
        net.on(Failure, self.on_failure)

    def on_logits(self, msg: Logits) -> None:
        for ring in self._rings():
            ring.on_logits(msg)

    def on_logits_batch(self, msg: LogitsBatch) -> None:
        for ring in self._rings():
            ring.on_logits_batch(msg)

    def on_sampled(self, msg: Sampled) -> None:
        for ring in self._rings():
            ring.on_sampled(msg)

    def on_failure(self, msg: Failure) -> None:
        for ring in self._rings():
            ring.on_failure(msg)

    def node_down(self, node_id: str) -> None:
        for ring in self._rings():
            ring.node_down(node_id)

    # the node's plan changes --------------------------------------------------------------------------
    def suspend(self, reason: str) -> None:
        """The rings are gone (a re-plan): requests in flight wait for the next plan's rings."""
        for failover, _ in self._routers.values():
            failover.detach(reason)

    def give_up(self, reason: str) -> None:
        """No ring will come (no plan can hold the model): requests waiting for one end with `reason`."""
        for failover, _ in self._routers.values():
            failover.give_up(reason)

    def retire(self, reason: str) -> None:
        """End every request in flight with `reason` and stop every router (the node shuts down)."""
        routers, self._routers = self._routers, {}
        for failover, router in routers.values():
            failover.give_up(reason)
            router.stop(timeout=0)

    def replays(self) -> int:
        return sum(failover.replays for failover, _ in self._routers.values())

    def status(self, rings: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
        """One row per planned ring (`rings`: each ring's node ids), ready or not."""
        rows = []
        for i, nodes in enumerate(rings):
            router = self.router(i)
            rows.append(
                {
                    "index": i,
                    "nodes": list(nodes),
                    "ready": self.ready(i),
                    "in_flight": router.in_flight if router else 0,
                    "tokens_generated": router.tokens_generated if router else 0,
                    "speculative": router.speculation_info() if router else None,
                    "prefix_cache": router.prefix_cache_info() if router else None,
                    "batching": router.batching_info() if router else None,
                }
            )
        return rows
