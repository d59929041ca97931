"""The gateway application: `create_app(settings)`; clients are created in the lifespan, never at import.

`app_from_env()` is the uvicorn factory (`uvicorn --factory gateway.app:app_from_env`), reading
`TRITONSTACK_GATEWAY_*` from the environment.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from gateway.admission import AdmissionMiddleware
from gateway.auth import Authenticator
from gateway.backends.pool import TritonPool, build_triton
from gateway.backends.triton_http import triton_http_session
from gateway.cache import CachedItem, CacheHooks, EmbeddingCache, SingleFlight
from gateway.chat.factory import build_chat
from gateway.chat.router import admin as chat_admin
from gateway.chat.router import router as chat_router
from gateway.chat.service import ChatService
from gateway.classify.router import router as classify_router
from gateway.classify.service import ClassifyPolicy, ClassifyService
from gateway.config import GatewaySettings
from gateway.deps import GatewayState
from gateway.embeddings.router import route as embeddings_route
from gateway.embeddings.service import EmbeddingPolicy, EmbeddingService
from gateway.errors import install_error_handlers
from gateway.http.responses import OrjsonResponse
from gateway.jobqueue.store import JobStore
from gateway.jobs_api.router import router as jobs_router
from gateway.jobs_api.service import JobPolicy, JobsMetrics, JobsService
from gateway.kserve.router import infer_routes as kserve_infer_routes
from gateway.kserve.router import router as kserve_router
from gateway.kserve.service import KServeProxy
from gateway.metrics import GatewayMetrics
from gateway.middleware import RequestContextMiddleware
from gateway.models.router import router as models_router
from gateway.models.service import ModelService
from gateway.ops.router import PROBE_PATHS, admin
from gateway.ops.router import router as ops_router
from gateway.ratelimit.policy import TokenLedger, build_limiter
from gateway.rerank.router import router as rerank_router
from gateway.rerank.service import RerankPolicy, RerankService
from gateway.rollout.router import admin as rollout_admin
from gateway.rollout.service import RolloutMetrics, RolloutService
from gateway.scoring.runner import ScoringRunner
from gateway.tracing import fastapi_telemetry, flush, start_tracing

log = logging.getLogger("gateway")

CORS_REQUEST_HEADERS = ["authorization", "content-type", "x-request-id", "idempotency-key", "cache-control"]
CORS_EXPOSED_HEADERS = ["x-request-id", "retry-after", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                        "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                        "x-ratelimit-reset-tokens"]
SERVICE_NAME = "tritonstack-gateway"  # OTEL_SERVICE_NAME overrides it


def _redis(settings: GatewaySettings) -> aioredis.Redis:
    """One pool for cache, locks and limits; callers wait for a free connection instead of failing."""
    timeout = settings.redis_timeout_ms / 1000.0
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=False,
    )
    return aioredis.Redis.from_pool(pool)


def _cache(settings: GatewaySettings, redis: aioredis.Redis, metrics: GatewayMetrics
           ) -> tuple[EmbeddingCache | None, SingleFlight[CachedItem]]:
    hooks = CacheHooks(
        redis_error=lambda op: metrics.redis_errors.labels(f"cache_{op}").inc(),
        coalesced=metrics.coalesced.inc,
        remote_wait=metrics.coalesced.inc,
    )
    if not settings.cache_enabled:
        return None, SingleFlight(metrics=hooks)
    cache = EmbeddingCache(redis, l1_max_items=settings.cache_l1_size, ttl_s=settings.cache_ttl_s,
                           timeout_ms=settings.redis_timeout_ms, metrics=hooks)
    return cache, SingleFlight(cache, redis=redis, guard=cache.guard, metrics=hooks)


def _jobs(settings: GatewaySettings, metrics: GatewayMetrics, embeddings: EmbeddingService,
          chat: ChatService | None) -> JobsService | None:
    """The jobs API on its own Redis client (large values: results pages, job inputs)."""
    if not settings.jobs_enabled:
        return None
    timeout = settings.jobs_redis_timeout_ms / 1000.0
    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=False, socket_timeout=timeout,
                                    socket_connect_timeout=timeout)
    service = JobsService(JobStore(redis, queue_name=settings.jobs_queue_name), JobPolicy.from_settings(settings),
                          JobsMetrics(metrics.registry), embeddings=embeddings, chat=chat,
                          metrics_interval_s=settings.jobs_metrics_interval_s)
    service.start()
    return service


def build_state(settings: GatewaySettings, metrics: GatewayMetrics) -> GatewayState:
    """Create every client and service (must run inside the event loop: gRPC and Redis bind to it)."""
    # one pool of keep-alive connections to Triton's HTTP port(s): inference, metadata and the /v2 passthrough
    session = triton_http_session(settings.passthrough_max_connections, settings.backend_timeout_s)
    backend = build_triton(settings.grpc_urls, timeout_s=settings.backend_timeout_s,
                           model_info_ttl_s=settings.model_info_ttl_s, metrics=metrics,
                           health_interval_s=settings.triton_health_interval_s,
                           health_timeout_s=settings.triton_health_timeout_s,
                           coalesce_in_flight=settings.embed_coalesce_in_flight, http_urls=settings.http_urls,
                           session=session)
    redis = _redis(settings)
    cache, flights = _cache(settings, redis, metrics)
    limiter = build_limiter(settings, redis, metrics)
    policy = EmbeddingPolicy(max_items=settings.max_input_items, max_chars=settings.max_input_chars)
    chat = build_chat(settings, metrics, redis, backend, limiter)
    rollouts = RolloutService(settings.rollouts_file, metrics=RolloutMetrics(metrics.registry),
                              check_interval_s=settings.rollouts_check_interval_s)
    ledger = TokenLedger(limiter) if limiter is not None else None
    embeddings = EmbeddingService(backend, metrics=metrics, policy=policy, cache=cache, flights=flights,
                                  ledger=ledger, rollouts=rollouts)
    # rerank and classify share the embeddings' cache, single-flight, token ledger and rollouts
    scoring = ScoringRunner(backend, metrics=metrics, cache=cache, flights=flights, ledger=ledger, rollouts=rollouts)
    return GatewayState(
        settings=settings,
        metrics=metrics,
        authenticator=Authenticator(settings),
        backend=backend,
        redis=redis,
        embeddings=embeddings,
        models=ModelService(backend, started_at=int(time.time())),
        rerank=RerankService(scoring, RerankPolicy(settings.max_input_items, settings.max_input_chars)),
        classify=ClassifyService(scoring, ClassifyPolicy(settings.max_input_items, settings.max_input_chars)),
        kserve=KServeProxy(session, settings.http_urls, backend if isinstance(backend, TritonPool) else None),
        cache=cache,
        limiter=limiter,
        chat=chat,
        jobs=_jobs(settings, metrics, embeddings, chat),
        rollouts=rollouts,
    )


async def close_state(state: GatewayState) -> None:
    """Finish background work, then close every client."""
    await state.embeddings.drain()
    if state.jobs is not None:
        await state.jobs.aclose()
    if state.chat is not None:
        await state.chat.aclose()
    await state.backend.close()
    await state.kserve.aclose()  # closes the HTTP session the backend shares
    if state.limiter is not None:
        await state.limiter.aclose()
    await state.redis.aclose()


def create_app(settings: GatewaySettings) -> FastAPI:
    """The gateway ASGI app for `settings` (its own metrics registry; no I/O until startup)."""
    metrics = GatewayMetrics()
    start_tracing(settings, SERVICE_NAME)  # off (nothing installed) unless an OTLP endpoint is configured
    if settings.auth_disabled:
        log.warning("API key authentication is DISABLED (auth_disabled=true): every caller is admin")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings, metrics)
        app.state.gateway = state
        gc.collect()
        gc.freeze()  # startup objects (routes, models, clients) never need scanning again
        try:
            yield
        finally:
            await close_state(state)
            flush()

    # FastAPI's native OpenTelemetry makes the server spans when tracing is on; metrics are Prometheus
    # (`gateway.metrics`), and when tracing is off it is off entirely (it would look up the global providers on
    # every request to find them unconfigured)
    app = FastAPI(title="tritonstack gateway", version="0.1.0", lifespan=lifespan,
                  default_response_class=OrjsonResponse, telemetry=fastapi_telemetry())
    install_error_handlers(app)
    # the hot routes, ahead of the routers (see gateway.http.direct)
    app.router.routes.extend([embeddings_route, *kserve_infer_routes])
    for router in (chat_router, rerank_router, classify_router, models_router, kserve_router, ops_router, admin,
                   chat_admin, rollout_admin, jobs_router):
        app.include_router(router)
    app.add_middleware(AdmissionMiddleware, max_in_flight=settings.max_in_flight,
                       max_body_bytes=settings.max_body_bytes, retry_after_s=settings.overload_retry_after_s,
                       metrics=metrics, exempt_paths=PROBE_PATHS)
    if settings.cors_origins:  # off by default: browsers get no CORS headers unless origins are listed
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=CORS_REQUEST_HEADERS,
                           expose_headers=CORS_EXPOSED_HEADERS, max_age=600)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)  # added last = outermost
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: settings from `TRITONSTACK_GATEWAY_*`."""
    settings = GatewaySettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return create_app(settings)
