"""RemoteRing: the Pipeline a RouterActor drives when the shards live on other nodes.

forward() is called on the RouterActor's compute thread and blocks until the last shard's Logits
arrive (or a Failure, or a ring node goes silent: then it raises RingError at once, so a request on
a broken ring ends within the heartbeat timeout). A pass that carries a portable Sample travels with its
sampling state and is answered with the tokens it yields (Sampled: a few ids instead of the logits
rows), unless `shard_sampling` is off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import numpy as np

from ..engines import Pass
from ..errors import ExoError
from ..sampling.decide import Decision
from ..transport.messages import (
    MAX_LIST,
    Failure,
    Forward,
    ForwardBatch,
    Free,
    Logits,
    LogitsBatch,
    Sampled,
    SampleSpec,
    Truncate,
)
from ..transport.peers import PeerNetwork, UnknownPeerError
from .sampling_wire import decision_of, spec_of

log = logging.getLogger(__name__)


# Why a step failed: the ring changed under it (a replay on the next ring gives the same answer); a shard
# no longer holds the request's positions (it was reloaded: a replay on the same ring rebuilds them); the
# request itself is at fault (refused on any ring); or a shard failed (a bug: replaying would repeat it).
RING_CHANGED = frozenset({"ring_changed", "plan_changed", "peer_down"})
CACHE_LOST = "cache_lost"


class RingError(ExoError):
    """The ring could not complete a step (a node failed or left, or a shard refused the pass)."""

    def __init__(self, message: str, code: str = "ring_changed") -> None:
        super().__init__(message)
        self.code = code

    @property
    def ring_changed(self) -> bool:
        """The failure is the ring's, not the request's: the same pass on another ring can succeed."""
        return self.code in RING_CHANGED

    @property
    def replayable(self) -> bool:
        """A replay of the request's positions (on this ring or the next) can make the pass succeed."""
        return self.ring_changed or self.code == CACHE_LOST

    def __reduce__(self) -> tuple[type[RingError], tuple[str, str]]:
        return type(self), (str(self), self.code)


Answer = np.ndarray | Decision  # a pass's logits, or the tokens the last shard chose


