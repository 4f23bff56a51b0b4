"""ClusterNode: a Node whose model runs on a ring of ShardActors spread over several devices.

Each node knows its peers through Hello messages (manual peers file now; UDP beacons next), plans
the ring itself with the same pure partitioner as every other node, loads its own layer range, and
announces which plan it has loaded. When every node of the plan has loaded it, the ring is ready
and this node's RouterActor drives requests through it. A peer that joins or goes silent makes every
node re-plan; requests on the old ring end with a clear error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .actors.ring import RemoteRing
from .actors.router import RouterActor
from .actors.shard import ShardActor, ShardRole
from .engines import get_engine
from .errors import ExoError
from .node import Node, total_memory_bytes
from .partition import Assignment, NodeCapacity, PartitionError, memory_weighted
from .registry import resolve_model
from .transport.discovery import Discovery
from .transport.messages import Beacon, Failure, Hello, Logits
from .transport.peers import Peer, PeerNetwork
from .weights import open_model

log = logging.getLogger(__name__)


@dataclass
class ClusterConfig:
    host: str = "0.0.0.0"  # where the ROUTER binds
    port: int = 52416
    advertise: str = "127.0.0.1"  # the host peers use to reach us
    peers: list[str] = field(default_factory=list)  # HOST:PORT of other nodes
    memory: int | None = None  # bytes to advertise (default: physical memory)
    wait_for_peers: int = 0
    heartbeat: float = 0.5
    timeout: float = 3.0
    step_timeout: float = 300.0
    discovery: str = "manual"  # or "udp": beacons (transport/discovery.py)
    discovery_port: int = 52417


def plan_version(plan: list[Assignment], n_layers: int) -> int:
    """A stable id of a plan, the same on every node (never 0)."""
    text = f"{n_layers}|" + ";".join(f"{a.node_id}:{a.start}-{a.end}" for a in plan)
    return zlib.crc32(text.encode()) or 1


class ClusterNode(Node):
    def __init__(self, config: Any, cluster: ClusterConfig, node_id: str | None = None) -> None:
        super().__init__(config)
        if node_id:
            self.node_id = node_id
        self.cluster = cluster
        self.memory = cluster.memory or total_memory_bytes()
        self.compute = ThreadPoolExecutor(1, "exo-compute")
        self.assignments: list[Assignment] = []
        self.version = 0
        self.loaded = 0
        self.ring: RemoteRing | None = None
        self.net: PeerNetwork | None = None
        self.layer_bytes = 0

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.cluster.advertise}:{self.cluster.port}"

    def _hello(self) -> Hello:
        return Hello(self.node_id, self.endpoint, self.memory, self.config.engine, self.config.model, self.loaded, 1)

    def start(self) -> None:  # the synchronous entry of Node: cluster nodes start on the event loop
        raise RuntimeError("ClusterNode starts with `await start_async()`")

    async def start_async(self) -> None:
        self.state = "loading"
        self.loop = asyncio.get_running_loop()
        try:
            path = await self.loop.run_in_executor(self.compute, resolve_model, self.config.model)
            self.files = await self.loop.run_in_executor(self.compute, open_model, path)
        except ExoError as exc:
            self.state, self.error = "failed", str(exc)
            log.error("cannot open %s: %s", self.config.model, exc)
            return
        args = self.files.args
        d, f, kv = args.hidden_size, args.intermediate_size, args.num_key_value_heads * args.dim_head
        self.layer_bytes = 4 * (d * (d + 2 * kv) + d * d + 3 * d * f)  # float32 weights of one layer
        net = self.net = PeerNetwork(
            self.node_id,
            f"tcp://{self.cluster.host}:{self.cluster.port}",
            self.endpoint,
            self._hello,
            self.cluster.heartbeat,
            self.cluster.timeout,
        )
        self.shard = ShardActor(net, self.compute)
        net.on(Logits, lambda m: self.ring.on_logits(m) if self.ring else None)
        net.on(Failure, lambda m: self.ring.on_failure(m) if self.ring else None)
        net.on(Hello, lambda m: self._check_ready())
        net.on_peer_up = lambda p: self._replan()
        net.on_peer_down = self._peer_down
        net.start()
        net.connect(self.endpoint)  # ourselves: a ring of one works the same way
        for peer in self.cluster.peers:
            net.connect(peer if peer.startswith("tcp://") else f"tcp://{peer}")
        if self.cluster.discovery == "udp":
            self.discovery = Discovery(
                lambda: Beacon(self.node_id, self.endpoint, self.memory, self.config.engine, self.config.model),
                lambda b: net.connect(b.endpoint),
                self.cluster.discovery_port,
                interface=self.cluster.advertise,
            )
            self.discovery.start()
        self.state = "waiting for peers"

    def _size_blas(self, plan: list[Assignment]) -> None:
        """Share this machine's cores among the shards that run on it.

        Several shard processes on one machine, each with OpenBLAS's default thread count, starve
        each other (idle BLAS threads spin): measured 0.16x of one process with 3 processes on 2 cores.
        """
        assert self.net is not None
        if os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"):
            return  # the user chose explicitly
        host = self.cluster.advertise
        local = sum(
            1
            for a in plan
            if (p := self.net.peers.get(a.node_id)) and p.endpoint.removeprefix("tcp://").rsplit(":", 1)[0] == host
        )
        threads = blas_threads_for(local)
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")
        self.blas_threads = threads
        log.info("%d shard(s) of the plan on this host: BLAS uses %d thread(s) here", local, threads)

    def _peer_down(self, peer: Peer) -> None:
        if self.ring is not None:
            self.ring.node_down(peer.node_id)
        self._replan()

    def _replan(self) -> None:
        assert self.net is not None and self.files is not None
        nodes = [
            NodeCapacity(p.node_id, p.hello.memory)
            for p in self.net.peers.values()
            if p.hello is not None and p.hello.model == self.config.model
        ]
        try:
            plan = memory_weighted(nodes, self.files.args.num_hidden_layers, self.layer_bytes)
        except PartitionError as exc:
            self.state, self.error = "no plan", str(exc)
            return
        version = plan_version(plan, self.files.args.num_hidden_layers)
        if version == self.version:
            return
        log.info("new plan %08x: %s", version, ", ".join(f"{a.node_id}[{a.start},{a.end})" for a in plan))
        self._size_blas(plan)
        self.version, self.assignments, self.plan = version, plan, [(a.start, a.end) for a in plan]
        self._retire_router("the cluster's layer plan changed; retry the request")
        self.state = "loading"
        mine = next((a for a in plan if a.node_id == self.node_id), None)
        if mine is None:
            self.shard.role = None
            self.error = "this node holds no layers in the current plan (too little memory, or more nodes than layers)"
            self.loaded = version
            self.net.announce()
            self._check_ready()
            return
        asyncio.ensure_future(self._load(version, mine))

    async def _load(self, version: int, mine: Assignment) -> None:
        assert self.files is not None and self.net is not None
        engine = get_engine(self.config.engine)
        try:
            runner = await self.loop.run_in_executor(self.compute, engine.load_shard, self.files, mine.start, mine.end)
        except ExoError as exc:
            self.state, self.error = "failed", str(exc)
            return
        if version != self.version:  # re-planned while loading
            return
        idx = next(i for i, a in enumerate(self.assignments) if a.node_id == self.node_id)
        nxt = self.assignments[idx + 1].node_id if idx + 1 < len(self.assignments) else None
        self.shard.role = ShardRole(version, runner, nxt)
        self.loaded = version
        self.error = None
        log.info("loaded layers [%d, %d) for plan %08x", mine.start, mine.end, version)
        self.net.announce()
        self._check_ready()

    def _check_ready(self) -> None:
        if self.net is None or not self.version or self.router is not None:
            return
        peers = self.net.peers
        for a in self.assignments:
            p = peers.get(a.node_id)
            if p is None or p.hello is None or p.hello.loaded != self.version:
                return
        if len(self.assignments) - 1 < self.cluster.wait_for_peers:
            self.state = f"waiting for peers ({len(self.assignments) - 1}/{self.cluster.wait_for_peers})"
            return
        assert self.files is not None
        self.ring = RemoteRing(
            self.net, self.loop, self.version, [a.node_id for a in self.assignments], self.cluster.step_timeout
        )
        self.router = RouterActor(
            self.ring, self.files.tokenizer, self.files.args.max_position_embeddings, self.config.max_concurrent
        )
        self.router.start()
        self.state = "ready"
        log.info("ring ready: %d node(s)", len(self.assignments))

    def _retire_router(self, reason: str) -> None:
        ring, router = self.ring, self.router
        self.ring, self.router = None, None
        if ring is not None:
            ring.fail_all(reason)
        if router is not None:
            router.stop(timeout=0)

    def ready_router(self):  # type: ignore[no-untyped-def]
        if self.state != "ready":
            from .node import ModelLoadingError

            why = f": {self.error}" if self.error else ""
            raise ModelLoadingError(f"the cluster is not ready ({self.state}{why}); retry in a few seconds")
        return super().ready_router()

    def stop(self) -> None:
        self._retire_router("the node is shutting down")
        self.compute.shutdown(wait=False, cancel_futures=True)

    async def stop_async(self) -> None:
        self.stop()
        if getattr(self, "discovery", None) is not None:
            self.discovery.stop()
        if self.net is not None:
            await self.net.close()

    def cluster_info(self) -> dict[str, Any]:
        info = super().cluster_info()
        nodes = []
        for p in self.net.peers.values() if self.net else []:
            if p.hello is None:
                continue
            host = p.endpoint.removeprefix("tcp://")
            nodes.append(
                {
                    "id": p.node_id,
                    "address": host,
                    "engine": p.hello.engine,
                    "memory_bytes": p.hello.memory,
                    "model": p.hello.model,
                    "loaded_plan": p.hello.loaded,
                    "alive": self.net.alive(p.node_id),
                }
            )
        info["nodes"] = sorted(nodes, key=lambda n: n["id"]) or info["nodes"]
        info["plan"] = [{"node": a.node_id, "start": a.start, "end": a.end} for a in self.assignments]
        info["plan_version"] = self.version
        info["this_node"] = self.node_id
        info["blas_threads"] = getattr(self, "blas_threads", None)
        in_plan = {a.node_id for a in self.assignments}
        info["idle_nodes"] = [
            {"id": n["id"], "why": "holds no layers: too little memory for its share, or more nodes than layers"}
            for n in nodes
            if n["id"] not in in_plan
        ]
        return info


def blas_threads_for(local_processes: int) -> int:
    """BLAS threads per process when `local_processes` shards share this machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_processes))
