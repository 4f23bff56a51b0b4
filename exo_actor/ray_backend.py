"""The Ray backend: the ring's ShardActors as Ray actors; Ray places and restarts them.

The driver (`exo-actor start --backend ray`) plans the ring with the same partitioner as a LAN
cluster, asks Ray for a placement group with one bundle per shard (CPUs + the shard's memory), and
starts one ShardHost actor per bundle. Each host loads its layer range with the usual engines and
runs the usual ShardActor behind its own ZeroMQ ROUTER: activations travel host to host over
ZeroMQ exactly as on a LAN (benchmarks/bench_ray.py measured a Ray actor call at several times a
ZeroMQ hop). The driver runs the RouterActor, its RemoteRing and the gateway.

Supervision: a host that dies is restarted by Ray (max_restarts=-1); its __init__ reloads the shard
and binds a new port. The driver notices the silent host through heartbeats (requests in flight end
at once with a clear error), waits until Ray answers for every host again, then gives every host a
new plan version and everyone's endpoints; when all hosts announce that version, a new router serves.

This is the only module that imports ray (the `exo-actor[ray]` extra).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .actors.ring import RemoteRing
from .actors.router import RouterActor
from .actors.shard import ShardActor, ShardRole
from .config import NodeConfig, RayConfig
from .engines import get_engine
from .errors import ExoError
from .node import Node, start_router
from .partition import Assignment, memory_weighted, placement_problem, plan_placed, shard_capacities
from .runtime.memory import release_freed_memory
from .storage.model_store import ensure_layers, ensure_model
from .transport.messages import Failure, Hello, Logits, LogitsBatch
from .transport.peers import Peer, PeerNetwork
from .transport.security import ClusterKey
from .weights import open_model

log = logging.getLogger(__name__)

STRATEGIES = ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")
NAMESPACE = "exo-actor"
HEADROOM = 256 << 20  # a bundle's memory beyond the shard's weights: KV caches, activations, the runtime


class RayBackendError(ExoError):
    """Ray cannot run the ring (cannot connect, cannot place the shards, a shard cannot load)."""


@dataclass(frozen=True)
class HostSpec:
    """What a ShardHost needs; Ray passes the same spec again when it restarts the actor."""

    node_id: str
    model: str
    engine: str
    quantize: str | None
    device: str
    start: int
    end: int
    driver: str  # the driver's ZeroMQ endpoint
    memory: int  # bytes of the shard's bundle (advertised in Hello)
    blas_threads: int
    heartbeat: float
    timeout: float
    cluster_key: str | None


class ShardHost:
    """One shard in a Ray worker process: its layers, a ShardActor and the ZeroMQ network around it.

    A load error is kept and reported by endpoint() instead of raised: raising in __init__ would make
    Ray restart the actor forever for a problem (a missing model) that a restart cannot fix.
    """

    def __init__(self, spec: HostSpec) -> None:
        # this process's log lines reach the driver's console through Ray (log_to_driver)
        if not logging.getLogger().handlers:
            logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        logging.getLogger("exo_actor").setLevel(logging.INFO)
        self.spec = spec
        self.version = 0
        self._joined = threading.Event()  # set (and replaced) when a newer version is joined
        self.error: str | None = None
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="exo-net", daemon=True).start()
        self.compute = ThreadPoolExecutor(1, "exo-compute")
        try:  # on the compute thread, which runs every later call into the engine
            self.runner = self.compute.submit(self._load).result()
        except Exception as exc:  # noqa: BLE001 - reported to the driver once, not retried by Ray
            why = str(exc) if isinstance(exc, ExoError) else f"internal error: {type(exc).__name__}: {exc}"
            self.error = f"shard {spec.node_id} on {socket.gethostname()}: {why}"
            log.error("%s", self.error, exc_info=not isinstance(exc, ExoError))
            return
        asyncio.run_coroutine_threadsafe(_start_net(self), self.loop).result()

    def _load(self) -> Any:
        from .engines import limit_threads

        spec = self.spec
        limit_threads(spec.blas_threads)
        files = open_model(ensure_model(spec.model, weights=False))
        if files.path.is_dir():  # a Hub folder: fetch only this shard's weights
            ensure_layers(files.path, (spec.start, spec.end))
        runner = get_engine(spec.engine, spec.quantize, spec.device).load_shard(files, spec.start, spec.end)
        release_freed_memory()
        log.info("shard %s loaded layers [%d, %d)", spec.node_id, spec.start, spec.end)
        return runner

    def _hello(self) -> Hello:
        s = self.spec
        return Hello(s.node_id, self.net.endpoint, s.memory, s.engine, s.model, self.version, 1)

    # remote methods ---------------------------------------------------------------------------
    def endpoint(self) -> str:
        """Where this host's ROUTER listens (raises the load error, if the shard could not load)."""
        if self.error is not None:
            raise RayBackendError(self.error)
        return self.net.endpoint

    def join(self, version: int, next_node: str | None, endpoints: list[str]) -> None:
        """Serve plan `version`: connect to every host and the driver, drop every request's cache
        (their routers are gone), and announce the version."""
        asyncio.run_coroutine_threadsafe(_join(self, version, next_node, endpoints), self.loop).result()
        previous, self._joined = self._joined, threading.Event()
        previous.set()  # the watch of the previous version returns

    def _drop_caches(self) -> None:
        for rid in list(getattr(self.runner, "caches", {})):
            self.runner.free(rid)

    def watch(self) -> None:
        """Returns when this host joins a newer plan version, or fails when the actor dies: the
        driver learns of a death the moment this call fails (sooner than heartbeats can tell)."""
        self._joined.wait()

    def info(self) -> dict[str, Any]:
        from .runtime.memory import rss_bytes

        ctx = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "ray_node": ctx.get_node_id(),
            "rss_bytes": rss_bytes(),
            "kv_requests": len(getattr(self.runner, "caches", {})) if self.error is None else 0,
        }


