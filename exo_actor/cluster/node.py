"""ClusterNode: a Node whose model runs on a ring of ShardActors spread over several devices.

Each node learns its peers from Hello messages (a peers file, or UDP beacons), plans the rings itself
with the same pure planner as every other node (planner.py), loads its own layer range, and announces
which plan it has loaded. When every node of a ring has loaded the plan, the ring is ready and this
node's RouterActor drives requests through it (ringset.py). A peer that joins or goes silent makes every
node re-plan; requests on the old ring end with a clear error.

Everything here runs on the node's event loop (one thread): handlers of the network, the planner, the
state. Downloads and weight loads run on worker threads and report back through the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..actors.failover import FailoverRing
from ..actors.ring import RemoteRing
from ..actors.router import RouterActor
from ..actors.shard import ShardActor, ShardRole
from ..config import ClusterConfig, NodeConfig
from ..engines import ENGINES, Engine, engine_for_model, get_engine, limit_threads
from ..errors import ExoError
from ..node import ModelLoadingError, Node, NodeState, start_router, total_memory_bytes
from ..partition import Assignment, NodeCapacity
from ..runtime.memory import release_freed_memory
from ..speculative import Speculation
from ..speculative.drafts import draft_bytes
from ..storage.downloads import DownloadCancelled, Progress
from ..storage.model_store import ensure_layers, ensure_model
from ..transport.discovery import Discovery
from ..transport.messages import Beacon, Drafted, Free, Hello
from ..transport.peers import Peer, PeerNetwork
from ..transport.security import ClusterKey
from ..transport.tailscale_discovery import TailnetDiscovery
from ..weights import ModelFiles, open_model
from .drafts import DraftService
from .link_speculation import LinkSpeculation
from .membership import Membership
from .planner import (
    CUT_OFF,
    EMPTY_PLAN,
    PLAN_UNIT_ENGINE,
    Plan,
    blas_threads_for,
    plan_cluster,
    plan_memory,
)
from .ringset import RingSet
from .status import cluster_status
from .wide_area import auto_speculation_ms, start_tailnet

log = logging.getLogger(__name__)

# How a node builds its network and its discovery; tests inject their own (e.g. a network that drops a peer).
NetworkFactory = Callable[..., PeerNetwork]
DiscoveryFactory = Callable[..., Discovery]


class ClusterNode(Node):
    def __init__(
        self,
        config: NodeConfig,
        cluster: ClusterConfig,
        node_id: str | None = None,
        *,
        engine: Engine | None = None,
        network: NetworkFactory = PeerNetwork,
        discovery: DiscoveryFactory = Discovery,
    ) -> None:
        super().__init__(config)
        if node_id:
            self.node_id = node_id
        self.cluster = cluster
        self.memory = cluster.memory or total_memory_bytes()
        self.compute = ThreadPoolExecutor(1, "exo-compute")
        self.engine = engine  # built on first load when not given
        self._network, self._discovery = network, discovery
        self.current: Plan = EMPTY_PLAN
        self._gathered = False  # --wait-for-peers was met once (it gates only the first plan)
        self.loaded = 0  # the plan version this node has loaded its layers for
        self.rings = RingSet()
        self.membership = Membership(self.node_id, config.model)
        self.net: PeerNetwork | None = None
        self.shard: ShardActor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the node's event loop, once started
        self.discovery: Discovery | None = None
        self.tailnet: TailnetDiscovery | None = None  # --discovery tailscale
        self.link: LinkSpeculation | None = None  # prompt lookup on slow ring links (link_speculation.py)
        self.drafts: DraftService | None = None
        self.layer_bytes = 0
        self.draft_bytes = 0
        self.blas_threads: int | None = None
        self._draft_hosts: dict[int, str | None] = {}  # ring index -> the draft host its router drafts from
        self._download_announced = 0.0

    @property
    def version(self) -> int:
        return self.current.version

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.cluster.advertise}:{self.cluster.advertise_port or self.cluster.port}"

    def _hello(self) -> Hello:
        downloading = self.download.state == "downloading"
        return Hello(
            self.node_id,
            self.endpoint,
            self.memory,
            self.config.engine,
            self.config.model,
            self.loaded,
            1,
            self.config.draft_model or "",
            self.download.done_bytes if downloading else 0,
            self.download.total_bytes if downloading else 0,
        )

    def _on_download(self, p: Progress) -> None:
        """Called on a download thread: the state changes on the event loop (which owns it); peers learn
        the progress from this node's Hello (about once a second)."""
        self._log_download(p)
        loop = self.loop
        if loop is None:
            return
        loop.call_soon_threadsafe(self._follow_download, p)
        now = time.monotonic()
        if p.state == "downloading" and now - self._download_announced < 1.0:
            return
        self._download_announced = now
        if self.net is not None:
            loop.call_soon_threadsafe(self.net.announce)

    def start(self) -> None:  # the synchronous entry of Node: cluster nodes start on the event loop
        raise RuntimeError("ClusterNode starts with `await start_async()`")

    async def start_async(self) -> None:
        self.set_state(NodeState.LOADING)
        loop = self.loop = asyncio.get_running_loop()
        try:
            fetch = functools.partial(ensure_model, self.config.model, weights=False, progress=self.download)
            path = await loop.run_in_executor(self.compute, fetch)  # config, tokenizer, index: enough to plan
            self.files = await loop.run_in_executor(self.compute, open_model, path)
            engine = engine_for_model(self.config.engine, self.files.args, self.config.engine_by_auto)
            if engine != self.config.engine:  # before any plan: peers see the engine that will run
                self.config = dataclasses.replace(self.config, engine=engine)
                self.engine = None
            if self.config.draft_model:  # sized now (and checked against the target); loaded once placed
                self.draft_bytes = await loop.run_in_executor(
                    self.compute, draft_bytes, self.config.draft_model, self.files, self.config.engine
                )
        except ExoError as exc:
            self.fail(str(exc))
            log.error("cannot open %s: %s", self.config.model, exc)
            return
        self.layer_bytes = self.files.layer_bytes(PLAN_UNIT_ENGINE)
        key = ClusterKey.from_secret(self.cluster.cluster_key) if self.cluster.cluster_key else None
        if key is None:
            log.warning(
                "no cluster key: any device that can reach port %d can join this cluster, read prompts and "
                "inject activations; fine on a trusted LAN, otherwise start every node with "
                "EXO_ACTOR_CLUSTER_KEY (`exo-actor keygen` makes one)",
                self.cluster.port,
            )
        net = self.net = self._network(
            self.node_id,
            f"tcp://{self.cluster.host}:{self.cluster.port}",
            self.endpoint,
            self._hello,
            self.cluster.heartbeat,
            self.cluster.timeout,
            key,
        )
        self.shard = ShardActor(net, self.compute)
        self.drafts = DraftService(
            self.config.draft_model,
            self.node_id,
            net,
            self.files,
            self.config.engine,
            self.draft_bytes,
            self._check_ready,
        )
        net.on(Free, self._on_free)
        net.on(Drafted, self.drafts.on_drafted)
        self.rings.listen(net)
        net.on(Hello, lambda m: self._check_ready())
        net.on_peer_up = self._peer_up
        net.on_peer_down = self._peer_down
        net.on_views = lambda: self._replan("the nodes' reachability changed")
        net.start()
        net.connect(net.endpoint)  # ourselves: a ring of one works the same way
        for peer in self.cluster.peers:
            net.connect(peer if peer.startswith("tcp://") else f"tcp://{peer}", keep=True)  # retried while down
        if self.cluster.discovery == "udp":
            self.discovery = self._discovery(
                lambda: Beacon(self.node_id, net.endpoint, self.memory, self.config.engine, self.config.model),
                lambda b: net.connect(b.endpoint),
                self.cluster.discovery_port,
                interface=self.cluster.advertise,
                key=key,
            )
            self.discovery.start()
        self.tailnet = start_tailnet(self.cluster, net)
        self.link = LinkSpeculation(
            net,
            lambda: [a.node_id for ring in self.current.rings for a in ring if a.node_id != self.node_id],
            lambda: [r for i in range(len(self.current.rings)) if (r := self.rings.router(i)) is not None],
            auto_speculation_ms(self.cluster),
            self.config.draft_tokens,
            configured=bool(self.config.draft_model),
        )
        self.link.start()
        self.set_state(NodeState.WAITING_FOR_PEERS)

    # planning ------------------------------------------------------------------------------------
    def _peer_up(self, peer: Peer) -> None:
        self.membership.up(peer)
        self._replan(f"node {peer.node_id} joined")

    def _peer_down(self, peer: Peer) -> None:
        self.membership.down(peer)
        self.rings.node_down(peer.node_id)
        self._replan(f"node {peer.node_id} stopped answering")

    def _capacities(self) -> tuple[list[NodeCapacity], dict[str, str]]:
        """The nodes that may share rings (membership.py), memory in plan units (planner.plan_memory)."""
        assert self.net is not None and self.files is not None
        files = self.files

        def plan_bytes(hello: Hello) -> int:
            engine = hello.engine if hello.engine in ENGINES else "numpy"
            return plan_memory(hello.memory, files.layer_bytes(engine), self.layer_bytes)

        return self.membership.members(self.net.peers, self.net.views, self.net.lost, plan_bytes)

    def _waiting(self, members: int) -> bool:
        """--wait-for-peers: before the first plan, hold back until that many other nodes serve the model.
        Only the first: once a ring has formed, a lost node re-plans on the survivors at once."""
        if not self._gathered and members - 1 < self.cluster.wait_for_peers:
            self.set_state(NodeState.WAITING_FOR_PEERS, f"{members - 1}/{self.cluster.wait_for_peers} peers")
            return True
        return False

    def _replan(self, why: str = "the nodes changed") -> None:
        assert self.net is not None and self.files is not None and self.shard is not None
        nodes, cut = self._capacities()
        if self._waiting(len(nodes) + len(cut)):  # don't load layers for a ring about to change
            return
        n_layers = self.files.args.num_hidden_layers
        plan = plan_cluster(nodes, n_layers, self.layer_bytes, self.cluster.rings)
        if cut:
            plan = dataclasses.replace(plan, idle={**plan.idle, **cut})
        if not plan.rings:
            self.set_state(NodeState.NO_PLAN)
            self.error = next(iter(plan.idle.values()), "no nodes")
            self.rings.give_up(f"no ring can hold the model now: {self.error}; retry the request")
            return
        if plan.version == self.version:
            return
        log.info("plan %08x: %s", plan.version, plan.describe())
        self._gathered = True
        self._size_blas(plan)
        self.current = plan
        self.plan = [(a.start, a.end) for a in plan.ring_of(self.node_id)]
        # requests in flight wait for the new plan's ring and continue there (actors/failover.py)
        self.rings.suspend("the cluster's layer plan changed")
        self.shard.abandon(f"{why} (seen from {self.node_id}); the cluster is re-planning, retry the request")
        self._place_draft(plan)
        self.set_state(NodeState.LOADING)
        mine = plan.assignment(self.node_id)
        if mine is None:
            self.shard.role = None
            self.error = plan.idle.get(self.node_id)
            self.loaded = plan.version
            self.net.announce()
            self._check_ready()
            return
        asyncio.ensure_future(self._load_shard(plan, mine))

    def _size_blas(self, plan: Plan) -> None:
        """Share this machine's cores among the shards of the plan that run on it."""
        assert self.net is not None
        if os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"):
            return  # the user chose explicitly
        host = self.cluster.advertise
        local = sum(
            1
            for a in plan.assignments
            if (p := self.net.peers.get(a.node_id)) and p.endpoint.removeprefix("tcp://").rsplit(":", 1)[0] == host
        )
        threads = blas_threads_for(local)
        limit_threads(threads)
        self.blas_threads = threads
        log.info("%d shard(s) of the plan on this host: BLAS uses %d thread(s) here", local, threads)

    def _place_draft(self, plan: Plan) -> None:
        """Each ring node that offers the same draft, with the memory its shard leaves free."""
        if self.drafts is None or not self.drafts.remote or self.net is None or self.files is None:
            return
        free = {
            a.node_id: p.hello.memory - self.files.shard_bytes(a.start, a.end, p.hello.engine)
            for a in plan.assignments
            if (p := self.net.peers.get(a.node_id)) is not None
            and p.hello is not None
            and p.hello.draft == self.config.draft_model
        }
        self.drafts.place(free)

    async def _on_free(self, msg: Free) -> None:
        assert self.shard is not None
        await self.shard.on_free(msg)
        if self.drafts is not None:
            await self.drafts.free(msg.rid)

    async def _load_shard(self, plan: Plan, mine: Assignment) -> None:
        assert self.files is not None and self.net is not None and self.shard is not None
        loop = asyncio.get_running_loop()
        stale = lambda: plan.version != self.version  # noqa: E731 - a re-plan stops this load
        try:
            if self.files.path.is_dir():  # a folder downloaded from the Hub: fetch this shard's files
                self.set_state(NodeState.LOADING, f"downloading layers {mine.start}-{mine.end - 1}")
                layers = (mine.start, mine.end)
                fetch = functools.partial(ensure_layers, self.files.path, layers, None, self.download, stale)
                try:
                    await loop.run_in_executor(None, fetch)
                except DownloadCancelled:
                    return
                if stale():
                    return
            self.set_state(NodeState.LOADING, f"layers {mine.start}-{mine.end - 1}")
            if self.engine is None:  # built off the event loop: an engine may block while it probes its backend
                self.engine = await loop.run_in_executor(
                    None, get_engine, self.config.engine, self.config.quantize, self.config.device
                )
            runner = await loop.run_in_executor(self.compute, self.engine.load_shard, self.files, mine.start, mine.end)
        except ExoError as exc:
            self.fail(str(exc))
            return
        except Exception as exc:  # a bug must show as a failed node, not a node loading forever
            log.exception("loading layers [%d, %d) failed", mine.start, mine.end)
            self.fail(f"internal error: {type(exc).__name__}: {exc}")
            return
        if stale():  # re-planned while loading
            return
        self.shard.role = ShardRole(plan.version, runner, plan.next_node(self.node_id))  # drops the old shard
        self.loaded = plan.version
        self.error = None
        log.info("loaded layers [%d, %d) for plan %08x", mine.start, mine.end, plan.version)
        self.net.announce()
        self._check_ready()
        # give the dropped shard's memory back; last, so that no re-plan can interleave with the above
        await loop.run_in_executor(self.compute, release_freed_memory)

    # readiness -----------------------------------------------------------------------------------
    def _check_ready(self) -> None:
        plan = self.current
        if self.net is None or not plan.version or self.files is None or self.drafts is None:
            return
        peers, hearing = self.net.peers, self.net.hearing()
        for i, ring_plan in enumerate(plan.rings):
            if self.rings.ready(i) or any(
                (p := peers.get(a.node_id)) is None or p.hello is None or p.hello.loaded != plan.version
                for a in ring_plan
            ):
                continue
            if any(a.node_id not in hearing for a in ring_plan):
                continue  # this node cannot reach the whole ring (a cut link): it cannot drive it
            if self.drafts.pending:
                self.set_state(NodeState.LOADING_DRAFT)
                return
            # this ring's suspended router continues on it (its requests replay), or a new one starts;
            # so do the routers of rings this plan no longer has
            for index in [i, *[k for k in self.rings.orphans(len(plan.rings)) if k % len(plan.rings) == i]]:
                self.rings.add(index, self._remote_ring(plan.version, ring_plan), self._start_router)
                self._follow_draft(index)
            self.router = self.rings.router(0)
            self.set_state(NodeState.READY)
            log.info("ring %d ready: %d node(s)", i, len(ring_plan))
        if self.state != NodeState.READY and plan.idle.get(self.node_id) == CUT_OFF:
            self.set_state(NodeState.NO_PLAN)  # its requests get a clear 503 naming the cut

    def _remote_ring(self, version: int, ring_plan: Sequence[Assignment]) -> RemoteRing:
        assert self.net is not None
        nodes = [a.node_id for a in ring_plan]
        loop, timeout = asyncio.get_running_loop(), self.cluster.step_timeout
        return RemoteRing(self.net, loop, version, nodes, timeout, self.config.sample_on == "last-shard")

    def _start_router(self, pipeline: FailoverRing) -> RouterActor:
        assert self.files is not None
        ring = pipeline.ring
        k = self.config.micro_batches_for(len(ring.nodes) if ring is not None else 1)
        router = start_router(self.config, self.files, pipeline, self._speculation(), k)
        router.follow_ring = not self.config.micro_batches  # one per ring node: follow the ring's length
        return router

    def _speculation(self) -> Speculation | None:
        assert self.drafts is not None
        drafter = self.drafts.drafter()
        if drafter is None:  # nothing configured: prompt lookup if the ring's links are slow
            return self.link.speculation() if self.link is not None else None
        return Speculation(drafter, self.config.draft_tokens, self.config.adaptive_draft)

    def _follow_draft(self, index: int) -> None:
        """A router that continues on a new plan's ring drafts from the draft host this plan placed (its
        old host may be gone); new requests take the new drafter, running ones keep theirs."""
        router = self.rings.router(index)
        if router is None or self.drafts is None or not self.drafts.remote:
            return
        if self._draft_hosts.get(index, "") != self.drafts.host:
            if index in self._draft_hosts:
                router.speculation = self._speculation()
            self._draft_hosts[index] = self.drafts.host

    # the Node interface ----------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return self.rings.in_flight

    @property
    def messages_dropped(self) -> int:
        return self.net.dropped if self.net is not None else 0

    @property
    def beacons_rejected(self) -> int:
        return self.discovery.rejected if self.discovery is not None else 0

    def messages_received(self) -> dict[str, tuple[int, int]]:
        return {k: (n, b) for k, (n, b) in list(self.net.received.items())} if self.net is not None else {}

    def kv_requests(self) -> int:
        role = self.shard.role if self.shard is not None else None
        return len(getattr(role.runner, "caches", {})) if role is not None else 0

    def ready_router(self) -> tuple[ModelFiles, RouterActor]:
        router = self.rings.least_loaded() if self.state == NodeState.READY else None
        if router is not None and self.files is not None:  # spread requests over the ready rings by load
            return self.files, router
        why = f": {self.error}" if self.error else ""
        raise ModelLoadingError(f"the cluster is not ready ({self.status}{why}); retry in a few seconds")

    def stop(self) -> None:
        self.rings.retire("the node is shutting down")
        self.router = None
        if self.shard is not None:
            self.shard.close()  # before the compute thread goes: late passes are refused as a ring change
        self.compute.shutdown(wait=False, cancel_futures=True)

    async def stop_async(self) -> None:
        self.stop()
        if self.discovery is not None:
            self.discovery.stop()
        for part in (self.tailnet, self.link):
            if part is not None:
                part.stop()
        if self.net is not None:
            await self.net.close()

    def cluster_info(self) -> dict[str, Any]:
        return cluster_status(self, super().cluster_info())
