"""Membership: which nodes may share rings, as this node sees the cluster.

The peers it hears, plus peers it lost that another peer it hears still hears (a cut link, not a dead
node): with those, every node reaches the same members from the views the Pings carry
(planner.agreed_members), so both sides of a cut link leave out the same node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet

from ..partition import NodeCapacity
from ..transport.messages import Hello
from ..transport.peers import Peer
from .planner import CUT_OFF, agreed_members


class Membership:
    def __init__(self, node_id: str, model: str) -> None:
        self.node_id, self.model = node_id, model
        self.departed: dict[str, Hello] = {}  # peers this node lost; kept while another peer still hears them

    def up(self, peer: Peer) -> None:
        self.departed.pop(peer.node_id, None)

    def down(self, peer: Peer) -> None:
        if peer.hello is not None:
            self.departed[peer.node_id] = peer.hello

    def candidates(self, peers: Mapping[str, Peer], views: Mapping[str, AbstractSet[str]]) -> dict[str, Hello]:
        """The Hellos of every node that may be in a ring: heard here, or lost here but heard by a peer
        heard here (a departed node nobody hears any more is forgotten)."""
        hellos = {p.node_id: p.hello for p in peers.values() if p.hello is not None}
        for node_id, hello in list(self.departed.items()):
            if any(node_id in view for src, view in views.items() if src != self.node_id and src in hellos):
                hellos.setdefault(node_id, hello)
            else:
                del self.departed[node_id]
        return hellos

    def members(
        self,
        peers: Mapping[str, Peer],
        views: Mapping[str, AbstractSet[str]],
        lost: Mapping[str, AbstractSet[str]],
        plan_bytes: Callable[[Hello], int],
    ) -> tuple[list[NodeCapacity], dict[str, str]]:
        """The nodes serving this model that may share rings, with their memory in plan units
        (`plan_bytes`), and why the others may not."""
        nodes = [
            NodeCapacity(h.src, plan_bytes(h)) for h in self.candidates(peers, views).values() if h.model == self.model
        ]
        members = agreed_members(nodes, lost)
        kept = {n.node_id for n in members}
        return members, {n.node_id: CUT_OFF for n in nodes if n.node_id not in kept}
