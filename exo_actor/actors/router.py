"""RouterActor: drives generation for many concurrent requests over one pipeline.

Generation runs on one worker thread so the asyncio event loop (HTTP, heartbeats) never waits on it.
The worker batches requests continuously (runtime/batching.py): each turn runs one batched pass holding the
decode step of every running request plus a piece of any new prompt, so simultaneous requests all
progress and share each pass over the weights; requests join and leave between turns. Results flow
back to each request's asyncio queue. Cancelling a request (a client that went away) closes its
generator at the worker's next turn, which frees its KV caches on every shard. An embeddings request
(embed()) runs the same way: each input is a runtime/embedding.py coroutine whose hidden-states passes
share the turns with the generation traffic.

On a ring of N nodes one batch in flight leaves N-1 nodes idle. With `micro_batches` K > 1 the worker
splits the running requests into up to K micro-batches and keeps them all in flight at once (each waits
for its answer on a pool thread; the worker goes on with the others): while shard 2 runs micro-batch A,
shard 1 runs B (GPipe's micro-batches, Huang et al. 2019, applied to decode steps). A request belongs to
at most one micro-batch in flight, so its passes still run one after another, and its output is exactly
what one batch gives: every row of a batched pass is computed as if alone.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..engines import Pass
from ..errors import ExoError
from ..runtime.batching import MAX_ROWS, Pending, Piece, micro_batch, plan_turn
from ..runtime.embedding import Embedded, embedding
from ..runtime.generation import Delta, Pipeline, generation
from ..runtime.prefix_cache import PrefixCache
from ..sampling import SamplingParams
from ..sampling.decide import Decision
from ..speculative import Speculation
from ..tokenizer import TextTokenizer

log = logging.getLogger(__name__)


class _ForgetPrefixes:
    """Inbox command: the pipeline continues on another ring; the caches kept as prefixes are gone."""


_FORGET_PREFIXES = _ForgetPrefixes()


class OverloadedError(ExoError):
    """More requests than --max-concurrent are in flight."""


EMBED_WINDOW = 8  # inputs of one embeddings request in the router at once: the rest wait their turn

# a request's coroutine: generation() (yields Deltas) or embedding() (yields one Embedded)
Work = Generator[Pass | Delta | Embedded, np.ndarray | Decision | None, None]


@dataclass
class _Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams | None  # None: an embedding
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Delta | Embedded | BaseException | None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    pooling: str = "mean"  # an embedding's (runtime/embedding.py)
    fork: str | None = None  # a running request with the same prompt: start from a copy of its caches


@dataclass
class _Active:
    req: _Request
    gen: Work
    pending: Pending | None = None  # the pass it waits on (None: between passes)


@dataclass
class _Batch:
    """A micro-batch: the pieces one turn runs, the requests they belong to, and (once back) the results."""

    pieces: list[Piece]
    waiting: list[tuple[_Active, Pending]]
    results: list[np.ndarray | Exception] = field(default_factory=list)


class GenerationStream:
    """The async side of one request: iterate it for Deltas; cancel() to stop early."""

    def __init__(self, req: _Request, on_done: Callable[[str], None]) -> None:
        self._req = req
        self._on_done = on_done
        self.request_id = req.request_id

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delta]:
        try:
            while True:
                item = await self._req.out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Delta)
                yield item
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop generating (idempotent); the worker frees the request's caches."""
        if not self._req.cancelled.is_set():
            self._req.cancelled.set()
            self._on_done(self.request_id)


