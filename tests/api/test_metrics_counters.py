"""The node's transport counters on /metrics: malformed messages a real PeerNetwork dropped and unsigned
beacons a real Discovery rejected (loopback sockets), read by GatewayMetrics at scrape time."""

from __future__ import annotations

import asyncio
import socket

import zmq
import zmq.asyncio
from prometheus_client.parser import text_string_to_metric_families

from exo_actor.api.metrics import GatewayMetrics
from exo_actor.transport.discovery import Discovery
from exo_actor.transport.messages import Hello
from exo_actor.transport.peers import PeerNetwork
from exo_actor.transport.security import ClusterKey
from tests.api.servers import free_port


def _counter(metrics: GatewayMetrics, name: str) -> float:
    text = metrics.render().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} is not in the metrics:\n{text}")


async def _until(check, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_a_standalone_node_reports_zero():
    metrics = GatewayMetrics(lambda: 0)
    assert _counter(metrics, "exo_messages_dropped_total") == 0
    assert _counter(metrics, "exo_beacons_rejected_total") == 0


def test_malformed_messages_count_as_dropped():
    async def scenario() -> None:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        net = PeerNetwork("a", endpoint, endpoint, lambda: Hello("a", endpoint, 1 << 30, "numpy", "m", 0, 1))
        metrics = GatewayMetrics(lambda: 0, messages_dropped=lambda: net.dropped)
        net.start()
        ctx = zmq.asyncio.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        try:
            assert _counter(metrics, "exo_messages_dropped_total") == 0
            for frames in ([b"not msgpack"], [b"\x81\xa1v\x01"], [b""] * 3):
                await dealer.send_multipart(frames)
            await _until(lambda: net.dropped == 3)
            assert _counter(metrics, "exo_messages_dropped_total") == 3
        finally:
            dealer.close()
            ctx.term()
            await net.close()

    asyncio.run(scenario())


def test_unsigned_beacons_count_as_rejected():
    async def scenario() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        key = ClusterKey.from_secret("correct horse battery staple")
        discovery = Discovery(None, lambda beacon: None, port=port, key=key)  # listens only
        metrics = GatewayMetrics(lambda: 0, beacons_rejected=lambda: discovery.rejected)
        discovery.start()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for data in (b"unsigned beacon", ClusterKey.from_secret("another secret entirely").sign(b"x")):
                    tx.sendto(data, ("127.0.0.1", port))
            await _until(lambda: discovery.rejected == 2)
            assert _counter(metrics, "exo_beacons_rejected_total") == 2
        finally:
            discovery.stop()

    asyncio.run(scenario())
