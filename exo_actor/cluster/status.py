"""The rows of /v1/cluster that describe other nodes: pure functions of what their Hellos said."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..transport.peers import Peer
from .planner import Plan


def peer_rows(
    peers: Iterable[Peer], alive: Callable[[str], bool], weights_bytes: Callable[[str, str], int | None]
) -> list[dict[str, Any]]:
    """One row per peer that introduced itself, sorted by node id."""
    rows: list[dict[str, Any]] = []
    for p in peers:
        if p.hello is None:
            continue
        hello = p.hello
        rows.append(
            {
                "id": p.node_id,
                "address": p.endpoint.removeprefix("tcp://"),
                "engine": hello.engine,
                "memory_bytes": hello.memory,
                "weights_bytes": weights_bytes(p.node_id, hello.engine),
                "model": hello.model,
                "loaded_plan": hello.loaded,
                "alive": alive(p.node_id),
                "download": (
                    {"done_bytes": hello.download_done, "total_bytes": hello.download_total}
                    if hello.download_total
                    else None
                ),
            }
        )
    return sorted(rows, key=lambda n: n["id"])


def plan_rows(plan: Plan) -> list[dict[str, Any]]:
    return [
        {"node": a.node_id, "start": a.start, "end": a.end, "ring": i}
        for i, ring in enumerate(plan.rings)
        for a in ring
    ]


def peer_downloads(rows: Iterable[dict[str, Any]], this_node: str) -> list[dict[str, Any]]:
    """Downloads other nodes report in their Hellos (this node reports its own in full)."""
    return [
        {
            "node": n["id"],
            "state": "downloading",
            "percent": round(100.0 * n["download"]["done_bytes"] / n["download"]["total_bytes"], 1),
            **n["download"],
        }
        for n in rows
        if n["download"] and n["id"] != this_node
    ]