# The host's coroutines run on its own event loop thread. They are functions, not ShardHost methods:
# Ray makes an actor with any `async def` method an asyncio actor, whose sync methods (watch() blocks)
# would then stall every other call.
async def _start_net(host: ShardHost) -> None:
    spec = host.spec
    key = ClusterKey.from_secret(spec.cluster_key) if spec.cluster_key else None
    ip = node_address()
    host.net = PeerNetwork(
        spec.node_id, f"tcp://{ip}:0", f"tcp://{ip}:0", host._hello, spec.heartbeat, spec.timeout, key
    )
    host.shard = ShardActor(host.net, host.compute)
    host.net.start()
    host.net.connect(host.net.endpoint)  # ourselves (the last shard of a ring of one answers itself)
    host.net.connect(spec.driver)


async def _join(host: ShardHost, version: int, next_node: str | None, endpoints: list[str]) -> None:
    for endpoint in endpoints:
        host.net.connect(endpoint)
    await host.loop.run_in_executor(host.compute, host._drop_caches)
    host.shard.role = ShardRole(version, host.runner, next_node)
    host.version = version
    host.net.announce()


ShardHostActor = ray.remote(ShardHost)


def node_address() -> str:
    """The address Ray uses for this process's machine (on a local instance: loopback)."""
    me = ray.get_runtime_context().get_node_id()
    return next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == me), ray.util.get_node_ip_address())


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


def plan_shards(node_memory: list[int], shards: int, n_layers: int, layer_bytes: int) -> list[Assignment]:
    """The ring's layer ranges for `shards` shards on machines with `node_memory` bytes."""
    return memory_weighted(shard_capacities(node_memory, min(shards, n_layers)), n_layers, layer_bytes)


