"""The worker's clients and services, created in arq's `on_startup` and closed in `on_shutdown`.

Job functions find them in `ctx`: `ctx["runtime"]` (this object), `ctx["triton"]` (the gateway's
`TritonBackend`, or a `TritonPool` over several Triton servers), `ctx["store"]` (the `JobStore` on its own Redis
client) and arq's own `ctx["redis"]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from arq.connections import ArqRedis

from gateway.backends.pool import TritonPool, build_triton
from gateway.backends.triton import TritonBackend
from gateway.cache import EmbeddingCache
from gateway.chat.service import ChatService
from gateway.jobqueue.egress import PublicOnlyResolver
from gateway.jobqueue.store import JobStore
from gateway.tracing import client_trace_configs
from jobs.chunking import ChunkerCache
from jobs.config import WorkerConfig, gateway_settings
from jobs.metrics import WorkerMetrics, serve_metrics

log = logging.getLogger("jobs.runtime")


@dataclass
class Runtime:
    """Everything a job function needs."""

    config: WorkerConfig
    redis: aioredis.Redis
    store: JobStore
    backend: TritonBackend | TritonPool
    arq: ArqRedis
    http: aiohttp.ClientSession
    chunkers: ChunkerCache
    metrics: WorkerMetrics
    cache: EmbeddingCache | None = None
    chat: ChatService | None = None
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    metrics_server: Any = None


def _redis(config: WorkerConfig) -> aioredis.Redis:
    """The store's client: bytes, generous timeouts (results are large values)."""
    return aioredis.Redis.from_url(config.redis_url, decode_responses=False, socket_timeout=config.redis_timeout_s,
                                   socket_connect_timeout=config.redis_timeout_s, max_connections=64)


def _cache(config: WorkerConfig, redis: aioredis.Redis) -> EmbeddingCache | None:
    """The gateway's per-item embedding cache (same keys: jobs and `/v1/embeddings` share entries)."""
    if not config.cache_enabled:
        return None
    return EmbeddingCache(redis, l1_max_items=config.cache_l1_size, ttl_s=config.cache_ttl_s,
                          timeout_ms=config.redis_timeout_s * 1000)


def _chat(redis: aioredis.Redis, backend: TritonBackend | TritonPool) -> ChatService | None:
    """The gateway's chat routing (routes file, fallback, budgets) when its settings are in the environment."""
    settings = gateway_settings()
    if settings is None or settings.routes_file is None:
        return None
    from gateway.chat.factory import build_chat
    from gateway.metrics import GatewayMetrics

    return build_chat(settings, GatewayMetrics(), redis, backend)


def _webhook_session(config: WorkerConfig) -> aiohttp.ClientSession:
    """The webhook client: public addresses only unless `webhook_allow_private` (see gateway.jobqueue.egress)."""
    traced = client_trace_configs()  # a span and `traceparent` per delivery when tracing is on
    if config.webhook_allow_private:
        return aiohttp.ClientSession(trust_env=False, trace_configs=traced)
    return aiohttp.ClientSession(trust_env=False, connector=aiohttp.TCPConnector(resolver=PublicOnlyResolver()),
                                 trace_configs=traced)


def build_runtime(config: WorkerConfig, arq: ArqRedis) -> Runtime:
    """Create the clients (inside the worker's event loop: gRPC and Redis bind to it)."""
    redis = _redis(config)
    backend = build_triton(config.grpc_urls, timeout_s=config.backend_timeout_s, model_info_ttl_s=5.0,
                           health_interval_s=config.triton_health_interval_s)
    metrics = WorkerMetrics()
    rt = Runtime(
        config=config, redis=redis, store=JobStore(redis, queue_name=config.queue_name), backend=backend, arq=arq,
        http=_webhook_session(config), chunkers=ChunkerCache(config.model_repository),
        metrics=metrics, cache=_cache(config, redis), chat=_chat(redis, backend),
    )
    rt.metrics_server = serve_metrics(metrics, config.metrics_host, config.metrics_port)
    return rt


async def close_runtime(rt: Runtime) -> None:
    """Stop background tasks, then close every client."""
    for task in rt.tasks:
        task.cancel()
    for task in rt.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if rt.chat is not None:
        await rt.chat.aclose()
    await rt.http.close()
    await rt.backend.close()
    await rt.redis.aclose()
    if rt.metrics_server is not None:
        rt.metrics_server.shutdown()
