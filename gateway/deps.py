"""Dependency providers: routes get clients and services from the app's lifespan state, never from globals."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import Depends, Request

from gateway.auth import ADMIN_SCOPE, Authenticator, Principal
from gateway.backends.base import Backend
from gateway.cache import EmbeddingCache
from gateway.config import GatewaySettings
from gateway.embeddings.service import EmbeddingService
from gateway.kserve.service import KServeProxy
from gateway.limiting import admit
from gateway.metrics import GatewayMetrics
from gateway.models.service import ModelService
from gateway.ratelimit import RateLimiter


@dataclass
class GatewayState:
    """Everything the lifespan creates; stored as `app.state.gateway`."""

    settings: GatewaySettings
    metrics: GatewayMetrics
    authenticator: Authenticator
    backend: Backend
    redis: aioredis.Redis
    embeddings: EmbeddingService
    models: ModelService
    kserve: KServeProxy
    cache: EmbeddingCache | None = None
    limiter: RateLimiter | None = None


def get_state(request: Request) -> GatewayState:
    """The app's lifespan state."""
    return request.app.state.gateway


def get_settings(request: Request) -> GatewaySettings:
    """Settings of this app."""
    return get_state(request).settings


def get_metrics(request: Request) -> GatewayMetrics:
    """This app's metrics registry."""
    return get_state(request).metrics


def get_backend(request: Request) -> Backend:
    """The inference backend (Triton over gRPC)."""
    return get_state(request).backend


def get_redis(request: Request) -> aioredis.Redis:
    """The shared Redis pool."""
    return get_state(request).redis


def get_embedding_service(request: Request) -> EmbeddingService:
    """The embeddings service."""
    return get_state(request).embeddings


def get_model_service(request: Request) -> ModelService:
    """The models service."""
    return get_state(request).models


def get_kserve_proxy(request: Request) -> KServeProxy:
    """The KServe v2 passthrough to Triton's HTTP endpoint."""
    return get_state(request).kserve


def client_ip(request: Request) -> str:
    """The peer address (behind a proxy, configure uvicorn's --forwarded-allow-ips)."""
    return request.client.host if request.client else "unknown"


def get_principal(request: Request) -> Principal:
    """The authenticated caller (401 envelope otherwise)."""
    principal = get_state(request).authenticator.authenticate(
        request.headers.get("authorization"), client_ip(request)
    )
    request.state.principal = principal
    return principal


def require_admin(principal: Principal = Depends(get_principal)) -> Principal:
    """A caller holding the admin scope (403 otherwise)."""
    principal.require(ADMIN_SCOPE)
    return principal


async def rate_limited_principal(request: Request, principal: Principal = Depends(get_principal)) -> Principal:
    """The caller, after the per-key request limit admitted it (429 envelope otherwise).

    The `x-ratelimit-*` headers go into `request.state.response_headers`, which the request-context
    middleware adds to whatever response follows.
    """
    state = get_state(request)
    if state.limiter is not None:
        request.state.response_headers = await admit(state.limiter, principal, state.metrics)
    return principal
