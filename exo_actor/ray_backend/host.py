"""ShardHost: one shard of the ring in a Ray worker process, its layers behind its own ZeroMQ ROUTER.

Ray starts a host in the bundle the driver reserved for it and restarts it (with the same HostSpec)
when its process dies; the host then reloads its layers and binds a new port, and waits for the
driver to join it to a new plan version.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray

from ..actors.shard import ShardActor, ShardRole
from ..engines import ShardRunner, get_engine, limit_threads
from ..errors import ExoError
from ..runtime.memory import release_freed_memory, rss_bytes
from ..storage.model_store import ensure_layers, ensure_model
from ..transport.messages import Hello
from ..transport.peers import PeerNetwork
from ..transport.security import ClusterKey
from ..weights import open_model

log = logging.getLogger(__name__)


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

    runner: ShardRunner  # these three exist once the shard has loaded (error is None)
    net: PeerNetwork
    shard: ShardActor

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

    def _load(self) -> ShardRunner:
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
        """Where this host runs and how much it holds, for the driver's /v1/cluster."""
        return {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "ray_node": ray.get_runtime_context().get_node_id(),
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
    host.net.connect(spec.driver, keep=True)


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
