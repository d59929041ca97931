"""Embedding cache: Redis L2 + bounded in-process L1, Cache-Control modes, single-flight.

Typical use per request::

    mode = parse_cache_control(request.headers.get("cache-control"))
    keys = cache.keys(model, version, params, texts)
    cached = await cache.get_keys(keys) if mode.lookup else [None] * len(keys)
    misses = [i for i, item in enumerate(cached) if item is None]

    async def compute(idx: list[int]) -> list[CachedItem]:
        return await infer([texts[misses[j]] for j in idx])  # -> CachedItem per text

    fresh = await flight.run([keys[i] for i in misses], compute, mode=mode)  # publishes to cache
"""

from gateway.cache.control import CacheMode, cache_status, parse_cache_control
from gateway.cache.guard import RedisGuard
from gateway.cache.hooks import CacheHooks
from gateway.cache.keys import NAMESPACE, CachedItem, make_keys, model_prefix, normalize_params
from gateway.cache.locks import LOCK_PREFIX
from gateway.cache.singleflight import ResultStore, SingleFlight
from gateway.cache.store import CacheUnavailableError, EmbeddingCache

__all__ = [
    "LOCK_PREFIX",
    "NAMESPACE",
    "CacheHooks",
    "CacheMode",
    "CacheUnavailableError",
    "CachedItem",
    "EmbeddingCache",
    "RedisGuard",
    "ResultStore",
    "SingleFlight",
    "cache_status",
    "make_keys",
    "model_prefix",
    "normalize_params",
    "parse_cache_control",
]
