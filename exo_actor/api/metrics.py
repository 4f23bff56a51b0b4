"""Prometheus metrics of the gateway (one registry per app, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class GatewayMetrics:
    def __init__(self, in_flight: Callable[[], float]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("exo_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.errors = Counter("exo_errors", "Requests that ended in an error, by kind", ["kind"], registry=r)
        self.prompt_tokens = Counter("exo_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("exo_completion_tokens", "Tokens generated", registry=r)
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
