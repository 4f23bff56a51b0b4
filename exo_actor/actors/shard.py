"""ShardActor: runs this node's layer range for every request that reaches it.

Forward in -> compute on the node's compute thread -> Forward to the next node, or, on the last
shard, Logits back to the request's router. Free drops a request's caches. A Forward for another
plan version is refused with a Failure, so no request ever mixes two layer plans.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..engines import ShardRunner
from ..errors import ExoError
from ..transport.messages import Failure, Forward, Free, Logits, Truncate
from ..transport.peers import PeerNetwork

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
        net.on(Forward, self.on_forward)
        net.on(Free, self.on_free)
        net.on(Truncate, self.on_truncate)

    async def on_forward(self, msg: Forward) -> None:
        role = self.role
        if msg.rid in self.freed:
            return  # its router has already given up on it
        if role is None or role.plan != msg.plan:
            self._fail(msg, "plan_changed", "the cluster's layer plan changed; retry the request")
            return
        loop = asyncio.get_running_loop()
        self.last_pos[msg.rid] = msg.pos
        self.routers[msg.rid] = msg.router
        try:
            out = await loop.run_in_executor(self.compute, self._run, role.runner, msg)
        except ExoError as exc:
            self._fail(msg, "invalid_request", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - reported to the router, the actor lives on
            log.exception("shard failed on request %s", msg.rid)
            self._fail(msg, "shard_error", f"{type(exc).__name__}: {exc}")
            return
        try:
            if role.next_node is None:
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
                    ),
                )
        except KeyError as exc:
            self._fail(
                msg,
                "peer_down",
                f"node {exc.args[0]} cannot be reached from here; the cluster is re-planning, retry the request",
            )
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong, the router must hear of it
            log.exception("shard could not pass on request %s", msg.rid)
            self._fail(msg, "shard_error", f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _run(runner: ShardRunner, msg: Forward) -> np.ndarray:
        if msg.adopt:  # the prefix cache: continue a finished request's KV cache
            got = runner.adopt(msg.adopt, msg.rid, msg.adopt_len)
            if got != msg.adopt_len:
                raise ExoError(
                    f"the cached prefix of this conversation is gone from node layers [{runner.start}, "
                    f"{runner.end}) (has {got} of {msg.adopt_len} positions); retry the request"
                )
        return runner.forward(msg.rid, msg.data, msg.pos, msg.num_logits)

    async def on_truncate(self, msg: Truncate) -> None:
        role = self.role
        if role is None or self.last_pos.get(msg.rid) != msg.after:
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
            except KeyError:
                pass
        self.routers.clear()

    async def on_free(self, msg: Free) -> None:
        self.last_pos.pop(msg.rid, None)
        self.routers.pop(msg.rid, None)
        self.freed[msg.rid] = None
        while len(self.freed) > FREED_MEMORY:
            self.freed.popitem(last=False)
        role = self.role
        if role is not None:
            await asyncio.get_running_loop().run_in_executor(self.compute, role.runner.free, msg.rid)

    def _fail(self, msg: Forward, code: str, text: str) -> None:
        try:
            self.net.send(msg.router, Failure(msg.rid, self.net.node_id, code, text))
        except KeyError:
            log.warning("cannot report failure of %s: its router %s is gone", msg.rid, msg.router)
