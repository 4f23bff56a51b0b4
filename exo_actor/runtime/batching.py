"""Continuous batching: which requests' passes run together in the next turn.

Every turn the RouterActor runs one batch: the decode step of every request that is decoding (one
token each, or a short speculative block) plus as much prompt as the turn's prefill budget allows.
A long prompt is split into pieces over several turns, so it never stalls the streams already
running for more than one piece (chunked prefill, as in Sarathi-Serve, Agrawal et al. 2024); when
nothing is decoding the budget is larger, since no one waits. New requests join at the next turn,
finished ones leave after theirs. Pure functions over plain data: the actor owns the state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..engines import HIDDEN_STATES, Pass
from ..sampling.decide import UNUSED

MAX_ROWS = 64  # passes per turn (a batched message carries at most this many rows)
PREFILL_IDLE = 512  # prompt tokens per turn when no request is decoding
PREFILL_BUSY = 128  # ... and while others are decoding: bounds the pause a new prompt causes them


@dataclass
class Pending:
    """A pass a request waits on, and how many of its tokens earlier turns already ran."""

    todo: Pass
    done: int = 0

    @property
    def is_prompt(self) -> bool:
        """Only the last positions' logits are wanted, so it can run in pieces (a pass wanting every
        position's hidden states, num_logits == HIDDEN_STATES, runs whole like a decode step)."""
        return HIDDEN_STATES < self.todo.num_logits < len(self.todo.tokens)


@dataclass(frozen=True)
class Piece:
    index: int  # into the pending list
    run: Pass  # what to run this turn
    last: bool  # completes the pending pass: its logits answer the request


def plan_turn(
    pending: Sequence[Pending],
    max_rows: int = MAX_ROWS,
    prefill_idle: int = PREFILL_IDLE,
    prefill_busy: int = PREFILL_BUSY,
) -> list[Piece]:
    """The pieces to run in one turn, in the order of `pending` (callers rotate it for fairness).

    Decode steps all run (up to max_rows); prompts share the prefill budget first come, first
    served, each getting a piece of at most what is left of it. A prompt piece that is not the last
    asks for one logit row (discarded); the last asks for what the pass wanted.
    """
    decoding = [i for i, p in enumerate(pending) if not p.is_prompt][:max_rows]
    budget = prefill_busy if decoding else prefill_idle
    pieces = [Piece(i, pending[i].todo, True) for i in decoding]
    for i, p in enumerate(pending):
        if not p.is_prompt or budget <= 0 or len(pieces) >= max_rows:
            continue
        todo = p.todo
        left = len(todo.tokens) - p.done
        n = min(left, budget)
        if left - n and left - n < todo.num_logits:  # the last piece must hold every wanted position
            n = left - todo.num_logits
        if n <= 0:
            continue
        last = n == left
        run = Pass(
            todo.request_id,
            todo.tokens[p.done : p.done + n],
            todo.start_pos + p.done,
            todo.num_logits if last else 1,
            todo.sample if last else UNUSED,  # a piece before the last yields no token: its answer is unused
        )
        pieces.append(Piece(i, run, last))
        budget -= n
    pieces.sort(key=lambda piece: piece.index)
    return pieces


def micro_batch(waiting: int, free: int, micro_batches: int) -> int:
    """How many of the `free` requests (waiting on a pass, none in flight) the next micro-batch takes,
    when `waiting` requests in all wait on passes and up to `micro_batches` may be in flight.

    Each micro-batch takes its share, ceil(waiting / micro_batches), so that K batches of about equal
    size circulate (a stream of equal batches keeps every shard of the ring equally busy); one batch
    takes everyone.
    """
    if micro_batches <= 1:
        return free
    return min(free, max(1, -(-waiting // micro_batches)))
