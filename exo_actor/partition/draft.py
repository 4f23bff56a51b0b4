"""Where a draft model runs: a pure function of the nodes' free memory."""

from __future__ import annotations

from collections.abc import Mapping


def place_draft(free_bytes: Mapping[str, int], router: str, draft_bytes: int) -> str | None:
    """The node whose DraftActor serves the requests `router` drives.

    The router's own node if the draft fits beside its layers (no network hop per proposal);
    otherwise the node with the most free memory that fits it (ties: the smallest id), so the
    draft lands where it crowds nothing; None when no node has room.
    """
    if free_bytes.get(router, -1) >= draft_bytes:
        return router
    fits = [(-free, node) for node, free in free_bytes.items() if free >= draft_bytes]
    return min(fits)[1] if fits else None
