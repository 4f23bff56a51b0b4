"""A model served by a ring of nodes on a LAN: the planner (pure), the set of ready rings, draft placement,
and ClusterNode, which ties them to the network."""

from .node import ClusterNode
from .planner import Plan, plan_cluster, plan_version

__all__ = ["ClusterNode", "Plan", "plan_cluster", "plan_version"]