class RouterActor:
    """Schedules requests onto a pipeline from a worker thread; see the module docstring."""

    def __init__(
        self,
        pipeline: Pipeline,
        tokenizer: TextTokenizer,
        context_length: int,
        max_concurrent: int = 8,
        speculation: Speculation | None = None,
        prefix_cache_tokens: int = 0,
        micro_batches: int = 1,
    ) -> None:
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be at least 1, got {micro_batches}")
        self.pipeline, self.tokenizer, self.context_length = pipeline, tokenizer, context_length
        # micro-batches in flight at once (1: one batch, run on the worker thread itself); more need a
        # pipeline whose forward_batch may be called from several threads at once (RemoteRing, FailoverRing)
        self.micro_batches = micro_batches
        self.follow_ring = False  # set by the cluster when micro_batches is one per ring node (the default)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self.speculation = speculation
        # finished requests' KV caches kept for the next chat turn (used on the worker thread only)
        self.prefix = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 else None
        self.max_concurrent = max_concurrent
        # new requests, commands, and micro-batches back from the pool
        self._inbox: queue.SimpleQueue[_Request | _ForgetPrefixes | _Batch | None] = queue.SimpleQueue()
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.tokens_generated = 0
        self.passes = 0  # batched passes run (turns)
        self.batched_rows = 0  # request passes they carried: / passes = the mean batch size
        self.flying = 0  # micro-batches in flight now
        self.most_flying = 0  # ... and the most at once so far
        self._recent: list[tuple[float, int]] = []  # (time, tokens) of the last seconds, for tok/s

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="exo-router", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def ring_changed(self, nodes: int | None = None) -> None:
        """The pipeline continues on another ring (of `nodes` nodes): the finished requests' caches kept as
        prefixes are gone. A router that keeps one micro-batch per node follows the new ring's length."""
        if nodes is not None and self.follow_ring:
            self.micro_batches = max(1, nodes)
        self._inbox.put(_FORGET_PREFIXES)

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, fork: str | None = None) -> GenerationStream:
        """Queue a request; raises OverloadedError when max_concurrent requests are in flight. `fork`: the
        id of a stream with the same prompt that has produced a Delta (its prompt is prefilled): this one
        copies its caches instead of prefilling them again (the choices of an n > 1 request)."""
        rid = self._admission()
        req = _Request(rid, list(prompt_ids), params, asyncio.get_running_loop(), asyncio.Queue(), fork=fork)
        self._inbox.put(req)
        return GenerationStream(req, self._done)

    async def embed(self, inputs: Sequence[Sequence[int]], pooling: str = "mean") -> list[Embedded]:
        """The embeddings of several inputs (runtime/embedding.py), as one request for admission
        (OverloadedError when max_concurrent are in flight). Their passes go through the same turns as
        the generation traffic, up to EMBED_WINDOW inputs at a time; cancelling this frees their caches."""
        rid = self._admission()
        loop, stop = asyncio.get_running_loop(), threading.Event()  # stop: ends every input still running
        results: list[Embedded] = []
        reqs = [
            _Request(f"{rid}.{i}", list(ids), None, loop, asyncio.Queue(), stop, pooling)
            for i, ids in enumerate(inputs)
        ]
        try:
            for req in reqs[:EMBED_WINDOW]:
                self._inbox.put(req)
            for i, req in enumerate(reqs):  # as each input is done, the next one joins
                item = await req.out.get()
                if isinstance(item, BaseException):
                    raise item
                if not isinstance(item, Embedded):
                    raise ExoError(f"embedding {req.request_id} ended without a result")
                results.append(item)
                if i + EMBED_WINDOW < len(reqs):
                    self._inbox.put(reqs[i + EMBED_WINDOW])
            return results
        finally:
            stop.set()
            self._done(rid)

    def _admission(self) -> str:
        """A new request's id, counted in flight; OverloadedError when max_concurrent already are."""
        with self._lock:
            if len(self._in_flight) >= self.max_concurrent:
                raise OverloadedError(
                    f"the server is busy: {self.max_concurrent} requests are in flight (--max-concurrent)"
                )
            rid = uuid.uuid4().hex
            self._in_flight.add(rid)
        return rid

    def tokens_per_second(self, window: float = 5.0) -> float:
        """Generated tokens per second over the last `window` seconds."""
        now = time.monotonic()
        with self._lock:
            self._recent = [(t, n) for t, n in self._recent if now - t <= window]
            return sum(n for _, n in self._recent) / window

    def speculation_info(self) -> dict[str, object] | None:
        """The draft in use and its figures so far (None without speculative decoding)."""
        spec = self.speculation
        if spec is None:
            return None
        return {
            "draft": spec.drafter.name,
            "max_draft_tokens": spec.max_draft,
            "adaptive": spec.adaptive,
            "drafted_tokens": spec.drafted,
            "accepted_tokens": spec.accepted,
            "acceptance_rate": round(spec.acceptance_rate, 4),
            "passes": spec.passes,
            "pass_tokens": spec.pass_tokens,
            "tokens_per_pass": round(spec.tokens_per_pass, 3),
        }

    def batching_info(self) -> dict[str, float]:
        """Continuous batching so far: turns run, request passes they carried, the mean per turn, and the
        micro-batches in flight (allowed, now, the most at once)."""
        with self._lock:
            turns, rows = self.passes, self.batched_rows
            flying, most = self.flying, self.most_flying
        return {
            "turns": turns,
            "rows": rows,
            "mean_rows_per_turn": round(rows / turns, 3) if turns else 0.0,
            "micro_batches": self.micro_batches,
            "micro_batches_in_flight": flying,
            "most_micro_batches_in_flight": most,
        }

    def prefix_cache_info(self) -> dict[str, int] | None:
        """Entries, tokens kept, budget, hits, misses and reused tokens (None when disabled)."""
        return self.prefix.info() if self.prefix is not None else None

    def _done(self, request_id: str) -> None:
        with self._lock:
            self._in_flight.discard(request_id)

    def _deliver(self, req: _Request, item: Delta | Embedded | BaseException | None) -> None:
        try:
            req.loop.call_soon_threadsafe(req.out.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown)
            req.cancelled.set()

    def _run(self) -> None:
        active: dict[str, _Active] = {}  # in arrival order
        busy: set[str] = set()  # requests with a pass in a micro-batch in flight
        turn = 0
        while True:
            # block only when there is nothing to start: then a new request or a batch coming back wakes us
            block = not any(a.pending is not None and rid not in busy for rid, a in active.items())
            block = block or self.flying >= self.micro_batches
            try:
                while True:
                    item = self._inbox.get(block=block)
                    block = False
                    if isinstance(item, _Batch):
                        self._landed(item, active, busy)
                        continue
                    if isinstance(item, _ForgetPrefixes):
                        for rid in self.prefix.clear() if self.prefix is not None else []:
                            self.pipeline.free(rid)
                        continue
                    if item is None:
                        self._shut(active)
                        return
                    self._admit(item, active)
            except queue.Empty:
                pass
            for rid, a in list(active.items()):
                if a.req.cancelled.is_set() and rid not in busy:  # a request in flight ends when it lands
                    a.gen.close()  # runs generation()'s finally: frees the caches
                    del active[rid]
            while self.flying < self.micro_batches:
                batch = self._next_batch(active, busy, turn)
                turn += 1
                if batch is None:
                    break
                if self.micro_batches == 1:  # one batch: run it here, then look at the inbox again
                    batch.results = self._forward(batch.pieces)
                    self._landed(batch, active, busy, flew=False)
                    break
                busy.update(p.run.request_id for p in batch.pieces)
                with self._lock:
                    self.flying += 1
                    self.most_flying = max(self.most_flying, self.flying)
                self._submit(batch)

    def _admit(self, req: _Request, active: dict[str, _Active]) -> None:
        gen: Work
        if req.params is None:
            gen = embedding(self.pipeline, req.prompt_ids, self.context_length, req.pooling, req.request_id)
        else:
            gen = generation(
                self.pipeline,
                self.tokenizer,
                req.prompt_ids,
                req.params,
                self.context_length,
                req.request_id,
                self.speculation,
                self.prefix,
                req.fork,
            )
        a = active[req.request_id] = _Active(req, gen)
        self._advance(a, None, active)  # up to its first pass

    def _shut(self, active: dict[str, _Active]) -> None:
        for a in active.values():
            a.gen.close()
            self._deliver(a.req, ExoError("the server is shutting down or re-planning; retry"))
            self._done(a.req.request_id)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def _next_batch(self, active: dict[str, _Active], busy: set[str], turn: int) -> _Batch | None:
        """The next micro-batch: the requests waiting on a pass and not in flight, up to their share
        (runtime/batching.micro_batch); None when there is nothing to run."""
        order = list(active.values())  # arrival order: prompts are prefilled first come, first served
        if len(order) > MAX_ROWS:  # more than a turn holds: rotate, so that every request gets turns
            k = turn % len(order)
            order = order[k:] + order[:k]
        waiting_all = [a for a in order if a.pending is not None]
        free = [a for a in waiting_all if a.req.request_id not in busy]
        chosen = free[: micro_batch(len(waiting_all), len(free), self.micro_batches)]
        waiting = [(a, a.pending) for a in chosen if a.pending is not None]
        pieces = plan_turn([pending for _, pending in waiting])
        return _Batch(pieces, waiting) if pieces else None

    def _forward(self, pieces: list[Piece]) -> list[np.ndarray | Exception]:
        try:
            return self.pipeline.forward_batch([p.run for p in pieces])
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: so did each of its requests
            if not isinstance(exc, ExoError):
                log.exception("batched pass failed")
            return [exc] * len(pieces)

    def _submit(self, batch: _Batch) -> None:
        if self._pool is None or self._pool_size < self.micro_batches:  # first, or the ring grew
            if self._pool is not None:
                self._pool.shutdown(wait=False)  # its batches in flight finish; it takes no more
            self._pool_size = self.micro_batches
            self._pool = ThreadPoolExecutor(self._pool_size, thread_name_prefix="exo-micro-batch")
        self._pool.submit(self._fly, batch)

    def _fly(self, batch: _Batch) -> None:
        """On a pool thread: run a micro-batch and hand it back to the worker."""
        batch.results = self._forward(batch.pieces)
        self._inbox.put(batch)

    def _landed(self, batch: _Batch, active: dict[str, _Active], busy: set[str], flew: bool = True) -> None:
        """A micro-batch's results are in: advance each of its requests."""
        with self._lock:
            self.passes += 1
            self.batched_rows += len(batch.pieces)
            if flew:
                self.flying -= 1
        for piece, result in zip(batch.pieces, batch.results):
            a, pending = batch.waiting[piece.index]
            busy.discard(a.req.request_id)
            if a.req.request_id not in active:
                continue
            if isinstance(result, Exception):
                self._fail(a, result, active)
            elif piece.last:
                a.pending = None
                self._advance(a, result, active)
            else:
                pending.done += len(piece.run.tokens)

    def _advance(self, a: _Active, logits: np.ndarray | None, active: dict[str, _Active]) -> None:
        """Resume a request's generation with the logits it waited for; deliver its text up to its
        next pass (or its end)."""
        try:
            item = a.gen.send(logits) if logits is not None else next(a.gen)
            while isinstance(item, Delta):
                if item.token_ids:
                    with self._lock:
                        self.tokens_generated += len(item.token_ids)
                        self._recent.append((time.monotonic(), len(item.token_ids)))
                self._deliver(a.req, item)
                if item.finish_reason is not None:
                    a.gen.close()  # frees the caches (or keeps them as a prefix) here, not in the GC
                    self._finish(a, None, active)
                    return
                item = next(a.gen)
            if isinstance(item, Embedded):  # an embedding's result: its caches are already freed
                self._deliver(a.req, item)
                a.gen.close()
                self._finish(a, None, active)
                return
        except StopIteration:
            self._finish(a, None, active)
            return
        except Exception as exc:  # noqa: BLE001 - reported to the request, the worker lives on
            self._fail(a, exc, active)
            return
        a.pending = Pending(item)

    def _fail(self, a: _Active, exc: BaseException, active: dict[str, _Active]) -> None:
        if not isinstance(exc, ExoError):
            log.error("request %s failed", a.req.request_id, exc_info=exc)
        a.gen.close()  # frees its caches
        self._finish(a, exc, active)

    def _finish(self, a: _Active, exc: BaseException | None, active: dict[str, _Active]) -> None:
        self._deliver(a.req, exc)  # None: the end of the stream
        active.pop(a.req.request_id, None)
        self._done(a.req.request_id)
