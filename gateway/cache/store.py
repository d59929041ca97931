"""`EmbeddingCache`: per-item embedding cache, bounded in-process L1 in front of Redis L2."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from gateway.cache.guard import RedisGuard
from gateway.cache.hooks import CacheHooks
from gateway.cache.keys import CachedItem, Params, make_keys, model_prefix
from gateway.cache.l1 import LRUCache


class CacheUnavailableError(RuntimeError):
    """Redis could not be reached for an operation that must report failure (`clear_model`)."""


class EmbeddingCache:
    """Per-item cache of embeddings keyed by (model, served version, params, text).

    Reads check L1 then issue one MGET for the rest (filling L1 from L2 hits); writes fill L1 and
    pipeline ``SET key value EX ttl_s``. Redis failures and timeouts never raise from reads or
    writes: reads become misses, writes are skipped, `hooks.redis_error` is called, and Redis is
    skipped for `breaker_cooldown_s` afterwards. `redis=None` gives an L1-only cache.

    The Redis client must return bytes (``decode_responses=False``).
    """

    def __init__(
        self,
        redis: aioredis.Redis | None,
        *,
        l1_max_items: int,
        ttl_s: int,
        timeout_ms: float,
        metrics: CacheHooks | None = None,
        l1_ttl_s: float | None = None,
        breaker_cooldown_s: float = 1.0,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        if redis is not None and redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("EmbeddingCache needs a Redis client with decode_responses=False")
        self.redis = redis
        self.ttl_s = int(ttl_s)
        self.hooks = metrics if metrics is not None else CacheHooks()
        self.guard = RedisGuard(timeout_ms=timeout_ms, cooldown_s=breaker_cooldown_s,
                                on_error=self.hooks.redis_error)
        self.l1: LRUCache[CachedItem] = LRUCache(l1_max_items, ttl_s if l1_ttl_s is None else l1_ttl_s)

    # --- keyed by (model, version, params, text) -------------------------------------------

    @staticmethod
    def keys(model: str, version: str | int, params: Params, texts: Sequence[str]) -> list[str]:
        """The cache key of each text (stable across processes)."""
        return make_keys(model, version, params, texts)

    # --- keyed by precomputed keys (used by SingleFlight) ----------------------------------

    def peek_keys(self, keys: Sequence[str]) -> list[CachedItem | None]:
        """L1 only, no I/O."""
        return [self.l1.get(key) for key in keys]

    async def get_keys(self, keys: Sequence[str]) -> list[CachedItem | None]:
        """L1 first, then one MGET for the L1 misses; L2 hits are copied into L1."""
        found = self.peek_keys(keys)
        missing = [i for i, item in enumerate(found) if item is None]
        if not missing or self.redis is None:
            return found
        redis, wanted = self.redis, [keys[i] for i in missing]
        raw = await self.guard.call("get", lambda: redis.mget(wanted), None)
        if raw is not None:
            for i, item in zip(missing, self.load_remote(wanted, raw), strict=True):
                found[i] = item
        return found

    def load_remote(self, keys: Sequence[str], raw: Sequence[bytes | None]) -> list[CachedItem | None]:
        """Decode values read from Redis (None or malformed → None), copying them into L1."""
        items: list[CachedItem | None] = []
        for key, value in zip(keys, raw, strict=True):
            item = CachedItem.unpack(value) if isinstance(value, bytes) else None
            if item is not None:
                self.l1.set(key, item)
            items.append(item)
        return items

    def put_local(self, keys: Sequence[str], items: Sequence[CachedItem]) -> None:
        """Fill L1 only (synchronous)."""
        for key, item in zip(keys, items, strict=True):
            self.l1.set(key, item)

    async def put_remote(self, keys: Sequence[str], items: Sequence[CachedItem]) -> None:
        """Pipeline ``SET key value EX ttl`` for every item; skipped silently when Redis is down."""
        if self.redis is None or not keys:
            return
        pipe = self.redis.pipeline(transaction=False)
        self.queue_remote(pipe, keys, items)
        await self.guard.call("set", pipe.execute, None)

    def queue_remote(self, pipe: Pipeline, keys: Sequence[str], items: Sequence[CachedItem]) -> None:
        """Add the Redis writes of `put_remote` to `pipe` (a caller's pipeline, e.g. with an unlock)."""
        for key, item in zip(keys, items, strict=True):
            pipe.set(key, item.pack(), ex=self.ttl_s)

    async def set_keys(self, keys: Sequence[str], items: Sequence[CachedItem]) -> None:
        """Fill L1, then Redis."""
        self.put_local(keys, items)
        await self.put_remote(keys, items)

    # --- administration ------------------------------------------------------------------

    async def clear_model(self, model: str) -> int:
        """Delete every entry of `model` (all versions and parameters) from Redis and this L1.

        Returns the number of Redis keys unlinked. Other processes' L1 entries expire after their
        L1 TTL. Raises `CacheUnavailableError` when Redis fails mid-way (L1 is cleared anyway).
        """
        prefix = model_prefix(model)
        self.l1.delete_prefix(prefix)
        if self.redis is None:
            return 0
        try:
            return await self._unlink_matching(self.redis, prefix + "*")
        except Exception as exc:
            self.guard.trip("clear", exc)
            raise CacheUnavailableError(f"could not clear the cache of {model!r}: {exc}") from exc

    async def _unlink_matching(self, redis: aioredis.Redis, pattern: str) -> int:
        removed, cursor = 0, 0
        while True:
            async with asyncio.timeout(self.guard.timeout_s):
                cursor, batch = await redis.scan(cursor, match=pattern, count=1000)
            if batch:
                async with asyncio.timeout(self.guard.timeout_s):
                    removed += int(await redis.unlink(*batch))
            if cursor == 0:
                return removed