class RemoteRing:
    def __init__(
        self,
        net: PeerNetwork,
        loop: asyncio.AbstractEventLoop,
        plan: int,
        nodes: Sequence[str],
        step_timeout: float,
        shard_sampling: bool = True,
    ) -> None:
        self.net, self.loop, self.plan, self.nodes = net, loop, plan, list(nodes)
        self.step_timeout = step_timeout
        self.shard_sampling = shard_sampling  # the last shard chooses the tokens of passes that carry a Sample
        # request -> (start of the pass in flight, its answer). An answer whose position differs is a
        # late one for an earlier pass (a frozen node resumed after the request moved on): dropped.
        self.pending: dict[str, tuple[int, asyncio.Future[Answer]]] = {}
        self.broken: str | None = None
        self.last_pos: dict[str, int] = {}  # request -> start of its latest pass (for Truncate)
        # request -> (cache it takes over or copies, length, 1 to copy): sent with its first pass
        self.adopting: dict[str, tuple[str, int, int]] = {}

    # called on the event loop ------------------------------------------------------------
    def on_logits(self, msg: Logits) -> None:
        fut = self._take(msg.rid, msg.pos)
        if fut is not None:
            fut.set_result(np.array(msg.data))  # copy out of the receive buffer

    def on_logits_batch(self, msg: LogitsBatch) -> None:
        for i, (rid, pos) in enumerate(zip(msg.rids, msg.positions)):
            fut = self._take(rid, pos)
            if fut is not None:
                fut.set_result(np.array(msg.data[i : i + 1]))

    def on_sampled(self, msg: Sampled) -> None:
        for rid, pos, choice in zip(msg.rids, msg.positions, msg.choices):
            fut = self._take(rid, pos)
            if fut is not None:
                fut.set_result(decision_of(choice))

    def on_failure(self, msg: Failure) -> None:
        fut = self._take(msg.rid, None)
        if fut is not None:
            fut.set_exception(RingError(f"node {msg.src}: {msg.message}", msg.code))

    def _take(self, rid: str, pos: int | None) -> asyncio.Future[Answer] | None:
        """The pass in flight that an answer for (rid, pos) completes, or None: no pass of rid is in
        flight, or the answer is for an earlier pass (pos differs; a Failure carries no position)."""
        entry = self.pending.get(rid)
        if entry is None or (pos is not None and entry[0] != pos):
            if entry is not None:
                log.debug("dropped a late answer for %s at %s (waiting for %s)", rid, pos, entry[0])
            return None
        del self.pending[rid]
        return None if entry[1].done() else entry[1]

    def node_down(self, node_id: str) -> None:
        if node_id in self.nodes:
            self.fail_all(f"node {node_id} stopped answering; the cluster is re-planning, retry shortly")

    def fail_all(self, reason: str) -> None:
        """End every step in flight, and refuse new ones, with `reason`."""
        self.broken = reason
        for rid, (_, fut) in list(self.pending.items()):
            if not fut.done():
                fut.set_exception(RingError(reason))
            self.pending.pop(rid, None)

    def _spec(self, p: Pass) -> SampleSpec | None:
        """The sampling state a pass carries to the last shard (None: its logits come back)."""
        return spec_of(p.sample) if self.shard_sampling and p.sample is not None and p.sample.portable else None

    async def _step(self, p: Pass) -> Answer:
        if self.broken:
            raise RingError(self.broken)
        me, rid, start_pos = self.net.node_id, p.request_id, p.start_pos
        src, length, copy = self.adopting.pop(rid, ("", 0, 0))
        spec = self._spec(p)
        tokens = np.asarray(p.tokens, dtype=np.int64)
        msg = Forward(
            rid, me, me, self.plan, start_pos, p.num_logits, tokens, src, length, [spec] if spec else [], copy
        )
        futs = self._send(msg, [rid], [start_pos])
        return await self._answer(rid, futs[0])

    async def _batch(self, passes: Sequence[Pass]) -> list[Answer | BaseException]:
        """Decode steps go as ForwardBatch messages of up to MAX_LIST rows (those sampled on the last shard
        apart from those whose logits come back), any longer pass as its own Forward; all travel the ring
        at once."""
        if self.broken:
            raise RingError(self.broken)
        me = self.net.node_id
        waits: dict[int, asyncio.Future[Answer]] = {}  # pass index -> its answer (a Task is a Future)
        specs = [self._spec(p) for p in passes]
        single = [i for i, p in enumerate(passes) if len(p.tokens) == 1 and p.num_logits == 1]
        for i, p in enumerate(passes):
            if i not in single:
                waits[i] = self.loop.create_task(self._step(p))
        groups = [[i for i in single if specs[i] is not None], [i for i in single if specs[i] is None]]
        for chunk in (group[k : k + MAX_LIST] for group in groups for k in range(0, len(group), MAX_LIST)):
            rids = [passes[i].request_id for i in chunk]
            adopting = [self.adopting.pop(rid, ("", 0, 0)) for rid in rids]
            msg = ForwardBatch(
                me,
                me,
                self.plan,
                rids,
                [passes[i].start_pos for i in chunk],
                [a[0] for a in adopting],
                [a[1] for a in adopting],
                np.concatenate([np.asarray(passes[i].tokens, dtype=np.int64) for i in chunk]),
                [s for i in chunk if (s := specs[i]) is not None],
                [a[2] for a in adopting] if any(a[2] for a in adopting) else [],
            )
            try:
                futs = self._send(msg, rids, msg.positions)
            except RingError as exc:
                futs = [self.loop.create_future() for _ in chunk]
                for f in futs:
                    f.set_exception(exc)
            for i, rid, fut in zip(chunk, rids, futs):
                waits[i] = self.loop.create_task(self._answer(rid, fut))
        return list(await asyncio.gather(*(waits[i] for i in range(len(passes))), return_exceptions=True))

    def _send(self, msg: Forward | ForwardBatch, rids: list[str], positions: list[int]) -> list[asyncio.Future[Answer]]:
        futs = []
        for rid, pos in zip(rids, positions):
            fut: asyncio.Future[Answer] = self.loop.create_future()
            self.pending[rid] = (pos, fut)
            futs.append(fut)
        try:
            self.net.send(self.nodes[0], msg)
        except UnknownPeerError:
            for rid in rids:
                self.pending.pop(rid, None)
            raise RingError(f"node {self.nodes[0]} left the cluster") from None
        return futs

    async def _answer(self, rid: str, fut: asyncio.Future[Answer]) -> Answer:
        try:
            return await asyncio.wait_for(fut, self.step_timeout)
        except TimeoutError:
            self.pending.pop(rid, None)
            raise RingError(f"the ring did not answer within {self.step_timeout:g} s", "timeout") from None

    # the Pipeline protocol, called on the RouterActor's thread ------------------------------------
    def forward(self, request_id: str, tokens: np.ndarray, start_pos: int, num_logits: int = 1) -> np.ndarray:
        self.last_pos[request_id] = start_pos
        p = Pass(request_id, np.asarray(tokens, dtype=np.int64), start_pos, num_logits)  # no Sample: logits
        fut = asyncio.run_coroutine_threadsafe(self._step(p), self.loop)
        out = fut.result(self.step_timeout + 5)
        assert isinstance(out, np.ndarray)
        return out

    def forward_batch(self, passes: Sequence[Pass]) -> list[Answer | Exception]:
        for p in passes:
            self.last_pos[p.request_id] = p.start_pos
        fut = asyncio.run_coroutine_threadsafe(self._batch(passes), self.loop)
        results = fut.result(self.step_timeout + 5)
        return [r if isinstance(r, (np.ndarray, Decision, Exception)) else RingError(str(r)) for r in results]

    def truncate(self, request_id: str, length: int) -> None:
        msg = Truncate(request_id, self.net.node_id, length, self.last_pos.get(request_id, 0))
        self.loop.call_soon_threadsafe(self._send_all, msg)

    def adopt(self, source: str, request_id: str, length: int) -> int:
        """Each shard moves `source`'s cache to request_id when the request's first pass reaches it
        (carried by that Forward, so no separate message can overtake or trail it)."""
        self.adopting[request_id] = (source, length, 0)
        return length

    def fork(self, source: str, request_id: str, length: int) -> int:
        """As adopt, but each shard copies `source`'s cache (which keeps running) instead of taking it over."""
        self.adopting[request_id] = (source, length, 1)
        return length

    def free(self, request_id: str) -> None:
        self.last_pos.pop(request_id, None)
        self.adopting.pop(request_id, None)
        self.loop.call_soon_threadsafe(self._send_all, Free(request_id, self.net.node_id))

    def _send_all(self, msg: Free | Truncate) -> None:
        for node in self.nodes:
            try:
                self.net.send(node, msg)
            except UnknownPeerError:
                pass  # a node that left holds no cache to free or truncate
