"""FailoverRing: the Pipeline a RouterActor drives on a cluster; it outlives the rings under it.

A ring node that dies or is cut off fails the passes in flight on that ring (RingError with a
"ring changed" code). Instead of ending those requests, this pipeline waits for the node's next ring
(the re-plan on the survivors), rebuilds each request's KV caches there by replaying the token ids it
has fed so far (one prefill), and runs the failed pass again. The generation loop above never sees the
failure: its sampler, generator state, detokenizer, stop strings and speculation state are untouched,
so the client gets a pause and then the rest of the text it would have got.

It keeps, per request, the token ids at every position it holds in the KV caches (token ids only: a few
KB per request). A shard that no longer holds a request's positions (it was reloaded: "cache_lost") gets
them replayed on the same ring at once; a pass that failed on a ring the node still uses (a peer re-planned
away and back to the same plan) is tried again on it after SAME_RING_RETRY seconds, with a replay. A request
whose pass failed for its own reason (an invalid request, a shard error) fails as before; so does every
waiting request when the node learns that no ring can hold the model, when no ring is ready within `wait`
seconds, or after MAX_ATTEMPTS tries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..engines import Pass
from ..runtime.generation import PREFILL_CHUNK
from .ring import CACHE_LOST, Answer, RemoteRing, RingError

log = logging.getLogger(__name__)

SAME_RING_RETRY = 1.0  # s before a pass that failed on a ring still current is tried on it again
MAX_ATTEMPTS = 8  # tries of one pass before its request fails (rings changing over and over)


@dataclass
class _Request:
    wire: str  # the id its caches have on the shards: a new one for each replay
    tokens: list[int] = field(default_factory=list)  # the token id at each cached position
    epoch: int = 0  # the ring (attach count) whose shards hold its caches
    adopt: tuple[str, int, bool] | None = None  # an adoption not yet sent (source's wire id, length, copy)
    replays: int = 0


class FailoverRing:
    def __init__(self, ring: RemoteRing, wait: float = 300.0) -> None:
        self.wait = wait  # how long a request waits for the next ring
        self._cond = threading.Condition()
        self._ring: RemoteRing | None = ring
        self._epoch = 1
        self._gave_up: str | None = None
        self._requests: dict[str, _Request] = {}
        self.replays = 0  # passes replayed on a new ring (shown in /v1/cluster)

    # the node's side (event loop) ----------------------------------------------------------------
    @property
    def ring(self) -> RemoteRing | None:
        return self._ring

    def attach(self, ring: RemoteRing) -> None:
        """Continue on `ring` (the next plan's): waiting requests replay their history there."""
        with self._cond:
            self._ring, self._gave_up = ring, None
            self._epoch += 1
            self._cond.notify_all()

    def detach(self, reason: str) -> None:
        """The ring is gone (a re-plan): passes in flight fail over, new ones wait for attach()."""
        with self._cond:
            ring, self._ring = self._ring, None
        if ring is not None:
            ring.fail_all(reason)

    def give_up(self, reason: str) -> None:
        """No ring will come (no plan holds the model, or the node stops): waiting requests fail."""
        with self._cond:
            self._gave_up = reason
            ring, self._ring = self._ring, None
            self._cond.notify_all()
        if ring is not None:
            ring.fail_all(reason)

    # the Pipeline protocol (the router's thread) -------------------------------------------------------
    def forward(self, request_id: str, tokens: np.ndarray, start_pos: int, num_logits: int = 1) -> np.ndarray:
        result = self.forward_batch([Pass(request_id, np.asarray(tokens, dtype=np.int64), start_pos, num_logits)])[0]
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, np.ndarray)  # a Pass without a Sample is answered with its logits
        return result

    def forward_batch(self, passes: Sequence[Pass]) -> list[Answer | Exception]:
        results: list[Answer | Exception | None] = [None] * len(passes)
        todo = list(range(len(passes)))
        deadline = time.monotonic() + self.wait
        failed_on, retry_at = 0, 0.0  # the ring passes last failed on, and when it may be tried again
        for attempt in range(MAX_ATTEMPTS):
            ring, epoch = self._current(deadline, failed_on, retry_at, todo, results)
            if ring is None:
                break
            if epoch == failed_on:  # the same ring again: a shard may have been reloaded, rebuild the caches
                for i in todo:
                    rid = passes[i].request_id
                    self._requests.setdefault(rid, _Request(rid)).epoch = 0
            runnable, retry = [], []
            wired: dict[int, Pass] = {}
            for i in todo:
                try:
                    wired[i] = self._restore(ring, epoch, passes[i])
                    runnable.append(i)
                except RingError as exc:
                    if exc.replayable:
                        retry.append(i)
                    else:
                        results[i] = exc
            try:
                outs = ring.forward_batch([wired[i] for i in runnable]) if runnable else []
            except RingError as exc:  # the ring broke before the passes left
                if not exc.replayable:
                    raise
                outs = [exc] * len(runnable)
            todo, lost_only, reasons = retry, not retry, set()
            for i, out in zip(runnable, outs):
                if isinstance(out, RingError) and out.replayable:
                    todo.append(i)  # again, on the next ring or with a replay on this one
                    reasons.add(f"{out.code}: {out}")
                    lost_only = lost_only and out.code == CACHE_LOST
                else:
                    results[i] = out
                    if not isinstance(out, Exception):
                        self._record(passes[i])
            if not todo:
                break
            # a reloaded shard (cache lost) is retried at once; a changed ring when the next plan's ring
            # is ready, or this one again after a moment if it is still the node's ring (a peer re-planned
            # away and back to the same plan)
            failed_on, retry_at = epoch, time.monotonic() + (0.0 if lost_only else SAME_RING_RETRY)
            log.info("%d pass(es) failed over (attempt %d): replaying (%s)", len(todo), attempt + 1, reasons)
        for i in todo:
            if results[i] is None:
                results[i] = RingError(f"the pass failed {MAX_ATTEMPTS} times on changing rings; retry the request")
        return [r if r is not None else RingError("no ring") for r in results]

    def truncate(self, request_id: str, length: int) -> None:
        req = self._requests.get(request_id)
        if req is not None:
            del req.tokens[length:]
            if req.epoch == self._epoch and self._ring is not None:
                self._ring.truncate(req.wire, length)

    def adopt(self, source: str, request_id: str, length: int) -> int:
        """A prefix-cache hit: the new request starts with `source`'s first `length` positions. On the ring
        that holds `source` the shards take its caches over; on a later ring the positions are replayed."""
        src = self._requests.pop(source, None)  # the router forgot `source`: its caches go to request_id
        if src is None or len(src.tokens) < length:
            if src is not None and src.epoch == self._epoch and self._ring is not None:
                self._ring.free(src.wire)
            return 0  # nothing known to continue from: the request prefills its whole prompt
        self._requests[request_id] = _Request(request_id, src.tokens[:length], src.epoch, (src.wire, length, False))
        return length

    def fork(self, source: str, request_id: str, length: int) -> int:
        """Another choice of `source`'s prompt starts from a copy of its first `length` positions. If the
        copy fails on a shard (source freed meanwhile, or a later ring), the positions are replayed."""
        src = self._requests.get(source)
        if src is None or len(src.tokens) < length:
            return 0
        self._requests[request_id] = _Request(request_id, src.tokens[:length], src.epoch, (src.wire, length, True))
        return length

    def free(self, request_id: str) -> None:
        req = self._requests.pop(request_id, None)
        ring = self._ring
        if ring is not None and (req is None or req.epoch == self._epoch):
            ring.free(req.wire if req is not None else request_id)

    # internals -------------------------------------------------------------------------------------
    def _usable(self, failed_on: int, retry_at: float) -> bool:
        ring = self._ring
        return ring is not None and not ring.broken and (self._epoch != failed_on or time.monotonic() >= retry_at)

    def _current(
        self,
        deadline: float,
        failed_on: int,
        retry_at: float,
        todo: list[int],
        results: list[Answer | Exception | None],
    ) -> tuple[RemoteRing | None, int]:
        """The ring to run on: the next plan's, or the one that just failed once `retry_at` has passed; waits
        while there is none. None when waiting is over (the waiting passes then get the reason)."""
        with self._cond:
            while not self._usable(failed_on, retry_at) and self._gave_up is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ring = self._ring
                if ring is not None and not ring.broken and self._epoch == failed_on:
                    left = min(left, max(0.0, retry_at - time.monotonic()))  # the same ring, after a moment
                self._cond.wait(left)
            if self._usable(failed_on, retry_at) and self._ring is not None:
                return self._ring, self._epoch
            reason = self._gave_up or f"no ring could hold the model within {self.wait:g} s; retry the request"
        for i in todo:
            results[i] = RingError(reason)
        return None, 0

    def _restore(self, ring: RemoteRing, epoch: int, p: Pass) -> Pass:
        """Make the request's caches on `ring` hold its positions before p.start_pos, and return the pass
        as the ring must run it (under the request's wire id): send a pending adoption along, or replay the
        known token ids when the caches were on an earlier ring (or lost).

        A replay runs under a new wire id, and the old one is freed on the ring: a pass of the old id still
        travelling (sent before a node froze, delivered when it resumed under a plan of the same version)
        then finds its id freed, and cannot write into the replayed caches."""
        rid = p.request_id
        req = self._requests.setdefault(rid, _Request(rid, epoch=epoch))
        if req.epoch != epoch:
            history = req.tokens[: p.start_pos]
            if len(history) < p.start_pos:
                raise RingError("the request's earlier positions are unknown here", "invalid_request")
            ring.free(req.wire)
            req.replays += 1
            req.wire, req.adopt = f"{rid}.r{req.replays}", None
            for start in range(0, len(history), PREFILL_CHUNK):
                chunk = np.asarray(history[start : start + PREFILL_CHUNK], dtype=np.int64)
                ring.forward(req.wire, chunk, start, 1)
            req.epoch = epoch
            if history:
                self.replays += 1
                log.info("request %s: %d position(s) replayed on the ring", rid, len(history))
        elif req.adopt is not None:
            source, length, copy = req.adopt
            (ring.fork if copy else ring.adopt)(source, req.wire, length)
            req.adopt = None
        return Pass(req.wire, p.tokens, p.start_pos, p.num_logits, p.sample)

    def _record(self, p: Pass) -> None:
        req = self._requests.get(p.request_id)
        if req is None or len(req.tokens) < p.start_pos:
            return  # (cannot happen: every position a request holds went through here)
        del req.tokens[p.start_pos :]
        req.tokens.extend(int(t) for t in np.asarray(p.tokens).reshape(-1))
