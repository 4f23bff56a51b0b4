"""The Ray backend: the ring's ShardActors as Ray actors; Ray places and restarts them.

The driver (`exo-actor start --backend ray`, driver.py) plans the ring with the same partitioner as a
LAN cluster, asks Ray for a placement group with one bundle per shard (CPUs + the shard's memory), and
starts one ShardHost actor (host.py) per bundle. Each host loads its layer range with the usual engines
and runs the usual ShardActor behind its own ZeroMQ ROUTER: activations travel host to host over
ZeroMQ exactly as on a LAN (benchmarks/bench_ray.py measured a Ray actor call at several times a
ZeroMQ hop). The driver runs the RouterActor, its RemoteRing (in a RingSet, as a LAN node does) and
the gateway.

Supervision: a host that dies is restarted by Ray (max_restarts=-1); its __init__ reloads the shard
and binds a new port. The driver notices the silent host through heartbeats (requests in flight end
at once with a clear error), waits until Ray answers for every host again, then gives every host a
new plan version and everyone's endpoints; when all hosts announce that version, a new router serves.

This is the only package that imports ray (the `exo-actor[ray]` extra).
"""

from .driver import HEADROOM, NAMESPACE, RayNode, connect_ray
from .host import HostSpec, RayBackendError, ShardHost

__all__ = ["HEADROOM", "NAMESPACE", "HostSpec", "RayBackendError", "RayNode", "ShardHost", "connect_ray"]
