"""PeerNetwork: one ROUTER to receive, one DEALER per peer to send, heartbeats, liveness.

Every node binds a ROUTER on its actor port. To talk to a peer it connects a DEALER to the peer's
ROUTER, so all traffic to a node arrives on one socket and replies go out through the sender's own
DEALERs. ZeroMQ reconnects a DEALER by itself with exponential backoff (100 ms up to 5 s). A Ping
goes to every peer each heartbeat interval; any message from a peer proves it alive; a peer silent
for `timeout` is reported dead (on_peer_down) so requests that depend on it end promptly.

Endpoints this node was told to reach (`connect(..., keep=True)`: configured peers, and its own) keep
their DEALER and are retried for as long as the node runs. Any other endpoint (from a beacon, a Hello,
the Ray driver) loses its DEALER once no peer is reached there: its peer went down, moved to another
endpoint, or never answered within `timeout`. A peer restarted on a new port therefore leaves no
socket behind; heard again, it gets a fresh one.

Compute never runs on this loop: actors hand it to a worker thread, so heartbeats keep flowing
during a long prefill.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import zmq
import zmq.asyncio

from ..errors import ExoError
from .messages import Hello, Message, Ping, Pong, ProtocolError, decode
from .security import ClusterKey, start_authenticator

log = logging.getLogger(__name__)

HELLO_EVERY = 2.0  # seconds between repeated Hellos to every peer (see PeerNetwork._beat)

M = TypeVar("M", bound=Message)
# A handler returns None, or a coroutine the network runs as a task (see _dispatch).
Handler = Callable[[M], Coroutine[Any, Any, None] | None]


class TransportError(ExoError):
    """This node cannot open its actor socket."""


class UnknownPeerError(ExoError):
    """A send to a node this network does not know: never introduced, or declared down since."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"node {node_id} cannot be reached from here (it is not a live peer of this node)")
        self.node_id = node_id

    def __reduce__(self) -> tuple[type[UnknownPeerError], tuple[str]]:
        return type(self), (self.node_id,)  # pickles (Ray) with its node id, not its message


@dataclass
class Peer:
    node_id: str
    endpoint: str
    hello: Hello | None = None
    last_seen: float = field(default_factory=time.monotonic)