class RayNode(Node):
    """The driver: the model's tokenizer, the router and the gateway, over shards hosted by Ray."""

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
        self.ring: RemoteRing | None = None
        self.net: PeerNetwork | None = None
        self.pg: Any = None
        self._owns_ray = False
        self.speculation = None
        self._task: asyncio.Task[None] | None = None
        self.joined = False  # every host has been given the current version (and not retired since)
        self._joined_at = 0.0
        self._watches: list[asyncio.Future[Any]] = []

    def start(self) -> None:
        raise RuntimeError("RayNode starts with `await start_async()`")

    async def start_async(self) -> None:
        self.state = "connecting to Ray"
        self.loop = asyncio.get_running_loop()
        rc = self.ray_config
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
            self.files = await self.loop.run_in_executor(None, lambda: open_model(fetch()))
            self.speculation = await self.loop.run_in_executor(None, self.config.speculation, self.files)
            await self._place()
        except ExoError as exc:
            self.state, self.error = "failed", str(exc)
            log.error("%s", exc)
            return
        net.on(Logits, lambda m: self.ring and self.ring.on_logits(m))
        net.on(LogitsBatch, lambda m: self.ring and self.ring.on_logits_batch(m))
        net.on(Failure, lambda m: self.ring and self.ring.on_failure(m))
        net.on_peer_down = self._peer_down
        net.start()
        net.connect(net.endpoint)
        self._start_hosts()
        self.state = "loading"
        self._task = asyncio.ensure_future(self._supervise())

    def _hello(self) -> Hello:
        assert self.net is not None
        return Hello(self.node_id, self.net.endpoint, 0, self.config.engine, self.config.model, self.version, 1)

    async def _place(self) -> None:
        """Plan the ring and reserve one placement-group bundle per shard."""
        assert self.files is not None
        rc, args, files = self.ray_config, self.files.args, self.files
        engine, quantize = self.config.engine, self.config.quantize
        layer_bytes = files.layer_bytes(engine, quantize)  # as the shards' engine holds them
        alive = [n for n in await self.loop.run_in_executor(None, ray.nodes) if n.get("Alive")]
        memory = [int(n.get("Resources", {}).get("memory", 0)) for n in alive]
        shards = rc.shards or max(1, len(alive))
        # a first plan sizes the bundles: each can hold the largest shard, because which machine a
        # bundle lands on (and so how many layers it gets) is Ray's choice
        first = plan_shards(memory, shards, args.num_hidden_layers, layer_bytes)
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
        plan = plan_placed(where, node_memory, args.num_hidden_layers, layer_bytes)
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

    def _start_hosts(self) -> None:
        assert self.net is not None and self.files is not None
        rc = self.ray_config
        for a in self.assignments:
            spec = HostSpec(
                a.node_id,
                self.config.model,
                self.config.engine,
                self.config.quantize,
                self.config.device,
                a.start,
                a.end,
                self.net.endpoint,
                self.files.shard_bytes(a.start, a.end, self.config.engine, self.config.quantize) + HEADROOM,
                max(1, int(rc.cpus_per_shard)),
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
        """End the ring's requests with `reason`; the hosts must be joined again before serving."""
        self.joined = False
        for w in self._watches:
            w.cancel()
        self._watches = []
        ring, router, self.ring, self.router = self.ring, self.router, None, None
        if ring is not None:
            ring.fail_all(reason)
            log.warning("ring retired: %s", reason)
        if router is not None:
            router.stop(timeout=0)
        if self.state == "ready":
            self.state = "recovering"

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
            if self.state == "failed":
                return
            await asyncio.sleep(self.ray_config.heartbeat)

    async def _tick(self) -> None:
        if self.ring is not None:
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
            self.state, self.error = "failed", str(exc.cause if hasattr(exc, "cause") else exc)
            log.error("%s", self.error)
            return
        except (ray.exceptions.RayError, TimeoutError) as exc:
            if self.state != "loading":
                self.state = "waiting for Ray to restart a shard"
            log.info("waiting for the shard actors: %s", type(exc).__name__)
            return
        if self.endpoints and endpoints != self.endpoints:
            self.restarts += sum(a != b for a, b in zip(endpoints, self.endpoints))
        await self._join(endpoints)

    async def _join(self, endpoints: list[str]) -> None:
        assert self.net is not None and self.files is not None
        self.epoch += 1
        text = f"{self.files.args.num_hidden_layers}|{self.epoch}|" + ";".join(
            f"{a.node_id}:{a.start}-{a.end}" for a in self.assignments
        )
        version = zlib.crc32(text.encode()) or 1
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
        ring = RemoteRing(self.net, self.loop, self.version, list(self.hosts), self.ray_config.step_timeout)
        self.ring, self.router = ring, start_router(self.config, self.files, ring, self.speculation)
        self.state, self.error = "ready", None
        log.info("ring ready: %d Ray shard(s)", len(self.hosts))

    # the Node interface --------------------------------------------------------------------------
    def ready_router(self) -> tuple[Any, RouterActor]:
        if self.state == "ready" and self.router is not None and self.files is not None:
            return self.files, self.router
        from .node import ModelLoadingError

        why = f": {self.error}" if self.error else ""
        raise ModelLoadingError(f"the Ray ring is not ready ({self.state}{why}); retry in a few seconds")

    def kv_requests(self) -> int:
        return max((i.get("kv_requests", 0) for i in self.host_info.values()), default=0)

    def stop(self) -> None:
        self._retire("the node is shutting down")

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
        net = self.net
        nodes = []
        for a in self.assignments:
            p = net.peers.get(a.node_id) if net else None
            extra = self.host_info.get(a.node_id, {})
            nodes.append(
                {
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
            )
        info["nodes"] = nodes or info["nodes"]
        info["plan"] = [{"node": a.node_id, "start": a.start, "end": a.end, "ring": 0} for a in self.assignments]
        router = self.router
        info["rings"] = [
            {
                "index": 0,
                "nodes": list(self.hosts),
                "ready": self.ring is not None,
                "in_flight": router.in_flight if router else 0,
                "tokens_generated": router.tokens_generated if router else 0,
                "speculative": router.speculation_info() if router else None,
                "prefix_cache": router.prefix_cache_info() if router else None,
                "batching": router.batching_info() if router else None,
            }
        ]
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
