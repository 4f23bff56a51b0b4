"""RayNode, the driver: plans the ring, reserves a placement group, starts the ShardHosts and keeps
them joined to one plan version; the router, its RemoteRing and the gateway run here."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..actors.ring import RemoteRing
from ..actors.router import RouterActor
from ..cluster.planner import plan_shards, plan_version
from ..cluster.ringset import RingSet
from ..config import NodeConfig, RayConfig
from ..errors import ExoError
from ..node import ModelLoadingError, Node, NodeState, start_router
from ..partition import Assignment, placement_problem, plan_placed
from ..speculative import Speculation
from ..storage.downloads import Progress
from ..storage.model_store import ensure_model
from ..transport.messages import Hello
from ..transport.peers import Peer, PeerNetwork
from ..transport.security import ClusterKey
from ..weights import ModelFiles, open_model
from .host import HostSpec, RayBackendError, ShardHostActor, node_address

log = logging.getLogger(__name__)

NAMESPACE = "exo-actor"
HEADROOM = 256 << 20  # a bundle's memory beyond the shard's weights: KV caches, activations, the runtime
RING = 0  # the driver serves one ring: index 0 of its RingSet


def connect_ray(config: RayConfig) -> bool:
    """Connect to (or start) Ray; True when this call started it (and so should shut it down)."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": True}
    if config.address:
        options["address"] = config.address
    else:
        options.update({"include_dashboard": False, **config.init_options})
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = config.address or "a new local instance"
        hint = " (is `ray start --head` running there?)" if config.address else ""
        raise RayBackendError(f"cannot connect to Ray at {where}: {exc}{hint}") from None
    return True


