"""Prometheus metrics of the gateway (one registry per app, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..runtime.generation import GenerationStats


def _zero() -> int:  # a node without a cluster transport (standalone) drops and rejects nothing
    return 0


class GatewayMetrics:
    """The gateway's metrics; the node's own counters are read from the callables at each scrape."""

    def __init__(
        self,
        in_flight: Callable[[], float],
        messages_dropped: Callable[[], int] = _zero,
        beacons_rejected: Callable[[], int] = _zero,
        messages_received: Callable[[], Mapping[str, tuple[int, int]]] = dict,
    ) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("exo_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.errors = Counter("exo_errors", "Requests that ended in an error, by kind", ["kind"], registry=r)
        self.prompt_tokens = Counter("exo_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("exo_completion_tokens", "Tokens generated", registry=r)
        self.cached_tokens = Counter(
            "exo_prompt_tokens_cached", "Prompt tokens taken from the prefix cache (not prefilled)", registry=r
        )
        self.prefilled_tokens = Counter("exo_prompt_tokens_prefilled", "Prompt tokens prefilled", registry=r)
        self.ttft = Histogram(
            "exo_time_to_first_token_seconds",
            "Time from request to its first generated token",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.decode_tps = Histogram(
            "exo_decode_tokens_per_second",
            "Decode speed of each request",
            buckets=(1, 2, 5, 10, 20, 30, 40, 60, 100, 200),
            registry=r,
        )
        Gauge("exo_in_flight_requests", "Requests being generated", registry=r).set_function(in_flight)
        self.decode_passes = Counter("exo_decode_passes", "Ring passes after the prompt", registry=r)
        self.decode_tokens = Counter("exo_decode_pass_tokens", "Tokens those passes produced", registry=r)
        self.draft_tokens = Counter("exo_speculative_draft_tokens", "Tokens drafted for verification", registry=r)
        self.accepted_tokens = Counter(
            "exo_speculative_accepted_tokens", "Drafted tokens the target model accepted", registry=r
        )
        Gauge(
            "exo_speculative_acceptance_rate", "Accepted / drafted tokens since start (0 without drafts)", registry=r
        ).set_function(lambda: _ratio(self.accepted_tokens, self.draft_tokens))
        Gauge(
            "exo_tokens_per_pass", "Tokens per ring pass after the prompt (1 without speculation)", registry=r
        ).set_function(lambda: _ratio(self.decode_tokens, self.decode_passes))
        r.register(_NodeCounters(messages_dropped, beacons_rejected, messages_received))

    def record(self, stats: GenerationStats) -> None:
        """Count one finished request."""
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.completion_tokens.inc(stats.completion_tokens)
        self.cached_tokens.inc(stats.cached_tokens)
        self.prefilled_tokens.inc(stats.prompt_tokens - stats.cached_tokens)
        if stats.completion_tokens:
            self.ttft.observe(stats.time_to_first_token)
        if stats.decode_tokens_per_second:
            self.decode_tps.observe(stats.decode_tokens_per_second)
        if stats.decode_passes:
            self.decode_passes.inc(stats.decode_passes)
            self.decode_tokens.inc(max(0, stats.completion_tokens - 1))
        self.draft_tokens.inc(stats.draft_tokens)
        self.accepted_tokens.inc(stats.accepted_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _NodeCounters(Collector):
    """Counters the node keeps itself (its transport's), exported as they are at scrape time."""

    def __init__(
        self,
        messages_dropped: Callable[[], int],
        beacons_rejected: Callable[[], int],
        messages_received: Callable[[], Mapping[str, tuple[int, int]]],
    ) -> None:
        self.messages_dropped, self.beacons_rejected = messages_dropped, beacons_rejected
        self.messages_received = messages_received

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "exo_messages_dropped",
            "Malformed messages this node's actor socket received and dropped",
            value=self.messages_dropped(),
        )
        yield CounterMetricFamily(
            "exo_beacons_rejected",
            "Discovery beacons dropped for not being signed with this cluster's key",
            value=self.beacons_rejected(),
        )
        received = self.messages_received()
        count = CounterMetricFamily(
            "exo_messages_received", "Messages this node's actor socket received", labels=["kind"]
        )
        size = CounterMetricFamily(
            "exo_message_bytes_received", "Bytes of the messages this node's actor socket received", labels=["kind"]
        )
        for kind, (n, b) in sorted(received.items()):
            count.add_metric([kind], n)
            size.add_metric([kind], b)
        yield count
        yield size


def _ratio(a: Counter, b: Counter) -> float:
    den = b._value.get()
    return a._value.get() / den if den else 0.0
