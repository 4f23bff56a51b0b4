"""ClusterNodes in one process: each with its real PeerNetwork (ZeroMQ on loopback), all on one event-loop
thread, the engine injected, so a test can look into every node's shard, ring and router."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from exo_actor.cluster import ClusterNode
from exo_actor.cluster.wide_area import WideAreaConfig
from exo_actor.config import NodeConfig
from exo_actor.engines import get_engine
from exo_actor.sampling import SamplingParams
from exo_actor.transport.peers import PeerNetwork
from tests.api.servers import free_port

T = TypeVar("T")


class InProcessCluster:
    def __init__(self, loop: asyncio.AbstractEventLoop, nodes: list[ClusterNode]) -> None:
        self.loop, self.nodes = loop, nodes

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the nodes' event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30) -> T:
        """Call a function on the event loop (the nodes' state is the loop's)."""

        async def call() -> T:
            return fn()

        return self.run(call(), timeout)

    def wait(self, done: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.call(done):
            if time.monotonic() > deadline:
                states = [(n.node_id, n.status, n.error) for n in self.nodes]
                raise AssertionError(f"timed out waiting for {what}: {states}")
            time.sleep(0.05)

    def wait_ready(self, nodes: Sequence[ClusterNode] | None = None, layers: int | None = None) -> None:
        """Until every node (of `nodes`) is ready on one plan covering `layers` nodes' worth of the ring."""
        group = list(nodes) if nodes is not None else self.nodes

        def ready() -> bool:
            versions = {n.version for n in group}
            return all(n.state == "ready" for n in group) and len(versions) == 1

        self.wait(ready, "the ring to be ready")

    def wait_whole(self) -> None:
        """Until every node is ready on one plan in which each holds layers. On a loaded machine a stalled
        event loop can make the nodes think one another down for a moment and re-plan: a test that reaches
        into a node's shard starts only once the whole ring has formed again."""
        n = len(self.nodes)

        def whole() -> bool:
            versions = {node.version for node in self.nodes}
            return len(versions) == 1 and all(
                node.state == "ready" and len(node.current.assignments) == n and node.shard and node.shard.role
                for node in self.nodes
            )

        self.wait(whole, "a ready plan of every node")

    def generate(self, node: ClusterNode, prompt: Sequence[int], max_tokens: int = 8, **params: Any) -> list[int]:
        """Greedy (by default) token ids generated through `node`'s router."""
        return self.start(node, prompt, max_tokens, **params).result(120)

    def start(
        self, node: ClusterNode, prompt: Sequence[int], max_tokens: int = 8, **params: Any
    ) -> concurrent.futures.Future[list[int]]:
        """Start generating through `node`'s router; the future gives the token ids."""

        async def collect() -> list[int]:
            _, router = node.ready_router()
            stream = router.submit(list(prompt), SamplingParams(max_tokens=max_tokens, **params))
            tokens: list[int] = []
            async for delta in stream:
                tokens += delta.token_ids
            return tokens

        return asyncio.run_coroutine_threadsafe(collect(), self.loop)


@contextlib.contextmanager
def in_process_cluster(
    model: Path | str,
    n: int = 3,
    *,
    memories_gib: Sequence[float] | None = None,
    heartbeat: float = 0.5,
    timeout: float = 3.0,
    step_timeout: float = 30.0,
    network: Callable[..., PeerNetwork] = PeerNetwork,
    node_config: Callable[[int], NodeConfig] | None = None,
    wait_for_peers: int | None = None,
    wait: bool = True,
    auto_speculation_ms: float = 0.0,
) -> Iterator[InProcessCluster]:
    """`n` ClusterNodes node0..node{n-1} peered on loopback (each lists every port), sharing one numpy engine.
    The automatic speculation of slow links (cluster/link_speculation.py) is off unless a threshold is given:
    one event loop runs every node, and on a loaded machine its loopback round trips can pass the default
    10 ms, turning prompt-lookup speculation on in the middle of a test about something else."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="cluster-loop", daemon=True)
    thread.start()
    ports = [free_port() for _ in range(n)]
    engine = get_engine("numpy")
    nodes = []
    for i in range(n):
        cfg = WideAreaConfig(
            auto_speculation_ms=auto_speculation_ms,
            host="127.0.0.1",
            port=ports[i],
            advertise="127.0.0.1",
            peers=[f"127.0.0.1:{p}" for p in ports],
            memory=int((memories_gib[i] if memories_gib else 1.0) * 2**30),
            wait_for_peers=n - 1 if wait_for_peers is None else wait_for_peers,
            heartbeat=heartbeat,
            timeout=timeout,
            step_timeout=step_timeout,
        )
        ncfg = node_config(i) if node_config else NodeConfig(model=str(model), engine="numpy", prefix_cache_mb=0)
        nodes.append(ClusterNode(ncfg, cfg, node_id=f"node{i}", engine=engine, network=network))
    cluster = InProcessCluster(loop, nodes)
    try:
        for node in nodes:
            cluster.run(node.start_async())
        if wait:
            cluster.wait_whole()
        yield cluster
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                cluster.run(node.stop_async(), 30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


class CuttableNetwork(PeerNetwork):
    """A PeerNetwork whose links to chosen nodes can be cut and healed (both directions are cut by
    cutting each side): messages to a cut node are dropped before they reach the socket, messages from
    it are dropped on arrival, as a dead cable would."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cut: set[str] = set()

    def send(self, node_id: str, msg: Any) -> None:
        if node_id in self.cut:
            return
        super().send(node_id, msg)

    def _send_to(self, endpoint: str, msg: Any) -> None:
        if any(p.endpoint == endpoint and p.node_id in self.cut for p in self.peers.values()):
            return
        super()._send_to(endpoint, msg)

    async def _dispatch(self, msg: Any) -> None:
        if getattr(msg, "src", None) in self.cut:
            return
        await super()._dispatch(msg)


def cut_link(cluster: InProcessCluster, a: int, b: int, cut: bool = True) -> None:
    """Cut (or heal) the link between nodes a and b (their networks must be CuttableNetworks)."""

    def apply() -> None:
        for x, y in ((a, b), (b, a)):
            net = cluster.nodes[x].net
            assert isinstance(net, CuttableNetwork)
            name = cluster.nodes[y].node_id
            (net.cut.add if cut else net.cut.discard)(name)

    cluster.call(apply)
