"""Chat-completion metrics, registered on the app's own registry (`GatewayMetrics.registry`).

Label cardinality stays bounded: `route` and `deployment` come from the routes file, `key` from the
configured API keys ("anonymous" otherwise).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

BREAKER_STATES = ("closed", "open", "half_open")


class ChatMetrics:
    """Fallbacks, breakers, upstream calls, tokens, cost, budgets, cache and PII redaction."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.fallbacks = Counter(
            "gateway_chat_fallbacks", "Deployments passed over (failed or skipped) for a request, by reason.",
            ["route", "deployment", "reason"], registry=r)
        self.upstream_calls = Counter(
            "gateway_chat_upstream_calls", "Upstream chat calls by deployment and outcome (ok or a reason).",
            ["deployment", "outcome"], registry=r)
        self.upstream_latency = Histogram(
            "gateway_chat_upstream_seconds", "Upstream time of successful calls (streams: until the first token).",
            ["deployment"], buckets=_UPSTREAM_BUCKETS, registry=r)
        self.breaker_state = Gauge(
            "gateway_breaker_state", "Circuit breaker state per deployment as this process sees it "
            "(0 closed, 1 open, 2 half-open).", ["deployment"], registry=r)
        self.breaker_transitions = Counter(
            "gateway_breaker_transitions", "Circuit breaker transitions by target state.",
            ["deployment", "state"], registry=r)
        self.tokens = Counter(
            "gateway_chat_tokens", "Chat tokens by API key, public model and kind (prompt or completion).",
            ["key", "model", "kind"], registry=r)
        self.cost = Counter(
            "gateway_chat_cost_usd", "Chat cost in USD by API key and public model.", ["key", "model"], registry=r)
        self.budget_refusals = Counter(
            "gateway_budget_refusals", "Requests refused because the key's budget could not cover them.",
            ["key"], registry=r)
        self.cache = Counter(
            "gateway_chat_cache_requests", "Chat requests by cache outcome (hit, miss, bypass, uncacheable).",
            ["result"], registry=r)
        self.redactions = Counter(
            "gateway_pii_redactions", "PII values replaced by placeholders before leaving the machine, by kind.",
            ["kind"], registry=r)
        self.stream_errors = Counter(
            "gateway_chat_stream_errors", "Client streams ended by an error event after the first token.",
            ["deployment"], registry=r)

        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised (label values here come from configuration: bounded)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def set_breaker(self, deployment: str, state: str) -> None:
        """Record a breaker transition (gauge and counter)."""
        self.breaker_state.labels(deployment).set(BREAKER_STATES.index(state))
        self.breaker_transitions.labels(deployment, state).inc()
