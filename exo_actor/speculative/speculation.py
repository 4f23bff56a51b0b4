"""What the generation loop needs to speculate: the Drafter protocol, the adaptive draft length and
the counters behind the acceptance-rate and tokens-per-pass figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..sampling import SamplingParams


@dataclass
class Proposal:
    """Drafted tokens and, for a model draft, the probabilities they were drawn from."""

    tokens: list[int]
    q: np.ndarray | None  # [len(tokens), V]; None: deterministic (one-hot on each token)


class Drafter(Protocol):
    name: str

    def propose(
        self, request_id: str, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator
    ) -> Proposal:
        """Up to n tokens that may follow `context` (prompt plus accepted tokens)."""
        ...

    def free(self, request_id: str) -> None: ...


def expected_tokens(rate: float, n: int) -> float:
    """Tokens one verification pass yields with n drafts each accepted with probability `rate`:
    (1 - rate^(n+1)) / (1 - rate) (Leviathan et al. 2023, eq. 1)."""
    if rate >= 1.0:
        return n + 1.0
    return (1.0 - rate ** (n + 1)) / (1.0 - rate)


def choose_draft_length(rate: float, max_n: int, pass_seconds: Sequence[float], draft_seconds: float) -> int:
    """The n in 0..max_n with the most tokens per second: expected_tokens(rate, n) over the cost of
    drafting n tokens and verifying n + 1 positions. pass_seconds[k] estimates a pass of k + 1
    positions. Ties go to the shorter draft."""
    best_n, best = 0, 1.0 / max(pass_seconds[0], 1e-9)
    for n in range(1, max_n + 1):
        value = expected_tokens(rate, n) / max(pass_seconds[n] + n * draft_seconds, 1e-9)
        if value > best * 1.02:  # a draft must promise a clear gain over the shorter one
            best_n, best = n, value
    return best_n


@dataclass
class Speculation:
    """A router's speculative decoding: its drafter, settings, cost estimates and counters.

    The generation loops of one router run on one thread, so no locking is needed.
    """

    drafter: Drafter
    max_draft: int = 4
    adaptive: bool = True
    probe_every: int = 16  # passes without drafting before drafting is tried again
    pass_ema: dict[int, float] = field(default_factory=dict)  # positions per pass -> seconds (EMA)
    draft_ema: float = 0.0  # seconds per drafted token (EMA)
    rate_prior: float = 0.6  # acceptance rate a new request starts from: the recent requests' rate
    drafted: int = 0
    accepted: int = 0
    passes: int = 0
    pass_tokens: int = 0
    # the server turned it on by itself (slow links): a request sampled with a seed decodes without it, so
    # that its seed gives the same text whatever the links (speculative sampling keeps the distribution,
    # not the exact sample)
    automatic: bool = False

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.pass_tokens / self.passes if self.passes else 0.0

    def record_pass(self, positions: int, seconds: float, tokens: int) -> None:
        old = self.pass_ema.get(positions)
        self.pass_ema[positions] = seconds if old is None else 0.8 * old + 0.2 * seconds
        self.passes += 1
        self.pass_tokens += tokens

    def record_draft(self, drafted: int, accepted: int, seconds: float | None) -> None:
        """Count a verified draft; `seconds` it took to draft (None: not representative, e.g. the
        request's first draft, which includes the draft model's prompt prefill)."""
        if drafted:
            if seconds is not None:
                per = seconds / drafted
                self.draft_ema = per if not self.draft_ema else 0.8 * self.draft_ema + 0.2 * per
            self.drafted += drafted
            self.accepted += accepted
            self.rate_prior = 0.9 * self.rate_prior + 0.1 * accepted / drafted

    def pass_costs(self, max_n: int) -> list[float]:
        """Estimated seconds of a pass of 1 .. max_n + 1 positions: measured sizes as measured, the
        others from the nearest measured size below, so unmeasured sizes look cheap enough to be
        tried once."""
        known = sorted(self.pass_ema)
        costs = []
        for k in range(1, max_n + 2):
            below = [s for s in known if s <= k]
            src = below[-1] if below else (known[0] if known else None)
            costs.append(self.pass_ema[src] if src is not None else 1.0)
        return costs

    def draft_length(self, rate: float, limit: int, idle_passes: int, probe_every: int | None = None) -> int:
        """How many tokens to draft next for a request whose acceptance estimate is `rate`, after
        `idle_passes` passes without drafting (past `probe_every` of them, try a short draft to
        measure again: drafts may have become good)."""
        max_n = max(0, min(self.max_draft, limit))
        if not self.adaptive or max_n == 0:
            return max_n
        if 1 not in self.pass_ema:
            return 0  # measure a plain pass first: every draft length is weighed against it
        costs = self.pass_costs(max_n)
        n = choose_draft_length(rate, max_n, costs, self.draft_ema)
        if n == 0 and idle_passes >= (probe_every or self.probe_every):
            # probe only if drafting could pay at all: with every draft accepted
            if choose_draft_length(1.0, max_n, costs, self.draft_ema):
                return min(2, max_n)
        return n


@dataclass
class RateEstimate:
    """One request's acceptance rate, a decayed maximum-likelihood estimate: each pass observes
    `accepted` successes in `accepted + 1` trials (a rejection ended it) or `drafted` trials."""

    successes: float
    trials: float

    @classmethod
    def starting_at(cls, rate: float, weight: float = 2.0) -> RateEstimate:
        return cls(rate * weight, weight)

    @property
    def rate(self) -> float:
        return self.successes / self.trials if self.trials else 0.0

    def observe(self, drafted: int, accepted: int, decay: float = 0.8) -> None:
        trials = drafted if accepted == drafted else accepted + 1
        self.successes = decay * self.successes + accepted
        self.trials = decay * self.trials + trials
