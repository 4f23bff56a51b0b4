"""The cluster secret: derived keys, signed beacons, and CURVE on real ZeroMQ sockets (loopback)."""

from __future__ import annotations

import asyncio
import socket

import pytest
import zmq
import zmq.asyncio

from exo_actor.transport.messages import Hello
from exo_actor.transport.peers import PeerNetwork
from exo_actor.transport.security import ClusterKey, ClusterKeyError, new_key
from tests.api.servers import free_port

SECRET = "correct horse battery staple"


def test_keys_are_derived_from_the_secret_alone():
    a, b = ClusterKey.from_secret(SECRET), ClusterKey.from_secret(SECRET)
    assert a == b
    other = ClusterKey.from_secret(SECRET + "!")
    assert other.server_public != a.server_public and other.client_public != a.client_public
    assert other.beacon_key != a.beacon_key
    assert zmq.curve_public(a.server_secret) == a.server_public
    assert SECRET not in repr(a) and a.server_secret.decode() not in repr(a)
    with pytest.raises(ClusterKeyError, match="at least 16"):
        ClusterKey.from_secret("short")
    assert len(new_key()) >= 40 and new_key() != new_key()


def test_beacons_verify_only_with_the_same_key():
    key, other = ClusterKey.from_secret(SECRET), ClusterKey.from_secret(new_key())
    data = b"\x93\x01beacon payload"
    signed = key.sign(data)
    assert key.verify(signed) == data
    assert other.verify(signed) is None
    tampered = bytearray(signed)
    tampered[3] ^= 1
    assert key.verify(bytes(tampered)) is None
    assert key.verify(data) is None and key.verify(b"") is None and key.verify(signed[-32:]) is None


def _net(node_id: str, port: int, key: ClusterKey | None) -> PeerNetwork:
    endpoint = f"tcp://127.0.0.1:{port}"

    def hello() -> Hello:
        return Hello(node_id, endpoint, 1 << 30, "numpy", "m", 0, 1)

    return PeerNetwork(node_id, endpoint, endpoint, hello, heartbeat=0.1, timeout=2.0, key=key)


def test_only_holders_of_the_secret_join_and_the_wire_is_curve():
    """Two nodes with the key see each other; a node with another key and one with no key connect
    to the same port and send Hellos, yet neither is ever listed, nor do they hear back."""

    async def scenario() -> None:
        key = ClusterKey.from_secret(SECRET)
        ports = [free_port() for _ in range(4)]
        a, b = _net("a", ports[0], key), _net("b", ports[1], key)
        wrong, open_ = _net("wrong", ports[2], ClusterKey.from_secret(new_key())), _net("open", ports[3], None)
        nets = [a, b, wrong, open_]
        for n in nets:
            n.start()
        try:
            for n in (b, wrong, open_):
                n.connect(f"tcp://127.0.0.1:{ports[0]}")
            # someone who learned the server's public key but not the secret: refused by the ZAP check
            leaked = zmq.asyncio.Context()
            spy = leaked.socket(zmq.DEALER)
            spy.curve_publickey, spy.curve_secretkey = zmq.curve_keypair()
            spy.curve_serverkey = key.server_public
            spy.linger = 0
            spy.connect(f"tcp://127.0.0.1:{ports[0]}")
            intruder = Hello("spy", "tcp://127.0.0.1:9", 1 << 40, "numpy", "m", 0, 1)
            spy.send_multipart(intruder.encode(), flags=zmq.NOBLOCK)
            await asyncio.sleep(1.5)
            assert set(a.peers) == {"b"} and set(b.peers) == {"a"}, (a.peers, b.peers)
            assert "a" not in wrong.peers and "a" not in open_.peers, (wrong.peers, open_.peers)
            assert a.zap.refused >= 1  # the spy's handshake reached the key check and failed it
            spy.close()
            leaked.term()
        finally:
            for n in nets:
                await n.close()

    asyncio.run(scenario())


def test_the_actor_port_speaks_curve():
    """A raw TCP client reads the ZMTP greeting of a keyed node's ROUTER: its security mechanism."""

    async def scenario() -> bytes:
        port = free_port()
        net = _net("a", port, ClusterKey.from_secret(SECRET))
        net.start()
        try:
            loop = asyncio.get_running_loop()

            def greet() -> bytes:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    # ZMTP 3.0 greeting: signature, version 3.0, mechanism, as-server 0, filler. We
                    # offer CURVE too: on a mismatch the server would reset the connection before we
                    # read its greeting; an unkeyed server answers NULL, and the assertion fails.
                    s.sendall(
                        b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\x00") + b"\x00" * 32
                    )
                    data = b""
                    while len(data) < 64:
                        chunk = s.recv(64 - len(data))
                        if not chunk:
                            break
                        data += chunk
                    return data

            return await loop.run_in_executor(None, greet)
        finally:
            await net.close()

    greeting = asyncio.run(scenario())
    assert greeting[12:32].rstrip(b"\x00") == b"CURVE", greeting
