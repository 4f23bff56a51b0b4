"""RingSet: the ready rings a node's routers drive, and what the network tells them.

A LAN node may serve several whole copies of the model (rings); the Ray driver serves one. Either way
the node keeps its ready rings here: replies and failures from shards fan out to every ring (each picks
its own requests), a lost node fails the requests that crossed it, a re-plan retires them all, and a new
request goes to the least-loaded router. status() is the `rings` list of /v1/cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..actors.ring import RemoteRing
from ..actors.router import RouterActor
from ..transport.messages import Failure, Logits, LogitsBatch


class RingSet:
    def __init__(self) -> None:
        self._rings: dict[int, tuple[RemoteRing, RouterActor]] = {}  # ready rings by index

    def add(self, index: int, ring: RemoteRing, router: RouterActor) -> None:
        self._rings[index] = (ring, router)

    def __contains__(self, index: int) -> bool:
        return index in self._rings

    def __len__(self) -> int:
        return len(self._rings)

    def ring(self, index: int) -> RemoteRing | None:
        entry = self._rings.get(index)
        return entry[0] if entry else None

    def router(self, index: int) -> RouterActor | None:
        entry = self._rings.get(index)
        return entry[1] if entry else None

    def least_loaded(self) -> RouterActor | None:
        """The router with the fewest requests in flight (None when no ring is ready)."""
        return min((r for _, r in self._rings.values()), key=lambda r: r.in_flight, default=None)

    @property
    def in_flight(self) -> int:
        return sum(router.in_flight for _, router in self._rings.values())

    # fan-out of what shards send back: each ring keeps only its own requests ------------------------
    def on_logits(self, msg: Logits) -> None:
        for ring, _ in list(self._rings.values()):
            ring.on_logits(msg)

    def on_logits_batch(self, msg: LogitsBatch) -> None:
        for ring, _ in list(self._rings.values()):
            ring.on_logits_batch(msg)

    def on_failure(self, msg: Failure) -> None:
        for ring, _ in list(self._rings.values()):
            ring.on_failure(msg)

    def node_down(self, node_id: str) -> None:
        for ring, _ in list(self._rings.values()):
            ring.node_down(node_id)

    def retire(self, reason: str) -> None:
        """End every request in flight with `reason` and stop every router (a re-plan, a shutdown)."""
        rings, self._rings = self._rings, {}
        for ring, router in rings.values():
            ring.fail_all(reason)
            router.stop(timeout=0)

    def status(self, rings: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
        """One row per planned ring (`rings`: each ring's node ids), ready or not."""
        rows = []
        for i, nodes in enumerate(rings):
            router = self.router(i)
            rows.append(
                {
                    "index": i,
                    "nodes": list(nodes),
                    "ready": router is not None,
                    "in_flight": router.in_flight if router else 0,
                    "tokens_generated": router.tokens_generated if router else 0,
                    "speculative": router.speculation_info() if router else None,
                    "prefix_cache": router.prefix_cache_info() if router else None,
                    "batching": router.batching_info() if router else None,
                }
            )
        return rows
