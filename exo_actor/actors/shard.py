"""ShardActor: runs this node's layer range for every request that reaches it.

Forward in -> compute on the node's compute thread -> Forward to the next node, or, on the last
shard, back to the request's router: the tokens the pass yields (Sampled: the pass carried the request's
sampling state, actors/sampling_wire.py) or its Logits. Free drops a request's caches. A Forward for another
plan version is refused with a Failure, so no request ever mixes two layer plans.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..engines import Pass, ShardRunner
from ..engines.base import CachePositionError
from ..errors import ExoError
from ..transport.messages import (
    Choice,
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
from .sampling_wire import choose

log = logging.getLogger(__name__)


FREED_MEMORY = 4096


@dataclass
class ShardRole:
    plan: int
    runner: ShardRunner
    next_node: str | None  # None on the last shard


class ShardActor:
    def __init__(self, net: PeerNetwork, compute: ThreadPoolExecutor) -> None:
        self.net, self.compute = net, compute
        self.role: ShardRole | None = None
        self.last_pos: dict[str, int] = {}  # request -> start of its newest Forward here
        # requests already freed: a Forward of a failed request still travelling the ring when its
        # Free arrived must not build a cache nobody will free (bounded: the newest FREED_MEMORY ids)
        self.freed: OrderedDict[str, None] = OrderedDict()
        self.routers: dict[str, str] = {}  # request -> its router, for requests this shard has served
        self.closed = False  # the node is stopping: its compute thread takes no more work
        net.on(Forward, self.on_forward)
        net.on(ForwardBatch, self.on_forward_batch)
        net.on(Free, self.on_free)
        net.on(Truncate, self.on_truncate)

    def close(self) -> None:
        """The node is stopping: passes that still arrive are refused as a ring change (their routers
        replay them on the next ring), not run on a compute thread that is shutting down."""
        self.closed = True

    async def on_forward(self, msg: Forward) -> None:
        role = self.role
        if msg.rid in self.freed:
            return  # its router has already given up on it
        if self.closed:
            self._fail(msg, "peer_down", f"node {self.net.node_id} is shutting down; the cluster is re-planning")
            return
        if role is None or role.plan != msg.plan:
            self._fail(msg, "plan_changed", "the cluster's layer plan changed; retry the request")
            return
        loop = asyncio.get_running_loop()
        self.last_pos[msg.rid] = msg.pos
        self.routers[msg.rid] = msg.router
        try:
            out = await loop.run_in_executor(self.compute, self._run, role.runner, msg, role.next_node is None)
        except ExoError as exc:
            self._fail(msg, _code(exc), str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - reported to the router, the actor lives on
            log.exception("shard failed on request %s", msg.rid)
            self._fail(msg, "shard_error", f"{type(exc).__name__}: {exc}")
            return
        try:
            if isinstance(out, Choice):
                self.net.send(msg.router, Sampled(self.net.node_id, [msg.rid], [msg.pos], [out]))
            elif role.next_node is None:
                self.net.send(msg.router, Logits(msg.rid, self.net.node_id, msg.pos, np.asarray(out, np.float32)))
            else:
                self.net.send(
                    role.next_node,
                    Forward(
                        msg.rid,
                        self.net.node_id,
                        msg.router,
                        msg.plan,
                        msg.pos,
                        msg.num_logits,
                        np.asarray(out, np.float32),
                        msg.adopt,
                        msg.adopt_len,
                        msg.sample,
                        msg.adopt_copy,
                    ),
                )
        except UnknownPeerError as exc:
            self._fail(msg, "peer_down", _peer_down(exc))
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong, the router must hear of it
            log.exception("shard could not pass on request %s", msg.rid)
            self._fail(msg, "shard_error", f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _run(runner: ShardRunner, msg: Forward, last: bool) -> np.ndarray | Choice:
        """The pass through this shard's layers; on the last shard of a sampled pass, its tokens."""
        _adopt(runner, msg.rid, msg.adopt, msg.adopt_len, msg.adopt_copy)
        out = runner.forward(msg.rid, msg.data, msg.pos, msg.num_logits)
        return choose(out, msg.sample[0]) if last and msg.sample else out

    async def on_forward_batch(self, msg: ForwardBatch) -> None:
        """Decode steps of several requests: one batched pass, rows failing alone."""
        role = self.role
        rows = [i for i, rid in enumerate(msg.rids) if rid not in self.freed]
        for i in rows:
            self.last_pos[msg.rids[i]] = msg.positions[i]
            self.routers[msg.rids[i]] = msg.router
        if self.closed:
            for i in rows:
                text = f"node {self.net.node_id} is shutting down; the cluster is re-planning"
                self._fail_row(msg.router, msg.rids[i], "peer_down", text)
            return
        if role is None or role.plan != msg.plan:
            for i in rows:
                self._fail_row(
                    msg.router, msg.rids[i], "plan_changed", "the cluster's layer plan changed; retry the request"
                )
            return
        if not rows:
            return
        loop = asyncio.get_running_loop()
        try:
            last = role.next_node is None
            results = await loop.run_in_executor(self.compute, self._run_batch, role.runner, msg, rows, last)
        except Exception as exc:  # noqa: BLE001 - reported to the routers, the actor lives on
            log.exception("shard failed on a batch of %d requests", len(rows))
            for i in rows:
                self._fail_row(msg.router, msg.rids[i], "shard_error", f"{type(exc).__name__}: {exc}")
            return
        ok: list[int] = []
        outs: list[np.ndarray] = []
        choices: list[Choice] = []
        for i, out in zip(rows, results):
            if isinstance(out, Exception):
                self._fail_row(msg.router, msg.rids[i], _code(out), str(out))
            else:
                ok.append(i)
                if isinstance(out, Choice):
                    choices.append(out)
                else:
                    outs.append(np.asarray(out, np.float32))
        if not ok:
            return
        rids, positions = [msg.rids[i] for i in ok], [msg.positions[i] for i in ok]
        me = self.net.node_id
        try:
            if choices:
                self.net.send(msg.router, Sampled(me, rids, positions, choices))
            elif role.next_node is None:
                self.net.send(msg.router, LogitsBatch(me, rids, positions, np.concatenate(outs)))
            else:
                adopt, adopt_len = [msg.adopt[i] for i in ok], [msg.adopt_len[i] for i in ok]
                samples = [msg.samples[i] for i in ok] if msg.samples else []
                copy = [msg.adopt_copy[i] for i in ok] if msg.adopt_copy else []
                data = np.concatenate(outs)
                self.net.send(
                    role.next_node,
                    ForwardBatch(me, msg.router, msg.plan, rids, positions, adopt, adopt_len, data, samples, copy),
                )
        except UnknownPeerError as exc:
            for rid in rids:
                self._fail_row(msg.router, rid, "peer_down", _peer_down(exc))
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong, the routers must hear of it
            log.exception("shard could not pass on a batch of %d requests", len(rids))
            for rid in rids:
                self._fail_row(msg.router, rid, "shard_error", f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _run_batch(
        runner: ShardRunner, msg: ForwardBatch, rows: list[int], last: bool
    ) -> list[np.ndarray | Choice | Exception]:
        passes: list[Pass] = []
        results: dict[int, Exception] = {}
        for k, i in enumerate(rows):
            try:
                _adopt(runner, msg.rids[i], msg.adopt[i], msg.adopt_len[i], msg.adopt_copy[i] if msg.adopt_copy else 0)
            except ExoError as exc:
                results[k] = exc
                continue
            passes.append(Pass(msg.rids[i], msg.data[i : i + 1], msg.positions[i]))
        outs = iter(runner.forward_batch(passes))
        done: list[np.ndarray | Choice | Exception] = [
            results[k] if k in results else next(outs) for k in range(len(rows))
        ]
        if not (last and msg.samples):
            return done
        return [out if not isinstance(out, np.ndarray) else _choose(out, msg.samples[i]) for i, out in zip(rows, done)]

    async def on_truncate(self, msg: Truncate) -> None:
        role = self.role
        if self.closed or role is None or self.last_pos.get(msg.rid) != msg.after:
            return  # a newer pass has arrived (it already rolled the cache back), or none did
        await asyncio.get_running_loop().run_in_executor(self.compute, role.runner.truncate, msg.rid, msg.length)

    def abandon(self, reason: str) -> None:
        """This node re-planned: tell the router of every request it served that the request is over.

        A router may be waiting for a pass this node forwarded to a peer it now considers gone (a cut
        link between two other nodes than the router): without this, only the step timeout ends it.
        """
        for rid, router in list(self.routers.items()):
            try:
                self.net.send(router, Failure(rid, self.net.node_id, "plan_changed", reason))
            except UnknownPeerError:
                pass  # that router is gone too: nobody waits for the request
        self.routers.clear()

    async def on_free(self, msg: Free) -> None:
        self.last_pos.pop(msg.rid, None)
        self.routers.pop(msg.rid, None)
        self.freed[msg.rid] = None
        while len(self.freed) > FREED_MEMORY:
            self.freed.popitem(last=False)
        role = self.role
        if role is not None and not self.closed:
            await asyncio.get_running_loop().run_in_executor(self.compute, role.runner.free, msg.rid)

    def _fail(self, msg: Forward, code: str, text: str) -> None:
        self._fail_row(msg.router, msg.rid, code, text)

    def _fail_row(self, router: str, rid: str, code: str, text: str) -> None:
        try:
            self.net.send(router, Failure(rid, self.net.node_id, code, text))
        except UnknownPeerError:
            log.warning("cannot report failure of %s: its router %s is gone", rid, router)


def _choose(logits: np.ndarray, spec: SampleSpec) -> Choice | Exception:
    """One row's choice, or the error that fails that row alone."""
    try:
        return choose(logits, spec)
    except ExoError as exc:
        return exc


def _code(exc: Exception) -> str:
    """The Failure code of a pass this shard refused: its positions are gone from here (this shard was
    reloaded: the router can replay them), or the request itself is at fault."""
    return "cache_lost" if isinstance(exc, CachePositionError) else "invalid_request"


def _peer_down(exc: UnknownPeerError) -> str:
    return f"node {exc.node_id} cannot be reached from here; the cluster is re-planning, retry the request"


def _adopt(runner: ShardRunner, rid: str, source: str, length: int, copy: int = 0) -> None:
    """The prefix cache: continue a finished request's KV cache; or, with `copy`, start from a copy of a
    running one's (the choices of one prompt). No-op without a source."""
    if not source:
        return
    got = runner.fork(source, rid, length) if copy else runner.adopt(source, rid, length)
    if got != length:
        raise CachePositionError(
            f"the cached prefix of this conversation is gone from node layers [{runner.start}, "
            f"{runner.end}) (has {got} of {length} positions); retry the request"
        )
