"""PeerNetwork on real loopback sockets: a send to a node it does not know raises UnknownPeerError."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from exo_actor.errors import ExoError
from exo_actor.transport.messages import Hello, Ping
from exo_actor.transport.peers import PeerNetwork, UnknownPeerError
from tests.api.servers import free_port


def test_a_send_to_an_unknown_node_raises_unknown_peer_error():
    async def scenario() -> None:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        net = PeerNetwork("a", endpoint, endpoint, lambda: Hello("a", endpoint, 1 << 30, "numpy", "m", 0, 1))
        try:
            with pytest.raises(UnknownPeerError, match="node ghost cannot be reached") as caught:
                net.send("ghost", Ping("a", 1))
            assert caught.value.node_id == "ghost"
            assert isinstance(caught.value, ExoError) and not isinstance(caught.value, KeyError)
        finally:
            await net.close()

    asyncio.run(scenario())


def test_unknown_peer_error_pickles_with_its_node_id():
    err = pickle.loads(pickle.dumps(UnknownPeerError("n1")))
    assert err.node_id == "n1" and str(err) == str(UnknownPeerError("n1"))
