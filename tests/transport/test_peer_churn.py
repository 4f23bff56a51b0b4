"""PeerNetwork across churn, on real loopback sockets: a peer that restarts on a new port leaves no
socket behind, while an endpoint from the configuration keeps being retried."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from exo_actor.transport.messages import Hello
from exo_actor.transport.peers import PeerNetwork
from tests.api.servers import free_port

HEARTBEAT, TIMEOUT = 0.05, 0.3


def _net(node_id: str, port: int) -> PeerNetwork:
    endpoint = f"tcp://127.0.0.1:{port}"

    def hello() -> Hello:
        return Hello(node_id, endpoint, 1 << 30, "numpy", "m", 0, 1)

    net = PeerNetwork(node_id, endpoint, endpoint, hello, heartbeat=HEARTBEAT, timeout=TIMEOUT)
    net.start()
    net.connect(net.endpoint)
    return net


async def _until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))  # ZeroMQ's I/O threads included


async def _run_once(stay: PeerNetwork, wait_down: bool, previous: str | None) -> str:
    """Start node "churn" on a new port, let it meet `stay`, stop it (and wait until `stay` says it is
    down); returns its endpoint. `previous`, its last endpoint, must be closed by then."""
    churn = _net("churn", free_port())
    churn.connect(stay.endpoint, keep=True)
    await _until(
        lambda: stay.peers.get("churn") is not None and stay.peers["churn"].endpoint == churn.endpoint,
        "the staying node to reach the restarted one",
    )
    assert previous not in stay.dealers  # closed on its peer's Hello from the new endpoint, or when it was down
    await _until(lambda: "stay" in churn.peers, "the restarted node to reach the staying one")
    await churn.close()
    if wait_down:
        await _until(lambda: "churn" not in stay.peers, "the staying node to declare it down")
        assert churn.endpoint not in stay.dealers
    return churn.endpoint


def test_a_peer_restarted_on_new_ports_leaves_no_socket_behind():
    """30 restarts of one node id, each on a new port; every other one is first declared down (the
    timeout path), the rest re-announce at once (the changed-endpoint Hello). The staying node never
    holds more than its own DEALER and the current peer's; fds and threads stay flat."""

    async def scenario() -> None:
        stay = _net("stay", free_port())
        dealers: list[int] = []
        fds: list[int] = []
        previous = None
        try:
            for cycle in range(30):
                previous = await _run_once(stay, wait_down=cycle % 2 == 1, previous=previous)
                dealers.append(len(stay.dealers))
                fds.append(_fds())
                if cycle == 4:
                    threads = _threads()
            # the last peer's socket, once it is declared down
            await _until(lambda: set(stay.dealers) == {stay.endpoint}, "the last peer's socket to close")
            await _until(lambda: _fds() <= fds[4] + 2, f"fds back to {fds[4]} (+2), now {_fds()}")
            assert max(dealers) <= 2, dealers  # our own + the current peer's, never a dead one
            assert max(fds[5:]) <= fds[4] + 4, fds
            assert _threads() <= threads, (threads, _threads())
            assert not stay._unreachable - set(stay.dealers)  # nothing refers to a closed endpoint
        finally:
            await stay.close()

    asyncio.run(scenario())


def test_a_configured_peer_is_retried_while_down_and_refound_at_the_same_address():
    async def scenario() -> None:
        stay, port = _net("stay", free_port()), free_port()
        peer = _net("p", port)
        endpoint = peer.endpoint
        stay.connect(endpoint, keep=True)  # only `stay` knows the address: `p` never calls it
        try:
            await _until(lambda: "p" in stay.peers, "the configured peer")
            await peer.close()
            await _until(lambda: "p" not in stay.peers, "the peer to be declared down")
            await asyncio.sleep(3 * TIMEOUT)
            assert endpoint in stay.dealers  # still retried
            peer = _net("p", port)
            await _until(lambda: "p" in stay.peers, "the peer back at its address", timeout=10)
            await _until(lambda: "stay" in peer.peers, "the peer to know us again")
        finally:
            await peer.close()
            await stay.close()

    asyncio.run(scenario())


def test_a_discovered_peer_loses_its_socket_when_down_and_gets_a_new_one_when_heard_again():
    async def scenario() -> None:
        stay, port = _net("stay", free_port()), free_port()
        peer = _net("p", port)
        endpoint = peer.endpoint
        stay.connect(endpoint)  # as a beacon would
        never = f"tcp://127.0.0.1:{free_port()}"
        stay.connect(never)  # a beacon from a node that died before it answered
        try:
            await _until(lambda: "p" in stay.peers, "the discovered peer")
            first = stay.dealers[endpoint]
            await peer.close()
            await _until(lambda: endpoint not in stay.dealers, "its socket to close")
            assert first.closed and never not in stay.dealers
            peer = _net("p", port)
            stay.connect(endpoint)  # its beacon, heard again
            await _until(lambda: "p" in stay.peers, "the peer found again")
            assert stay.dealers[endpoint] is not first
        finally:
            await peer.close()
            await stay.close()

    asyncio.run(scenario())


def test_a_dropped_hello_is_repaired_by_the_next_periodic_one(monkeypatch):
    """A Hello announcing a new state can be dropped (a socket not yet connected); the periodic Hello
    brings the peer's view up to date anyway."""
    import exo_actor.transport.peers as peers_module

    monkeypatch.setattr(peers_module, "HELLO_EVERY", 0.2)

    async def scenario() -> None:
        a, b = _net("a", free_port()), _net("b", free_port())
        try:
            a.connect(b.endpoint)
            await _until(lambda: "a" in b.peers and "b" in a.peers, "the two nodes to meet")
            loaded = {"v": 0}
            a._hello = lambda: Hello("a", a.endpoint, 1 << 30, "numpy", "m", loaded["v"], 1)  # type: ignore[method-assign]
            loaded["v"] = 7  # a's state changed, and its announce never reached b
            await _until(lambda: b.peers["a"].hello is not None and b.peers["a"].hello.loaded == 7, "b to hear it")
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())