class PeerNetwork:
    def __init__(
        self,
        node_id: str,
        bind: str,
        advertise: str,
        hello: Callable[[], Hello],
        heartbeat: float = 0.5,
        timeout: float = 3.0,
        key: ClusterKey | None = None,
    ) -> None:
        self.node_id, self.bind, self.endpoint = node_id, bind, advertise
        self.key = key
        self._hello = hello
        self.heartbeat, self.timeout = heartbeat, timeout
        self.ctx = zmq.asyncio.Context()
        self.auth = None
        if key is not None:  # CURVE: encrypted, and only holders of the cluster secret get in
            self.auth, self.zap = start_authenticator(self.ctx, key)
        self.router = self.ctx.socket(zmq.ROUTER)
        if key is not None:
            key.serve(self.router)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, 1 << 31)
        try:
            self.router.bind(bind)
        except zmq.ZMQError as exc:
            self.router.close(linger=0)
            if self.auth is not None:
                self.auth.stop()
            self.ctx.term()
            raise TransportError(
                f"cannot listen on {bind}: {exc.strerror} (is another node using the port? try --port)"
            ) from None
        if advertise.endswith(":0"):  # bound to a port the system picked: advertise that port
            port = self.router.get_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]
            self.endpoint = advertise[:-1] + port
            self.bind = bind.rsplit(":", 1)[0] + ":" + port
        self.dealers: dict[str, zmq.asyncio.Socket] = {}  # endpoint -> socket
        self.peers: dict[str, Peer] = {}  # node id -> peer (known by Hello)
        self.handlers: dict[type[Message], Handler[Message]] = {}
        self.on_peer_up: Callable[[Peer], None] = lambda p: None
        self.on_peer_down: Callable[[Peer], None] = lambda p: None
        # reachability views, from the Pings (ours under our own id): the nodes each node heard from within
        # `fresh` seconds, and the nodes it knew but has not (`lost`: silent peers, and peers declared down
        # until heard again); on_views is called when any view changes
        self.fresh = max(timeout - 2 * heartbeat, timeout / 2)
        self.views: dict[str, frozenset[str]] = {}
        self.lost: dict[str, frozenset[str]] = {}
        self._departed: dict[str, float] = {}  # node id -> when it was declared down
        self.on_views: Callable[[], None] = lambda: None
        self.dropped = 0  # malformed messages received
        self.received: dict[str, list[int]] = {}  # kind -> [messages, bytes] as read from the socket
        self._tasks: list[asyncio.Task[None]] = []
        self._handling: set[asyncio.Future[Any]] = set()  # handler tasks in flight
        self._unreachable: set[str] = set()  # endpoints whose last send failed (logged once)
        self.configured: set[str] = set()  # endpoints whose DEALER stays open while no peer answers there
        self._wanted: dict[str, float] = {}  # endpoint -> when connect() last asked for it

    def on(self, kind: type[M], handler: Handler[M]) -> None:
        """Call `handler` with every received message of type `kind` (exactly that type)."""
        # _dispatch looks the handler up by type(msg), so it only ever receives a `kind`
        self.handlers[kind] = cast(Handler[Message], handler)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._beat())]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for s in [*self.dealers.values(), self.router]:
            s.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()

    def connect(self, endpoint: str, *, keep: bool = False) -> None:
        """Reach a peer's ROUTER (idempotent) and introduce ourselves; `keep` for an endpoint from the
        configuration, which is retried even while nobody answers there (our own endpoint always is)."""
        if keep:
            self.configured.add(endpoint)
        self._wanted[endpoint] = time.monotonic()
        if endpoint in self.dealers:
            return
        s = self.ctx.socket(zmq.DEALER)
        if self.key is not None:
            self.key.client(s)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.connect(self._local(endpoint))
        self.dealers[endpoint] = s
        self._send_to(endpoint, self._hello())

    def _kept(self, endpoint: str) -> bool:
        return endpoint == self.endpoint or endpoint in self.configured

    def _release(self, endpoint: str) -> None:
        """Close the DEALER to `endpoint` unless it is kept or a peer is reached there: ZeroMQ would
        otherwise retry a dead address forever, one socket more each time a peer restarts elsewhere."""
        if self._kept(endpoint) or any(p.endpoint == endpoint for p in self.peers.values()):
            return
        sock = self.dealers.pop(endpoint, None)
        self._wanted.pop(endpoint, None)
        self._unreachable.discard(endpoint)
        if sock is not None:
            sock.close(linger=0)
            log.info("closed the connection to %s: no peer there any more", endpoint)

    def _local(self, endpoint: str) -> str:
        """Where to connect for `endpoint`: our own ROUTER directly on loopback when the endpoint is
        our advertised one (it may be a NAT or proxy address that would loop through the network)."""
        if endpoint != self.endpoint:
            return endpoint
        host, _, port = self.bind.removeprefix("tcp://").rpartition(":")
        return f"tcp://{'127.0.0.1' if host in ('0.0.0.0', '*') else host}:{port}"

    def alive(self, node_id: str) -> bool:
        p = self.peers.get(node_id)
        return p is not None and time.monotonic() - p.last_seen < self.timeout

    def send(self, node_id: str, msg: Message) -> None:
        """Send to a known peer (ourselves included); raises UnknownPeerError for any other node."""
        peer = self.peers.get(node_id)
        if peer is None:
            raise UnknownPeerError(node_id)
        self._send_to(peer.endpoint, msg)

    def _send_to(self, endpoint: str, msg: Message) -> None:
        sock = self.dealers.get(endpoint)
        if sock is None:
            self.connect(endpoint)
            sock = self.dealers[endpoint]
        try:
            sent = sock.send_multipart(msg.encode(), copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            sent = None
            self._undelivered(endpoint, msg)
        if isinstance(sent, asyncio.Future):  # zmq.asyncio reports a full queue on the future

            def check(f: asyncio.Future[Any]) -> None:
                if not f.cancelled() and f.exception() is not None and self.dealers.get(endpoint) is sock:
                    self._undelivered(endpoint, msg)

            sent.add_done_callback(check)

    def _undelivered(self, endpoint: str, msg: Message) -> None:
        """A message that could not be queued: no connection (a peer down, or refusing our key) or a
        full queue. Liveness decides what that means; log it once per endpoint until it recovers."""
        if endpoint not in self._unreachable:
            self._unreachable.add(endpoint)
            log.warning("cannot send to %s (not connected, or its queue is full); dropped a %s", endpoint, msg.KIND)

    async def _receive(self) -> None:
        while True:
            frames = await self.router.recv_multipart(copy=False)
            try:
                msg = decode(frames[1:])  # frames[0] is the sending DEALER's routing id
            except ProtocolError as exc:
                self.dropped += 1
                log.warning("dropped a malformed message: %s", exc)
                continue
            count = self.received.setdefault(msg.KIND, [0, 0])
            count[0] += 1
            count[1] += sum(f.buffer.nbytes for f in frames[1:])
            try:
                await self._dispatch(msg)
            except Exception:  # noqa: BLE001 - a handler bug must not stop the node
                log.exception("handler for %s failed", msg.KIND)

    async def _dispatch(self, msg: Message) -> None:
        src = getattr(msg, "src", None)
        if isinstance(msg, Hello):
            self._hello_from(msg)
        elif src in self.peers:
            self.peers[src].last_seen = time.monotonic()
        if src in self.peers:
            self._unreachable.discard(self.peers[src].endpoint)
        if isinstance(msg, Ping) and src in self.peers:
            self.send(src, Pong(self.node_id, msg.seq))
            self._view(msg.src, frozenset(msg.hears), frozenset(msg.lost))
            return
        handler = self.handlers.get(type(msg))
        if handler is not None:
            result = handler(msg)
            if asyncio.iscoroutine(result):
                # Run it as a task: a handler waiting on compute (a slow engine's prefill) must not
                # stop this loop from receiving, or heartbeats go unanswered and peers look dead.
                # Tasks start in arrival order, so handlers still see messages in order.
                task = asyncio.ensure_future(result)
                self._handling.add(task)
                task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Future[Any]) -> None:
        self._handling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("handler failed", exc_info=task.exception())

    def _hello_from(self, msg: Hello) -> None:
        known = self.peers.get(msg.src)
        if known is None or known.endpoint != msg.endpoint:
            self.connect(msg.endpoint)
            peer = self.peers[msg.src] = Peer(msg.src, msg.endpoint, msg)
            log.info("peer %s at %s (%s, %.1f GiB)", msg.src, msg.endpoint, msg.engine, msg.memory / 2**30)
            if known is not None:  # restarted elsewhere (a new port): its old address is dead
                self._release(known.endpoint)
            self.on_peer_up(peer)
        else:
            known.hello, known.last_seen = msg, time.monotonic()
        if msg.reply and msg.src != self.node_id:
            self.send(msg.src, dataclasses.replace(self._hello(), reply=0))

    def hearing(self) -> frozenset[str]:
        """This node's view: itself and the peers it heard from within `fresh` seconds."""
        now = time.monotonic()
        return frozenset(p.node_id for p in self.peers.values() if now - p.last_seen < self.fresh) | {self.node_id}

    def losing(self) -> frozenset[str]:
        """The nodes this node knew and has not heard from within `fresh` seconds (declared down ones too,
        until heard again or for 20 peer timeouts)."""
        now = time.monotonic()
        for node_id, since in list(self._departed.items()):
            if node_id in self.peers or now - since > 20 * self.timeout:
                del self._departed[node_id]
        silent = {p.node_id for p in self.peers.values() if now - p.last_seen >= self.fresh}
        return frozenset(silent | set(self._departed)) - {self.node_id}

    def _view(self, node_id: str, view: frozenset[str], lost: frozenset[str]) -> None:
        if self.views.get(node_id) != view or self.lost.get(node_id) != lost:
            self.views[node_id], self.lost[node_id] = view, lost
            self.on_views()

    def announce(self) -> None:
        """Send our Hello to every peer (after our state changed)."""
        hello = dataclasses.replace(self._hello(), reply=0)
        for peer in list(self.peers.values()):
            self.send(peer.node_id, hello)

    async def _beat(self) -> None:
        seq = 0
        # Hellos go out on every change of state, and again every HELLO_EVERY seconds: a Hello dropped on a
        # socket not yet connected would otherwise leave a peer's view of this node stale for good (say,
        # waiting for it to load a plan it has long loaded).
        hello_beats = max(1, round(HELLO_EVERY / self.heartbeat))
        while True:
            await asyncio.sleep(self.heartbeat)
            seq += 1
            if seq % hello_beats == 0:
                self.announce()
            now = time.monotonic()
            for peer in list(self.peers.values()):
                if peer.node_id == self.node_id:
                    peer.last_seen = now
                    continue
                if now - peer.last_seen > self.timeout:
                    log.warning(
                        "peer %s at %s is silent for %.1f s: down", peer.node_id, peer.endpoint, now - peer.last_seen
                    )
                    del self.peers[peer.node_id]
                    self.views.pop(peer.node_id, None)
                    self.lost.pop(peer.node_id, None)
                    self._departed[peer.node_id] = now
                    self._release(peer.endpoint)
                    self.on_peer_down(peer)
                    continue
            mine, lost = self.hearing(), self.losing()
            for peer in list(self.peers.values()):
                if peer.node_id != self.node_id:
                    self.send(peer.node_id, Ping(self.node_id, seq, sorted(mine), sorted(lost)))
            self._view(self.node_id, mine, lost)
            answering = {p.endpoint for p in self.peers.values()}
            for endpoint in [e for e in self.dealers if e not in answering]:
                if self._kept(endpoint) or now - self._wanted.get(endpoint, now) < self.timeout:
                    self._send_to(endpoint, self._hello())  # keep introducing ourselves until it answers
                else:
                    self._release(endpoint)  # a discovered endpoint that never answered
