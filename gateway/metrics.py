"""Prometheus metrics, one `CollectorRegistry` per app (several apps in one process never clash)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# request latencies: sub-millisecond cache hits up to slow batches
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    """Every metric the gateway exports; `render()` is the /metrics body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "HTTP requests by route template, model and status.",
            ["route", "method", "model", "status"], registry=r,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds", "Time from request start to the last response byte.",
            ["route", "model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds", "Request time minus backend (Triton) time, for backend-served requests.",
            ["route"], buckets=_OVERHEAD_BUCKETS, registry=r,
        )
        self.backend_latency = Histogram(
            "gateway_backend_duration_seconds", "Time spent waiting on the backend per request.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.backend_errors = Counter(
            "gateway_backend_errors", "Backend failures by reason.", ["reason"], registry=r,
        )
        self.in_flight = Gauge("gateway_in_flight_requests", "Requests being served now.", registry=r)
        self.rejected = Counter(
            "gateway_admission_rejected", "Requests refused by admission control.", ["reason"], registry=r,
        )
        self.cache = Counter(
            "gateway_cache_requests", "Embedding requests by cache outcome.", ["result"], registry=r,
        )
        self.cache_items = Counter(
            "gateway_cache_items", "Embedding items by cache outcome.", ["result"], registry=r,
        )
        self.coalesced = Counter(
            "gateway_coalesced_items", "Items served by another request's in-flight backend call.", registry=r,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited", "Requests refused by rate limits.", ["limit"], registry=r,
        )
        self.redis_errors = Counter(
            "gateway_redis_errors", "Redis failures (served without Redis).", ["operation"], registry=r,
        )
        self.embedded_items = Counter(
            "gateway_embedding_items", "Items embedded by the backend (cache misses).", ["model"], registry=r,
        )
        self.tokens = Counter("gateway_tokens", "Prompt tokens served.", ["model"], registry=r)
        self.task_items = Counter(
            "gateway_task_items", "Rerank pairs and classify texts computed by the backend (cache misses).",
            ["task", "model"], registry=r,
        )
        # several Triton endpoints (gateway.backends.pool); the label is the configured gRPC URL
        self.triton_endpoint_in_flight = Gauge(
            "gateway_triton_endpoint_in_flight", "Requests in flight to each Triton endpoint.", ["endpoint"],
            registry=r,
        )
        self.triton_endpoint_healthy = Gauge(
            "gateway_triton_endpoint_healthy", "1 while a Triton endpoint is in rotation, 0 while ejected.",
            ["endpoint"], registry=r,
        )
        self.triton_endpoint_ejections = Counter(
            "gateway_triton_endpoint_ejections", "Triton endpoints taken out of rotation, by cause.",
            ["endpoint", "reason"], registry=r,
        )

        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised (prometheus_client's own lookup takes a lock and validates)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        """The text exposition of this registry."""
        return generate_latest(self.registry)
