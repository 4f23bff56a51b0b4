"""DraftActor: hosts a draft on one node and proposes tokens for routers, local or remote.

A router on the same node calls it directly (no hop); a router elsewhere holds a RemoteDrafter,
which asks over the wire (Draft -> Drafted). A draft that fails or does not answer in time yields
an empty proposal: the request then simply decodes without speculation.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import ExoError
from ..sampling import SamplingParams
from ..speculative import Drafter, Proposal
from ..transport.messages import Draft, Drafted, Free
from ..transport.peers import PeerNetwork, UnknownPeerError

log = logging.getLogger(__name__)


class DraftActor:
    """A drafter shared by every router that uses this node's draft (calls are serialized)."""

    def __init__(self, drafter: Drafter, net: PeerNetwork | None = None) -> None:
        self.drafter, self.net = drafter, net
        self.name = drafter.name
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, "exo-draft")
        self.served = 0  # proposals answered for remote routers
        if net is not None:
            net.on(Draft, self.on_draft)

    def propose(
        self, request_id: str, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator
    ) -> Proposal:
        with self._lock:
            return self.drafter.propose(request_id, context, n, params, rng)

    def free(self, request_id: str) -> None:
        with self._lock:
            self.drafter.free(request_id)

    async def on_draft(self, msg: Draft) -> None:
        assert self.net is not None
        loop = asyncio.get_running_loop()
        try:
            params = SamplingParams(
                temperature=msg.temperature, top_k=msg.top_k, top_p=msg.top_p, min_p=msg.min_p, max_tokens=1
            )
            rng = np.random.default_rng(msg.seed)
            context = np.asarray(msg.data, dtype=np.int64).tolist()
            prop = await loop.run_in_executor(self._executor, self.propose, msg.rid, context, msg.n, params, rng)
        except ExoError as exc:
            log.warning("draft request %s refused: %s", msg.rid, exc)
            prop = Proposal([], None)
        except Exception:  # noqa: BLE001 - the router decodes without drafts; the actor lives on
            log.exception("draft for %s failed", msg.rid)
            prop = Proposal([], None)
        q = prop.q if prop.q is not None and msg.temperature > 0.0 else np.zeros((0, 0), np.float32)
        self.served += 1
        try:
            self.net.send(msg.src, Drafted(msg.rid, self.net.node_id, msg.seq, prop.tokens, q.astype(np.float32)))
        except UnknownPeerError:
            log.warning("draft for %s: its router %s is gone", msg.rid, msg.src)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class RemoteDrafter:
    """The Drafter a router uses when its draft lives on another node."""

    def __init__(
        self, net: PeerNetwork, loop: asyncio.AbstractEventLoop, host: str, name: str, timeout: float = 10.0
    ) -> None:
        self.net, self.loop, self.host, self.timeout = net, loop, host, timeout
        self.name = f"{name}@{host}"
        self.pending: dict[tuple[str, int], asyncio.Future[Drafted]] = {}
        self._seq = 0
        self._warned = False

    def on_drafted(self, msg: Drafted) -> None:  # on the event loop
        fut = self.pending.pop((msg.rid, msg.seq), None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _ask(self, msg: Draft) -> Drafted:
        fut: asyncio.Future[Drafted] = self.loop.create_future()
        key = (msg.rid, msg.seq)
        self.pending[key] = fut
        try:
            self.net.send(self.host, msg)
            return await asyncio.wait_for(fut, self.timeout)
        finally:
            self.pending.pop(key, None)

    def propose(
        self, request_id: str, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator
    ) -> Proposal:
        self._seq += 1
        msg = Draft(
            request_id,
            self.net.node_id,
            self._seq,
            n,
            int(rng.integers(2**53)),
            params.temperature,
            params.top_k,
            params.top_p,
            params.min_p,
            np.asarray(context, dtype=np.int64),
        )
        try:
            answer = asyncio.run_coroutine_threadsafe(self._ask(msg), self.loop).result(self.timeout + 1)
        except Exception as exc:  # noqa: BLE001 - no draft this pass: decode plainly
            if not self._warned:
                log.warning("draft host %s did not answer (%s); decoding without drafts", self.host, exc)
                self._warned = True
            return Proposal([], None)
        tokens = list(answer.tokens)[:n]
        q = np.array(answer.data) if answer.data.size else None
        if q is not None and q.shape[0] < len(tokens):
            return Proposal([], None)  # malformed answer: ignore it
        return Proposal(tokens, q)

    def free(self, request_id: str) -> None:
        def send() -> None:
            try:
                self.net.send(self.host, Free(request_id, self.net.node_id))
            except UnknownPeerError:
                pass  # the draft host left, and its caches with it

        self.loop.call_soon_threadsafe(send)
