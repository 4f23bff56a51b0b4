"""ClusterNode: a Node whose model runs on a ring of ShardActors spread over several devices.

Each node knows its peers through Hello messages (manual peers file now; UDP beacons next), plans
the ring itself with the same pure partitioner as every other node, loads its own layer range, and
announces which plan it has loaded. When every node of the plan has loaded it, the ring is ready
and this node's RouterActor drives requests through it. A peer that joins or goes silent makes every
node re-plan; requests on the old ring end with a clear error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .actors.draft import DraftActor, RemoteDrafter
from .actors.ring import RemoteRing
from .actors.router import RouterActor
from .actors.shard import ShardActor, ShardRole
from .config import ClusterConfig
from .engines import ENGINES, Engine, get_engine, limit_threads
from .errors import ExoError
from .node import Node, start_router, total_memory_bytes
from .partition import Assignment, NodeCapacity, PartitionError, memory_weighted, place_draft, split_rings
from .runtime.memory import release_freed_memory
from .speculative import Drafter, Speculation
from .speculative.drafts import draft_bytes, load_drafter
from .storage.downloads import DownloadCancelled, Progress
from .storage.model_store import ensure_layers, ensure_model
from .transport.discovery import Discovery
from .transport.messages import Beacon, Drafted, Failure, Free, Hello, Logits, LogitsBatch
from .transport.peers import Peer, PeerNetwork
from .transport.security import ClusterKey
from .weights import open_model

log = logging.getLogger(__name__)


PLAN_UNIT_ENGINE = "torch"


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
        self.assignments: list[Assignment] = []  # this node's ring
        self.ring_plans: list[list[Assignment]] = []  # every ring
        self.idle: dict[str, str] = {}  # node id -> why it holds no layers
        self.version = 0
        self.loaded = 0
        self.rings: dict[int, tuple[RemoteRing, RouterActor]] = {}  # ready rings by index
        self.net: PeerNetwork | None = None
        self.layer_bytes = 0
        self.draft_bytes = 0
        self.engine: Engine | None = None
        self.draft_host: str | None = None  # the node whose DraftActor serves this node's routers
        self.draft_actor: DraftActor | None = None  # the draft this node hosts, once loaded
        self._draft_loading = False
        self.remote_drafters: list[RemoteDrafter] = []
        self._download_announced = 0.0

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.cluster.advertise}:{self.cluster.advertise_port or self.cluster.port}"

    def _hello(self) -> Hello:
        return Hello(
            self.node_id,
            self.endpoint,
            self.memory,
            self.config.engine,
            self.config.model,
            self.loaded,
            1,
            self.config.draft_model or "",
            self.download.done_bytes if self.download.state == "downloading" else 0,
            self.download.total_bytes if self.download.state == "downloading" else 0,
        )

    def _on_download(self, p: Progress) -> None:
        """Peers learn this node's download progress from its Hello (about once a second)."""
        super()._on_download(p)
        now = time.monotonic()
        if p.state == "downloading" and now - self._download_announced < 1.0:
            return
        self._download_announced = now
        if self.net is not None and getattr(self, "loop", None) is not None:
            self.loop.call_soon_threadsafe(self.net.announce)

    def start(self) -> None:  # the synchronous entry of Node: cluster nodes start on the event loop
        raise RuntimeError("ClusterNode starts with `await start_async()`")

    async def start_async(self) -> None:
        self.state = "loading"
        self.loop = asyncio.get_running_loop()
        try:
            fetch = functools.partial(ensure_model, self.config.model, weights=False, progress=self.download)
            path = await self.loop.run_in_executor(self.compute, fetch)  # config, tokenizer, index: enough to plan
            self.files = await self.loop.run_in_executor(self.compute, open_model, path)
            if self.config.draft_model:  # sized now (and checked against the target); loaded once placed
                self.draft_bytes = await self.loop.run_in_executor(
                    self.compute, draft_bytes, self.config.draft_model, self.files, self.config.engine
                )
        except ExoError as exc:
            self.state, self.error = "failed", str(exc)
            log.error("cannot open %s: %s", self.config.model, exc)
            return
        # plans count layers in the bytes the torch engine holds (the stored, quantized form); a node on a
        # float32 engine advertises its memory scaled down by how much more it holds per layer
        self.layer_bytes = self.files.layer_bytes(PLAN_UNIT_ENGINE)
        key = ClusterKey.from_secret(self.cluster.cluster_key) if self.cluster.cluster_key else None
        if key is None:
            log.warning(
                "no cluster key: any device that can reach port %d can join this cluster, read prompts and "
                "inject activations; fine on a trusted LAN, otherwise start every node with "
                "EXO_ACTOR_CLUSTER_KEY (`exo-actor keygen` makes one)",
                self.cluster.port,
            )
        net = self.net = PeerNetwork(
            self.node_id,
            f"tcp://{self.cluster.host}:{self.cluster.port}",
            self.endpoint,
            self._hello,
            self.cluster.heartbeat,
            self.cluster.timeout,
            key,
        )
        self.shard = ShardActor(net, self.compute)
        net.on(Free, self._on_free)
        net.on(Drafted, lambda m: [d.on_drafted(m) for d in self.remote_drafters])
        net.on(Logits, lambda m: [ring.on_logits(m) for ring, _ in list(self.rings.values())])
        net.on(LogitsBatch, lambda m: [ring.on_logits_batch(m) for ring, _ in list(self.rings.values())])
        net.on(Failure, lambda m: [ring.on_failure(m) for ring, _ in list(self.rings.values())])
        net.on(Hello, lambda m: self._check_ready())
        net.on_peer_up = lambda p: self._replan(f"node {p.node_id} joined")
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
                key=key,
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
        limit_threads(threads)
        self.blas_threads = threads
        log.info("%d shard(s) of the plan on this host: BLAS uses %d thread(s) here", local, threads)

    def _peer_down(self, peer: Peer) -> None:
        for ring, _ in list(self.rings.values()):
            ring.node_down(peer.node_id)
        self._replan(f"node {peer.node_id} stopped answering")

    def _plan_memory(self, memory: int, engine: str) -> int:
        """A node's memory in plan units: bytes of layers as the torch engine holds them."""
        assert self.files is not None
        held = self.files.layer_bytes(engine) if engine in ENGINES else self.files.layer_bytes("numpy")
        return int(memory * self.layer_bytes / max(1, held))

    def _replan(self, why: str = "the nodes changed") -> None:
        assert self.net is not None and self.files is not None
        nodes = [
            NodeCapacity(p.node_id, self._plan_memory(p.hello.memory, p.hello.engine))
            for p in self.net.peers.values()
            if p.hello is not None and p.hello.model == self.config.model
        ]
        n_layers = self.files.args.num_hidden_layers
        if len(nodes) - 1 < self.cluster.wait_for_peers:  # don't load layers for a ring about to change
            self.state = f"waiting for peers ({len(nodes) - 1}/{self.cluster.wait_for_peers})"
            return
        plans: list[list[Assignment]] = []
        idle: dict[str, str] = {}
        for group in split_rings(nodes, max(1, min(self.cluster.rings, len(nodes)))) if nodes else []:
            try:
                plans.append(memory_weighted(group, n_layers, self.layer_bytes))
            except PartitionError as exc:
                idle.update({n.node_id: f"its ring cannot hold the model: {exc}" for n in group})
        in_plan = {a.node_id for plan in plans for a in plan}
        for n in nodes:
            if n.node_id not in in_plan and n.node_id not in idle:
                idle[n.node_id] = "holds no layers: too little memory for its share, or more nodes than layers"
        if not plans:
            self.state, self.error = "no plan", next(iter(idle.values()), "no nodes")
            return
        version = plan_version([a for plan in plans for a in plan], n_layers)
        if version == self.version:
            return
        for i, plan in enumerate(plans):
            log.info("plan %08x ring %d: %s", version, i, ", ".join(f"{a.node_id}[{a.start},{a.end})" for a in plan))
        self._size_blas([a for plan in plans for a in plan])
        mine_ring = next((plan for plan in plans if any(a.node_id == self.node_id for a in plan)), [])
        self.version, self.ring_plans, self.idle = version, plans, idle
        self.assignments, self.plan = mine_ring, [(a.start, a.end) for a in mine_ring]
        self._retire_router("the cluster's layer plan changed; retry the request")
        self.shard.abandon(f"{why} (seen from {self.node_id}); the cluster is re-planning, retry the request")
        self._place_draft(plans)
        self.state = "loading"
        mine = next((a for a in mine_ring if a.node_id == self.node_id), None)
        if mine is None:
            self.shard.role = None
            self.error = idle.get(self.node_id)
            self.loaded = version
            self.net.announce()
            self._check_ready()
            return
        asyncio.ensure_future(self._load(version, mine))

    async def _on_free(self, msg: Free) -> None:
        await self.shard.on_free(msg)
        if self.draft_actor is not None:
            await self.loop.run_in_executor(None, self.draft_actor.free, msg.rid)

    def _place_draft(self, plans: list[list[Assignment]]) -> None:
        """Choose which node's DraftActor serves this node's routers, and load the draft here if this
        node serves any router (partition.place_draft: the router's own node when it has room)."""
        spec = self.config.draft_model
        if not spec or spec == "ngram" or self.net is None or self.files is None:
            return
        free = {
            a.node_id: p.hello.memory - self.files.shard_bytes(a.start, a.end, p.hello.engine)
            for plan in plans
            for a in plan
            if (p := self.net.peers.get(a.node_id)) is not None and p.hello is not None and p.hello.draft == spec
        }
        self.draft_host = place_draft(free, self.node_id, self.draft_bytes)
        if self.draft_host is None:
            log.warning(
                "no node has %.0f MB free for draft %s: decoding without speculation", self.draft_bytes / 1e6, spec
            )
        serves = self.draft_host == self.node_id or any(
            place_draft(free, router, self.draft_bytes) == self.node_id for router in free
        )
        if serves and self.draft_actor is None and not self._draft_loading:
            self._draft_loading = True
            asyncio.ensure_future(self._load_draft(spec))

    async def _load_draft(self, spec: str) -> None:
        assert self.files is not None
        try:
            drafter = await self.loop.run_in_executor(None, load_drafter, spec, self.files, self.config.engine)
        except ExoError as exc:
            log.error("cannot load draft %s: %s; decoding without speculation", spec, exc)
            if self.draft_host == self.node_id:
                self.draft_host = None
            self._check_ready()
            return
        finally:
            self._draft_loading = False
        self.draft_actor = DraftActor(drafter, self.net)
        log.info("draft %s loaded: serving proposals", spec)
        self._check_ready()

    def _drafter(self) -> Drafter | None | bool:
        """The drafter this node's routers use; None: no speculation; False: not loaded yet."""
        spec = self.config.draft_model
        if not spec:
            return None
        if spec == "ngram":
            return load_drafter(spec, self.files)  # type: ignore[arg-type]
        if self.draft_host is None:
            return None
        if self.draft_host == self.node_id:
            return self.draft_actor or False
        assert self.net is not None
        remote = RemoteDrafter(self.net, self.loop, self.draft_host, spec)
        self.remote_drafters.append(remote)
        return remote

    async def _load(self, version: int, mine: Assignment) -> None:
        assert self.files is not None and self.net is not None
        try:
            if self.files.path.is_dir():  # a folder downloaded from the Hub: fetch this shard's files
                self.state = f"downloading layers {mine.start}-{mine.end - 1}"
                stale = lambda: version != self.version  # noqa: E731 - a re-plan stops this download
                layers = (mine.start, mine.end)
                fetch = functools.partial(ensure_layers, self.files.path, layers, None, self.download, stale)
                try:
                    await self.loop.run_in_executor(None, fetch)
                except DownloadCancelled:
                    return
                if stale():
                    return
                self.state = "loading"
            if self.engine is None:  # built off the event loop: an engine may block while it probes its backend
                self.engine = await self.loop.run_in_executor(
                    None, get_engine, self.config.engine, self.config.quantize, self.config.device
                )
            load = self.engine.load_shard
            runner = await self.loop.run_in_executor(self.compute, load, self.files, mine.start, mine.end)
        except ExoError as exc:
            self.state, self.error = "failed", str(exc)
            return
        except Exception as exc:  # a bug must show as a failed node, not a node loading forever
            log.exception("loading layers [%d, %d) failed", mine.start, mine.end)
            self.state, self.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
            return
        if version != self.version:  # re-planned while loading
            return
        idx = next(i for i, a in enumerate(self.assignments) if a.node_id == self.node_id)
        nxt = self.assignments[idx + 1].node_id if idx + 1 < len(self.assignments) else None
        self.shard.role = ShardRole(version, runner, nxt)  # drops the previous plan's shard
        self.loaded = version
        self.error = None
        log.info("loaded layers [%d, %d) for plan %08x", mine.start, mine.end, version)
        self.net.announce()
        self._check_ready()
        # give the dropped shard's memory back; last, so that no re-plan can interleave with the above
        await self.loop.run_in_executor(self.compute, release_freed_memory)

    def _check_ready(self) -> None:
        if self.net is None or not self.version:
            return
        peers = self.net.peers
        members = sum(len(plan) for plan in self.ring_plans)
        if members - 1 < self.cluster.wait_for_peers:
            self.state = f"waiting for peers ({members - 1}/{self.cluster.wait_for_peers})"
            return
        assert self.files is not None
        drafter = None
        for i, plan in enumerate(self.ring_plans):
            if i in self.rings or any(
                (p := peers.get(a.node_id)) is None or p.hello is None or p.hello.loaded != self.version for a in plan
            ):
                continue
            ring = RemoteRing(self.net, self.loop, self.version, [a.node_id for a in plan], self.cluster.step_timeout)
            drafter = self._drafter() if drafter is None else drafter
            if drafter is False:
                self.state = "loading the draft model"
                return
            spec = None
            if drafter:
                spec = Speculation(drafter, self.config.draft_tokens, self.config.adaptive_draft)
            router = start_router(self.config, self.files, ring, spec)
            self.rings[i] = (ring, router)
            self.router = self.router or router
            self.state = "ready"
            log.info("ring %d ready: %d node(s)", i, len(plan))

    def _retire_router(self, reason: str) -> None:
        rings, self.rings, self.router = self.rings, {}, None
        self.remote_drafters = []
        for ring, router in rings.values():
            ring.fail_all(reason)
            router.stop(timeout=0)

    @property
    def in_flight(self) -> int:
        return sum(router.in_flight for _, router in self.rings.values())

    def kv_requests(self) -> int:
        role = self.shard.role if getattr(self, "shard", None) is not None else None
        return len(getattr(role.runner, "caches", {})) if role is not None else 0

    def ready_router(self):  # type: ignore[no-untyped-def]
        if self.state == "ready" and self.rings and self.files is not None:
            # spread requests over the ready rings by load
            return self.files, min((r for _, r in self.rings.values()), key=lambda r: r.in_flight)
        from .node import ModelLoadingError

        why = f": {self.error}" if self.error else ""
        raise ModelLoadingError(f"the cluster is not ready ({self.state}{why}); retry in a few seconds")

    def stop(self) -> None:
        self._retire_router("the node is shutting down")
        self.compute.shutdown(wait=False, cancel_futures=True)

    async def stop_async(self) -> None:
        self.stop()
        if getattr(self, "discovery", None) is not None:
            self.discovery.stop()
        if self.net is not None:
            await self.net.close()

    def _weights_bytes(self, node_id: str, engine: str) -> int | None:
        """Bytes of the weights a node holds for the current plan: measured on this node, from the stored
        tensor kinds (weights/sizes.py) for the others."""
        role = self.shard.role if getattr(self, "shard", None) is not None else None
        if node_id == self.node_id and role is not None:
            return int(role.runner.weight_bytes)
        mine = [a for plan in self.ring_plans for a in plan if a.node_id == node_id]
        if not mine or self.files is None:
            return None
        return sum(self.files.shard_bytes(a.start, a.end, engine) for a in mine)

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
                    "weights_bytes": self._weights_bytes(p.node_id, p.hello.engine),
                    "model": p.hello.model,
                    "loaded_plan": p.hello.loaded,
                    "alive": self.net.alive(p.node_id),
                    "download": (
                        {"done_bytes": p.hello.download_done, "total_bytes": p.hello.download_total}
                        if p.hello.download_total
                        else None
                    ),
                }
            )
        info["nodes"] = sorted(nodes, key=lambda n: n["id"]) or info["nodes"]
        info["plan"] = [
            {"node": a.node_id, "start": a.start, "end": a.end, "ring": i}
            for i, plan in enumerate(self.ring_plans)
            for a in plan
        ]
        info["rings"] = [
            {
                "index": i,
                "nodes": [a.node_id for a in plan],
                "ready": i in self.rings,
                "in_flight": self.rings[i][1].in_flight if i in self.rings else 0,
                "tokens_generated": self.rings[i][1].tokens_generated if i in self.rings else 0,
                "speculative": self.rings[i][1].speculation_info() if i in self.rings else None,
                "prefix_cache": self.rings[i][1].prefix_cache_info() if i in self.rings else None,
                "batching": self.rings[i][1].batching_info() if i in self.rings else None,
            }
            for i, plan in enumerate(self.ring_plans)
        ]
        info["downloads"] = self.downloads_info() + [
            {
                "node": n["id"],
                "state": "downloading",
                "percent": round(100.0 * n["download"]["done_bytes"] / n["download"]["total_bytes"], 1),
                **n["download"],
            }
            for n in nodes
            if n["download"] and n["id"] != self.node_id
        ]
        info["plan_version"] = self.version
        info["this_node"] = self.node_id
        info["blas_threads"] = getattr(self, "blas_threads", None)
        info["kv_requests"] = self.kv_requests()
        info["idle_nodes"] = [{"id": k, "why": why} for k, why in sorted(self.idle.items())]
        info["draft"] = (
            {
                "model": self.config.draft_model,
                "host": self.draft_host if self.config.draft_model != "ngram" else self.node_id,
                "hosted_here": self.draft_actor is not None,
                "proposals_served": self.draft_actor.served if self.draft_actor else 0,
            }
            if self.config.draft_model
            else None
        )
        return info


def blas_threads_for(local_processes: int) -> int:
    """BLAS threads per process when `local_processes` shards share this machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_processes))
