"""Dependency providers: routes get clients and services from the app's lifespan state, never from globals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import redis.asyncio as aioredis
from fastapi import Request
from pydantic import BaseModel

from gateway.auth import ADMIN_SCOPE, Authenticator, Principal
from gateway.backends.base import Backend
from gateway.cache import EmbeddingCache
from gateway.cache.control import CacheMode, parse_cache_control
from gateway.chat.service import ChatService
from gateway.classify.protocol import ClassifyRequest
from gateway.classify.service import ClassifyService
from gateway.config import GatewaySettings
from gateway.embeddings.protocol import EmbeddingRequest
from gateway.embeddings.service import EmbeddingService
from gateway.errors import NotFoundError, parse_body
from gateway.http.record import RequestRecord, record_of
from gateway.jobs_api.service import JobsService
from gateway.kserve.service import KServeProxy
from gateway.metrics import GatewayMetrics
from gateway.models.service import ModelService
from gateway.ratelimit import RateLimiter
from gateway.ratelimit.policy import admit
from gateway.rerank.protocol import RerankRequest, TeiRerankRequest
from gateway.rerank.service import RerankService
from gateway.rollout.service import VERSION_HEADER, RolloutService, parse_pin


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
    rerank: RerankService
    classify: ClassifyService
    cache: EmbeddingCache | None = None
    limiter: RateLimiter | None = None
    chat: ChatService | None = None
    jobs: JobsService | None = None
    rollouts: RolloutService | None = None


def state_of(request: Request) -> GatewayState:
    """The app's lifespan state (plain function, for use inside other providers)."""
    return request.app.state.gateway


# Providers are `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool.


async def get_state(request: Request) -> GatewayState:
    """The app's lifespan state."""
    return state_of(request)


async def get_model_service(request: Request) -> ModelService:
    """The models service."""
    return state_of(request).models


async def get_kserve_proxy(request: Request) -> KServeProxy:
    """The KServe v2 passthrough to Triton's HTTP endpoint."""
    return state_of(request).kserve


async def get_chat_service(request: Request) -> ChatService:
    """The chat-completions service (404 envelope when this app has none)."""
    service = state_of(request).chat
    if service is None:
        raise NotFoundError("chat completions are not configured on this gateway", code="chat_not_configured")
    return service


async def get_jobs_service(request: Request) -> JobsService:
    """The background-jobs service (404 envelope when jobs are disabled)."""
    service = state_of(request).jobs
    if service is None:
        raise NotFoundError("background jobs are not enabled on this gateway", code="jobs_not_configured")
    return service


def client_ip(request: Request) -> str:
    """The peer address (behind a proxy, configure uvicorn's --forwarded-allow-ips)."""
    return request.client.host if request.client else "unknown"


def authenticate(request: Request) -> Principal:
    """Resolve the caller from the Authorization header (AuthenticationError → 401 envelope)."""
    principal = state_of(request).authenticator.authenticate(
        request.headers.get("authorization"), client_ip(request)
    )
    return principal


async def admit_request(request: Request, principal: Principal) -> None:
    """Count the request against the caller's limits (RateLimitedError → 429 envelope).

    The `x-ratelimit-*` headers go into the request's record, and the request-context middleware adds them to
    whatever response follows.
    """
    state = state_of(request)
    if state.limiter is not None:
        record_of(request).limit_headers = await admit(state.limiter, principal, state.metrics)


# Providers below call the helpers above directly instead of nesting `Depends`: every nested dependency
# costs a FastAPI resolution step on every request.


async def get_principal(request: Request) -> Principal:
    """The authenticated caller (401 envelope otherwise)."""
    return authenticate(request)


async def require_admin(request: Request) -> Principal:
    """A caller holding the admin scope (401/403 otherwise)."""
    principal = authenticate(request)
    principal.require(ADMIN_SCOPE)
    return principal


async def rate_limited_principal(request: Request) -> Principal:
    """The authenticated caller, after its request limit admitted it (401/429 otherwise)."""
    principal = authenticate(request)
    await admit_request(request, principal)
    return principal


@dataclass(frozen=True, slots=True)
class EmbeddingsCall:
    """Everything `POST /v1/embeddings` needs, resolved as its one dependency."""

    principal: Principal
    service: EmbeddingService
    body: EmbeddingRequest
    mode: CacheMode  # from `Cache-Control`
    pin: str | None  # a model version pinned by `x-tritonstack-model-version`
    record: RequestRecord


async def embeddings_call(request: Request) -> EmbeddingsCall:
    """Authenticate (401), admit (429), then parse the body straight from bytes (400 naming the field)."""
    principal = authenticate(request)
    await admit_request(request, principal)
    body = parse_body(EmbeddingRequest, await request.body())
    headers = request.headers
    return EmbeddingsCall(principal, state_of(request).embeddings, body,
                          parse_cache_control(headers.get("cache-control")), parse_pin(headers.get(VERSION_HEADER)),
                          record_of(request))


@dataclass(frozen=True, slots=True)
class ChatCall:
    """What `POST /v1/chat/completions` needs, resolved as one dependency."""

    principal: Principal
    service: ChatService
    record: RequestRecord


async def chat_call(request: Request) -> ChatCall:
    """The admitted caller (401/429 otherwise) and the chat service (404 when not configured)."""
    principal = authenticate(request)
    await admit_request(request, principal)
    return ChatCall(principal, await get_chat_service(request), record_of(request))


B = TypeVar("B", bound=BaseModel)
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class TaskCall(Generic[B, S]):
    """What a scoring route (`/v1/rerank`, `/rerank`, `/v1/classify`) needs, resolved as its one dependency."""

    principal: Principal
    service: S
    body: B
    mode: CacheMode  # from `Cache-Control`
    pin: str | None  # a model version pinned by `x-tritonstack-model-version`
    record: RequestRecord


async def _task_call(request: Request, model: type[B], service: S) -> TaskCall[B, S]:
    """Authenticate (401), admit (429), then parse the body from bytes (400 naming the field)."""
    principal = authenticate(request)
    await admit_request(request, principal)
    body = parse_body(model, await request.body())
    headers = request.headers
    return TaskCall(principal, service, body, parse_cache_control(headers.get("cache-control")),
                    parse_pin(headers.get(VERSION_HEADER)), record_of(request))


async def rerank_call(request: Request) -> TaskCall[RerankRequest, RerankService]:
    """`POST /v1/rerank`'s dependency."""
    return await _task_call(request, RerankRequest, state_of(request).rerank)


async def tei_rerank_call(request: Request) -> TaskCall[TeiRerankRequest, RerankService]:
    """TEI's `POST /rerank`'s dependency."""
    return await _task_call(request, TeiRerankRequest, state_of(request).rerank)


async def classify_call(request: Request) -> TaskCall[ClassifyRequest, ClassifyService]:
    """`POST /v1/classify`'s dependency."""
    return await _task_call(request, ClassifyRequest, state_of(request).classify)
