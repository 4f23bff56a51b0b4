"""RemoteRing matches each answer to the pass in flight: a late answer for an earlier pass of the same
request (a frozen node that resumed after the request moved on) is dropped, never taken as this pass's."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from exo_actor.actors.ring import RemoteRing, RingError
from exo_actor.engines import Pass
from exo_actor.transport.messages import Failure, Forward, ForwardBatch, Logits, LogitsBatch


class RecordingNet:
    node_id = "router"

    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []

    def send(self, node: str, msg: object) -> None:
        self.sent.append((node, msg))


def row(value: float) -> np.ndarray:
    return np.full((1, 4), value, np.float32)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_a_late_answer_for_an_earlier_position_is_dropped() -> None:
    async def main() -> None:
        net = RecordingNet()
        ring = RemoteRing(net, asyncio.get_running_loop(), 1, ["a", "b"], step_timeout=5)  # type: ignore[arg-type]
        step = asyncio.ensure_future(ring._step(Pass("r", np.array([7]), 5, 1)))
        await settle()
        assert isinstance(net.sent[0][1], Forward) and net.sent[0][1].pos == 5
        ring.on_logits(Logits("r", "b", 4, row(1.0)))  # the answer to the pass at 4, arriving late
        await settle()
        assert not step.done()
        ring.on_logits(Logits("r", "b", 5, row(2.0)))
        assert (await step)[0, 0] == 2.0
        assert ring.pending == {}

    asyncio.run(main())


def test_batched_answers_match_rows_by_position() -> None:
    async def main() -> None:
        net = RecordingNet()
        ring = RemoteRing(net, asyncio.get_running_loop(), 1, ["a"], step_timeout=5)  # type: ignore[arg-type]
        passes = [Pass("x", np.array([1]), 3), Pass("y", np.array([2]), 8)]
        batch = asyncio.ensure_future(ring._batch(passes))
        await settle()
        sent = net.sent[0][1]
        assert isinstance(sent, ForwardBatch) and sent.positions == [3, 8]
        # x's row is late (position 2), y's is current: only y completes
        ring.on_logits_batch(LogitsBatch("a", ["x", "y"], [2, 8], np.vstack([row(1.0), row(2.0)])))
        await settle()
        assert not batch.done() and set(ring.pending) == {"x"}
        ring.on_logits_batch(LogitsBatch("a", ["x"], [3], row(3.0)))
        out = await batch
        assert [o[0, 0] for o in out] == [3.0, 2.0]  # type: ignore[index]

    asyncio.run(main())


def test_a_failure_ends_the_pass_in_flight() -> None:
    async def main() -> None:
        ring = RemoteRing(RecordingNet(), asyncio.get_running_loop(), 1, ["a"], step_timeout=5)  # type: ignore[arg-type]
        step = asyncio.ensure_future(ring._step(Pass("r", np.array([7]), 0, 1)))
        await settle()
        ring.on_failure(Failure("r", "a", "cache_lost", "gone"))
        with pytest.raises(RingError) as err:
            await step
        assert err.value.code == "cache_lost" and err.value.replayable

    asyncio.run(main())
