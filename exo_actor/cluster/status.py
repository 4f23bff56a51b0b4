"""/v1/cluster of a cluster node: its plan, rings and draft, and rows describing the other nodes (pure
functions of what their Hellos said)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..transport.peers import Peer
from .planner import Plan

if TYPE_CHECKING:
    from .node import ClusterNode


def cluster_status(node: ClusterNode, info: dict[str, Any]) -> dict[str, Any]:
    """`info` (what every node reports about itself) completed with the cluster's view."""
    net = node.net
    peers = list(net.peers.values()) if net is not None else []
    nodes = peer_rows(peers, net.alive if net else lambda _: False, lambda n, e: weights_bytes(node, n, e))
    plan = node.current
    info["nodes"] = nodes or info["nodes"]
    info["plan"] = plan_rows(plan)
    info["rings"] = node.rings.status([[a.node_id for a in ring] for ring in plan.rings])
    info["downloads"] = node.downloads_info() + peer_downloads(nodes, node.node_id)
    info["plan_version"] = plan.version
    info["this_node"] = node.node_id
    info["blas_threads"] = node.blas_threads
    info["kv_requests"] = node.kv_requests()
    info["idle_nodes"] = [{"id": k, "why": why} for k, why in sorted(plan.idle.items())]
    info["draft"] = node.drafts.info() if node.drafts is not None else None
    info["failover_replays"] = node.rings.replays()
    info["auto_speculation"] = node.link.info() if node.link is not None else None
    info["tailscale"] = node.tailnet.info() if node.tailnet is not None else None
    return info


def weights_bytes(node: ClusterNode, node_id: str, engine: str) -> int | None:
    """Bytes of the weights a node holds for the current plan: measured on this node, from the stored
    tensor kinds (weights/sizes.py) for the others."""
    role = node.shard.role if node.shard is not None else None
    if node_id == node.node_id and role is not None:
        return int(role.runner.weight_bytes)
    mine = [a for a in node.current.assignments if a.node_id == node_id]
    if not mine or node.files is None:
        return None
    return sum(node.files.shard_bytes(a.start, a.end, engine) for a in mine)


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
