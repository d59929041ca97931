"""Build the chat service in the lifespan: routes file, HTTP client, backends, breakers, cache, budgets."""

from __future__ import annotations

import logging

import aiohttp
import redis.asyncio as aioredis

from gateway.backends.base import Backend
from gateway.backends.chat import ChatBackend
from gateway.backends.openai_compat import OpenAICompatBackend
from gateway.backends.triton_chat import TritonChatBackend
from gateway.cache.guard import RedisGuard
from gateway.chat.accounting import Accounting
from gateway.chat.audit import AuditLog
from gateway.chat.cache import ChatCache
from gateway.chat.metrics import ChatMetrics
from gateway.chat.service import ChatService
from gateway.config import GatewaySettings
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter
from gateway.ratelimit.policy import TokenLedger
from gateway.routing.breaker import BreakerStore, CircuitBreaker
from gateway.routing.config import BreakerPolicy, RoutesConfig, load_routes
from gateway.routing.dispatch import Dispatcher
from gateway.routing.table import DeploymentConfig, build_table
from gateway.tracing import client_trace_configs
from gateway.usage.budget import BudgetLedger
from gateway.usage.totals import UsageTotals

log = logging.getLogger("gateway.chat")

_MAX_CONNECTIONS = 512
_L1_SIZE = 2048


def chat_http_session() -> aiohttp.ClientSession:
    """The session every cloud deployment shares (per-request timeouts come from each deployment).

    Must be created inside the running event loop (the lifespan).
    """
    connector = aiohttp.TCPConnector(limit=_MAX_CONNECTIONS, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True,
                                 trace_configs=client_trace_configs())  # a span and `traceparent` per call


def build_chat(settings: GatewaySettings, metrics: GatewayMetrics, redis: aioredis.Redis, triton: Backend,
               limiter: RateLimiter | None = None) -> ChatService:
    """The chat service; an empty route table when no routes file is configured (every model → 404).

    Raises `RoutesConfigError` with a readable reason when the routes file is invalid.
    """
    config = load_routes(settings.routes_file) if settings.routes_file is not None else RoutesConfig()
    chat_metrics = ChatMetrics(metrics.registry)
    guard = RedisGuard(timeout_ms=settings.redis_timeout_ms,
                       on_error=lambda op: metrics.redis_errors.labels(op).inc())
    store = BreakerStore(redis, guard)
    client = chat_http_session()

    def backend_for(name: str, dep: DeploymentConfig) -> ChatBackend:
        if dep.kind == "triton":
            return TritonChatBackend(triton, dep.model)
        key = dep.api_key.get_secret_value() if dep.api_key is not None else None
        return OpenAICompatBackend(client, dep.base_url, key)

    def breaker_for(name: str, dep: DeploymentConfig) -> CircuitBreaker:
        # a deployment shared by several routes takes the breaker policy of the first
        policy = next((r.policy.breaker for r in config.routes.values() if name in r.names), BreakerPolicy())
        chat_metrics.breaker_state.labels(name).set(0)
        return CircuitBreaker(name, policy, store=store, probe_ttl_s=dep.timeout_s + 1.0,
                              on_change=chat_metrics.set_breaker)

    table = build_table(config, backend_for, breaker_for)
    ttls = [r.policy.cache_ttl_s for r in config.routes.values() if r.policy.cache_ttl_s > 0]
    cache = ChatCache(redis, guard, l1_size=_L1_SIZE, ttl_s=min(ttls)) if ttls else None
    budgets = BudgetLedger(redis, guard, settings, registry=metrics.registry)  # + gateway_budget_used_ratio
    accounting = Accounting(metrics=chat_metrics, budgets=budgets,
                            usage=UsageTotals(redis, guard, chat_metrics),
                            audit=AuditLog(include_prompts=config.audit.include_prompts), cache=cache,
                            ledger=TokenLedger(limiter) if limiter is not None else None)
    service = ChatService(table, Dispatcher(chat_metrics), accounting, chat_metrics, http_client=client)
    log.info("chat routes: %s", ", ".join(f"{n} -> {r.names}" for n, r in config.routes.items()) or "none")
    return service