class RayNode(Node):
    """The driver: the model's tokenizer, the router and the gateway, over shards hosted by Ray.

    Its state is written on the event loop only (start_async, the supervisor, the network's callbacks).
    """

    loop: asyncio.AbstractEventLoop  # the event loop start_async runs on

    def __init__(self, config: NodeConfig, ray_config: RayConfig, node_id: str | None = None) -> None:
        super().__init__(config)
        if node_id:
            self.node_id = node_id
        self.ray_config = ray_config
        self.assignments: list[Assignment] = []
        self.bundle: dict[str, int] = {}  # host node id -> its placement group bundle
        self.hosts: dict[str, Any] = {}  # host node id -> actor handle
        self.host_info: dict[str, dict[str, Any]] = {}
        self.endpoints: list[str] = []  # hosts' endpoints at the last join
        self.version = 0
        self.epoch = 0
        self.restarts = 0  # hosts Ray restarted that the driver rejoined
        self.rings = RingSet()  # the ring, at index RING, while it serves
        self.net: PeerNetwork | None = None
        self.pg: Any = None
        self._owns_ray = False
        self.speculation: Speculation | None = None
        self._task: asyncio.Task[None] | None = None
        self.joined = False  # every host has been given the current version (and not retired since)
        self._joined_at = 0.0
        self._watches: list[asyncio.Future[Any]] = []

    def start(self) -> None:
        raise RuntimeError("RayNode starts with `await start_async()`")

    def _on_download(self, p: Progress) -> None:
        """Called on the download's thread: the state follows it on the event loop (which owns it)."""
        self._log_download(p)
        self.loop.call_soon_threadsafe(self._follow_download, p)

    async def start_async(self) -> None:
        rc = self.ray_config
        self.set_state(NodeState.CONNECTING, f"to Ray at {rc.address}" if rc.address else "to Ray")
        self.loop = asyncio.get_running_loop()
        key = ClusterKey.from_secret(rc.cluster_key) if rc.cluster_key else None
        advertise = rc.advertise or (rc.host if rc.host not in ("0.0.0.0", "::", "*") else None)
        # the actor socket first: a busy port ends the start before anything runs on Ray
        self.net = net = PeerNetwork(
            self.node_id,
            f"tcp://{rc.host}:{rc.port}",
            f"tcp://{advertise or '0.0.0.0'}:{rc.port}",
            self._hello,
            rc.heartbeat,
            rc.timeout,
            key,
        )
        try:
            self._owns_ray = await self.loop.run_in_executor(None, connect_ray, rc)
            if advertise is None:  # the address Ray knows this machine by
                host = await self.loop.run_in_executor(None, node_address)
                net.endpoint = f"tcp://{host}:{net.endpoint.rsplit(':', 1)[1]}"
            fetch = functools.partial(ensure_model, self.config.model, weights=False, progress=self.download)
            files = self.files = await self.loop.run_in_executor(None, lambda: open_model(fetch()))
            self.speculation = await self.loop.run_in_executor(None, self.config.speculation, files)
            await self._place(files)
        except ExoError as exc:
            self.fail(str(exc))
            log.error("%s", exc)
            return
        self.rings.listen(net)
        net.on_peer_down = self._peer_down
        net.start()
        net.connect(net.endpoint)
        self._start_hosts(net, files)
        self.set_state(NodeState.LOADING, f"{len(self.hosts)} shard(s) on Ray")
        self._task = asyncio.ensure_future(self._supervise())

    def _hello(self) -> Hello:
        assert self.net is not None
        return Hello(self.node_id, self.net.endpoint, 0, self.config.engine, self.config.model, self.version, 1)

    async def _place(self, files: ModelFiles) -> None:
        """Plan the ring and reserve one placement-group bundle per shard."""
        rc, n_layers = self.ray_config, files.args.num_hidden_layers
        engine, quantize = self.config.engine, self.config.quantize
        layer_bytes = files.layer_bytes(engine, quantize)  # as the shards' engine holds them
        alive = [n for n in await self.loop.run_in_executor(None, ray.nodes) if n.get("Alive")]
        memory = [int(n.get("Resources", {}).get("memory", 0)) for n in alive]
        shards = rc.shards or max(1, len(alive))
        # a first plan sizes the bundles: each can hold the largest shard, because which machine a
        # bundle lands on (and so how many layers it gets) is Ray's choice
        first = plan_shards(memory, shards, n_layers, layer_bytes)
        largest = max(files.shard_bytes(a.start, a.end, engine, quantize) for a in first)
        bundles = [{"CPU": rc.cpus_per_shard, "memory": largest + HEADROOM} for _ in first]
        problem = placement_problem(bundles, [n.get("Resources", {}) for n in alive], rc.placement)
        if problem:
            raise RayBackendError(
                f"Ray cannot place {len(bundles)} shard(s): {problem} "
                "(use --ray-shards, --ray-cpus-per-shard or --ray-placement, or add nodes)"
            )
        self.pg = placement_group(bundles, strategy=rc.placement, name=f"exo-actor-{self.node_id}")
        try:
            await asyncio.wait_for(self.pg.ready(), rc.placement_timeout)
        except TimeoutError:
            available = await self.loop.run_in_executor(None, ray.available_resources)
            remove_placement_group(self.pg)
            self.pg = None
            raise RayBackendError(
                f"Ray could not place {len(bundles)} shard(s) with strategy {rc.placement} within "
                f"{rc.placement_timeout:g} s: they need {rc.cpus_per_shard:g} CPU and up to "
                f"{max(b['memory'] for b in bundles) / 2**30:.2f} GiB each; the cluster has "
                f"{available.get('CPU', 0):g} CPU and {available.get('memory', 0) / 2**30:.1f} GiB free "
                "(use --ray-shards, --ray-cpus-per-shard or --ray-placement PACK, or add nodes)"
            ) from None
        # the plan proper: by the memory of the machines the bundles landed on
        table = await self.loop.run_in_executor(None, ray.util.placement_group_table, self.pg)
        where = [table["bundles_to_node_id"][i] for i in range(len(bundles))]
        node_memory = {n["NodeID"]: int(n.get("Resources", {}).get("memory", 0)) for n in alive}
        plan = plan_placed(where, node_memory, n_layers, layer_bytes)
        prefix = f"{self.node_id}-"
        self.assignments = [Assignment(prefix + a.node_id, a.start, a.end) for a in plan]
        self.bundle = {prefix + a.node_id: int(a.node_id[1:]) for a in plan}  # host -> its bundle
        self.plan = [(a.start, a.end) for a in self.assignments]
        log.info(
            "Ray placed %d shard(s) (%s): %s",
            len(bundles),
            rc.placement,
            ", ".join(
                f"{a.node_id}[{a.start},{a.end}) on {where[self.bundle[a.node_id]][:8]}" for a in self.assignments
            ),
        )

    def _start_hosts(self, net: PeerNetwork, files: ModelFiles) -> None:
        rc, config = self.ray_config, self.config
        for a in self.assignments:
            spec = HostSpec(
                a.node_id,
                config.model,
                config.engine,
                config.quantize,
                config.device,
                a.start,
                a.end,
                net.endpoint,
                files.shard_bytes(a.start, a.end, config.engine, config.quantize) + HEADROOM,
                max(1, int(rc.cpus_per_shard)),  # BLAS threads: the CPUs Ray reserved for the shard
                rc.heartbeat,
                rc.timeout,
                rc.cluster_key,
            )
            self.hosts[a.node_id] = ShardHostActor.options(
                name=f"{a.node_id}",
                num_cpus=rc.cpus_per_shard,
                memory=spec.memory,
                max_restarts=-1,
                max_task_retries=0,
                max_concurrency=4,  # watch() holds one thread per plan version
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.pg, placement_group_bundle_index=self.bundle[a.node_id]
                ),
            ).remote(spec)

    # supervision ------------------------------------------------------------------------------
    def _peer_down(self, peer: Peer) -> None:
        if peer.node_id in self.hosts:
            self._retire(f"shard {peer.node_id} stopped answering (Ray restarts it); retry the request shortly")

    async def _watch(self, host: str, handle: Any, version: int) -> None:
        try:
            await handle.watch.remote()
        except ray.exceptions.RayError as exc:
            if version == self.version and self.joined:
                log.warning("shard %s died: %s", host, type(exc).__name__)
                self._retire(
                    f"shard {host} stopped answering: its Ray actor died (Ray restarts it); retry the request shortly"
                )

    def _retire(self, reason: str) -> None:
        """Suspend the ring: requests in flight wait and continue on the rejoined ring (the hosts must be
        joined again before serving)."""
        self.joined = False
        for w in self._watches:
            w.cancel()
        self._watches = []
        if self.rings.ready(RING):
            log.warning("ring suspended: %s", reason)
        self.rings.suspend(reason)
        if self.state == NodeState.READY:
            self.set_state(NodeState.RECOVERING)

    def _ring_ok(self) -> bool:
        assert self.net is not None
        return all(
            self.net.alive(h)
            and (p := self.net.peers.get(h)) is not None
            and p.hello is not None
            and p.hello.loaded == self.version
            for h in self.hosts
        )

    async def _supervise(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the supervisor must outlive one bad tick
                log.exception("supervising the Ray shards failed; retrying")
            if self.state == NodeState.FAILED:
                return
            await asyncio.sleep(self.ray_config.heartbeat)

    async def _tick(self) -> None:
        if self.rings.ready(RING):
            if not self._ring_ok():
                self._retire("a shard of the ring was restarted; retry the request")
            return
        if self.joined:
            if self._ring_ok():
                self._serve()
            elif self.loop.time() - self._joined_at > 2 * self.ray_config.timeout:
                self.joined = False  # a host never announced the version: join again
            return
        try:  # every host alive in Ray's view (a host being restarted raises)
            endpoints = await asyncio.wait_for(
                asyncio.gather(*(h.endpoint.remote() for h in self.hosts.values())), self.ray_config.placement_timeout
            )
        except ray.exceptions.RayTaskError as exc:  # a host's own error (its shard cannot load)
            self.fail(str(exc.cause if hasattr(exc, "cause") else exc))
            log.error("%s", self.error)
            return
        except (ray.exceptions.RayError, TimeoutError) as exc:
            if self.state != NodeState.LOADING:
                self.set_state(NodeState.RECOVERING, "waiting for Ray to restart a shard")
            log.info("waiting for the shard actors: %s", type(exc).__name__)
            return
        if self.endpoints and endpoints != self.endpoints:
            self.restarts += sum(a != b for a, b in zip(endpoints, self.endpoints))
        await self._join(endpoints)

    async def _join(self, endpoints: list[str]) -> None:
        assert self.net is not None and self.files is not None
        self.epoch += 1
        version = plan_version(self.assignments, self.files.args.num_hidden_layers, self.epoch)
        for endpoint in endpoints:
            self.net.connect(endpoint)
        ids = list(self.hosts)
        everyone = [*endpoints, self.net.endpoint]
        await asyncio.gather(
            *(
                h.join.remote(version, ids[i + 1] if i + 1 < len(ids) else None, everyone)
                for i, h in enumerate(self.hosts.values())
            )
        )
        self.version, self.endpoints = version, endpoints
        self.joined, self._joined_at = True, self.loop.time()
        self._watches = [asyncio.ensure_future(self._watch(host, h, version)) for host, h in self.hosts.items()]
        self.net.announce()
        infos = await asyncio.gather(*(h.info.remote() for h in self.hosts.values()))
        self.host_info = dict(zip(ids, infos))
        log.info("plan %08x: %d shard(s) joined", version, len(ids))

    def _serve(self) -> None:
        assert self.net is not None and self.files is not None
        files = self.files
        timeout, shard_sampling = self.ray_config.step_timeout, self.config.sample_on == "last-shard"
        ring = RemoteRing(self.net, self.loop, self.version, list(self.hosts), timeout, shard_sampling)
        self.rings.add(RING, ring, lambda pipeline: start_router(self.config, files, pipeline, self.speculation))
        self.router = self.rings.router(RING)
        self.set_state(NodeState.READY)
        self.error = None
        log.info("ring ready: %d Ray shard(s)", len(self.hosts))

    # the Node interface --------------------------------------------------------------------------
    def ready_router(self) -> tuple[ModelFiles, RouterActor]:
        router = self.rings.router(RING) if self.state == NodeState.READY else None
        if router is not None and self.files is not None:
            return self.files, router
        why = f": {self.error}" if self.error else ""
        raise ModelLoadingError(f"the Ray ring is not ready ({self.status}{why}); retry in a few seconds")

    @property
    def messages_dropped(self) -> int:
        return self.net.dropped if self.net is not None else 0

    def kv_requests(self) -> int:
        return max((i.get("kv_requests", 0) for i in self.host_info.values()), default=0)

    def stop(self) -> None:
        self._retire("the node is shutting down")
        self.rings.retire("the node is shutting down")
        self.router = None

    async def stop_async(self) -> None:
        self.stop()  # (cancels the watches before the actors are killed)
        if self._task is not None:
            self._task.cancel()
        for h in self.hosts.values():
            ray.kill(h, no_restart=True)
        if self.pg is not None:
            remove_placement_group(self.pg)
        if self.net is not None:
            await self.net.close()
        if self._owns_ray:
            await self.loop.run_in_executor(None, ray.shutdown)

    def cluster_info(self) -> dict[str, Any]:
        info = super().cluster_info()
        info["nodes"] = [self._host_row(a) for a in self.assignments] or info["nodes"]
        info["plan"] = [{"node": a.node_id, "start": a.start, "end": a.end, "ring": RING} for a in self.assignments]
        info["rings"] = self.rings.status([list(self.hosts)])
        info["plan_version"] = self.version
        info["this_node"] = self.node_id
        info["idle_nodes"] = []
        info["backend"] = "ray"
        info["ray"] = {
            "address": self.ray_config.address or "local",
            "placement": self.ray_config.placement,
            "placement_group": self.pg.id.hex() if self.pg is not None else None,
            "cpus_per_shard": self.ray_config.cpus_per_shard,
            "shards": len(self.hosts),
            "restarts": self.restarts,
        }
        return info

    def _host_row(self, a: Assignment) -> dict[str, Any]:
        """A host's row in /v1/cluster's `nodes`: what its Hello says, and where Ray runs it."""
        net = self.net
        p = net.peers.get(a.node_id) if net else None
        extra = self.host_info.get(a.node_id, {})
        return {
            "id": a.node_id,
            "address": p.endpoint.removeprefix("tcp://") if p else "",
            "engine": self.config.engine,
            "memory_bytes": p.hello.memory if p and p.hello else 0,
            "model": self.config.model,
            "loaded_plan": p.hello.loaded if p and p.hello else 0,
            "alive": bool(net and net.alive(a.node_id)),
            "hostname": extra.get("hostname", ""),
            "ray_node": extra.get("ray_node", ""),
            "pid": extra.get("pid"),
            "download": None,
        }
