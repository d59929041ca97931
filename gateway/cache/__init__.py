"""Embedding cache: Redis L2 + bounded in-process L1, Cache-Control modes, single-flight.

What `EmbeddingService` (gateway/embeddings/service.py) does with it, per request:

1. `parse_cache_control` gives the request's `CacheMode` (default, refresh or bypass).
2. `EmbeddingCache.keys(model, version, params, texts)` names each text's entry; `peek_keys` answers from L1
   at once (no I/O; default mode only).
3. The L1 misses go to `SingleFlight.get(keys, compute, mode=mode)`: a key this process is computing already is
   joined; for the others, one Redis round trip (`gateway.cache.locks`) reads what L2 holds and, in default
   mode, takes the cross-replica lock of each key cached nowhere. `compute(indices)` runs once for the keys
   this process locked; a key another replica locked is polled for until that replica publishes it (computed
   here if its lock lapses first). Callers get their values as soon as they exist; storing them (L1 at once,
   then Redis together with the lock release, in one round trip) happens off their path.
4. `Fetched.cached` counts the keys the cache answered, for `cache_status` (the `x-cache` header).

The worker (jobs/embeddings.py) reads with `get_keys` (L1, then one MGET) and writes with `set_keys`.
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
