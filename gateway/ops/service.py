"""Operations: readiness of the gateway's dependencies and cache administration. No FastAPI here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.backends.base import Backend, valid_model_name
from gateway.cache import CacheUnavailableError, EmbeddingCache
from gateway.errors import BackendUnavailableError, InvalidRequestError


@dataclass(frozen=True)
class Readiness:
    """Whether Triton and Redis answer."""

    triton: bool
    redis: bool

    @property
    def ready(self) -> bool:
        """Both dependencies are reachable."""
        return self.triton and self.redis


async def redis_ok(redis: aioredis.Redis, timeout_s: float) -> bool:
    """True when Redis answers PING within `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            return bool(await redis.ping())
    except Exception:  # any client, protocol or timeout error: not reachable
        return False


async def readiness(backend: Backend, redis: aioredis.Redis, timeout_s: float = 1.0) -> Readiness:
    """Check Triton and Redis concurrently."""
    triton, cache = await asyncio.gather(backend.ready(), redis_ok(redis, timeout_s))
    return Readiness(triton=triton, redis=cache)


def require_ready(state: Readiness) -> None:
    """BackendUnavailableError (503) naming what is down."""
    if not state.ready:
        down = [name for name, ok in (("triton", state.triton), ("redis", state.redis)) if not ok]
        raise BackendUnavailableError(f"not ready: {', '.join(down)} unreachable", code="not_ready")


async def clear_cache(cache: EmbeddingCache | None, model: str) -> int:
    """Delete every cached embedding of `model`; the number of Redis entries removed."""
    if not valid_model_name(model):
        raise InvalidRequestError(f"invalid model name '{model}'", param="model")
    if cache is None:
        raise InvalidRequestError("the cache is disabled", code="cache_disabled")
    try:
        return await cache.clear_model(model)
    except CacheUnavailableError:
        raise BackendUnavailableError("the cache's Redis is unreachable; nothing was cleared there",
                                      code="cache_unavailable") from None
