"""The Redis side of single-flight: look up and lock, publish and unlock — each one round trip, grouped.

`claim(keys, token)` returns, per key, its cached raw value or whether the lock (``SET NX PX lock_ms`` on
``LOCK_PREFIX + key``) was taken: one script call (`CLAIM`), so a key is locked only when it is absent,
atomically. `publish(keys, values, token)` stores the values and releases the locks still holding `token`
in one pipeline (the SETs run before the release, so a lock loser never sees the lock gone before the value).
Concurrent claims — and concurrent publishes — of one process go together in one call (`GroupCommit`):
a burst of misses costs a round trip per burst, not per request. Redis failures never raise (the guard
returns None: a claim then counts as won without a lock, a publish is skipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from gateway.cache.guard import RedisGuard
from gateway.ratelimit.batching import GroupCommit

T = TypeVar("T")

LOCK_PREFIX = "tritonstack:lock:"

# Per key: its cached value when present, else 1 when the lock was taken for us, 0 when someone else holds it.
# KEYS: n cache keys, then their n lock keys; ARGV: lock ms, then the n lock tokens.
CLAIM = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local value = redis.call('get', KEYS[i])
  if value then
    out[i] = value
  elseif redis.call('set', KEYS[n + i], ARGV[i + 1], 'NX', 'PX', ARGV[1]) then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# Delete each lock only if it still holds its token (a lock that expired and was re-taken by another replica is
# not ours to release). KEYS: lock keys; ARGV: their tokens.
RELEASE = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then n = n + redis.call('del', key) end
end
return n
"""


class RemoteWrites(Protocol[T]):
    """How published values are written to Redis (`EmbeddingCache.queue_remote`)."""

    def queue_remote(self, pipe: Pipeline, keys: Sequence[str], items: Sequence[T]) -> None: ...


@dataclass(frozen=True, slots=True)
class _Claim:
    keys: list[str]
    token: str


@dataclass(frozen=True, slots=True)
class _Publish(Generic[T]):
    keys: list[str]
    values: list[T]  # empty: release only
    token: str


Claimed = list[bytes | int]
"""Per key: the cached raw value (bytes), 1 (lock taken) or 0 (held by someone else)."""


class RedisLocks(Generic[T]):
    """Claims and publishes on one Redis client, guarded and grouped."""

    def __init__(self, redis: aioredis.Redis, guard: RedisGuard, lock_ms: int, writes: RemoteWrites[T]) -> None:
        self.redis = redis
        self.guard = guard
        self.lock_ms = int(lock_ms)
        self.writes = writes
        self._claim_script = redis.register_script(CLAIM)
        self._release_script = redis.register_script(RELEASE)
        self._claims: GroupCommit[_Claim, Claimed | None] = GroupCommit(self._claim_batch)
        self._publishes: GroupCommit[_Publish[T], None] = GroupCommit(self._publish_batch)

    async def claim(self, keys: list[str], token: str) -> Claimed | None:
        """Per key: cached raw value, else whether we took its lock; None when Redis failed."""
        return await self._claims.submit(_Claim(keys, token))

    async def publish(self, keys: list[str], values: list[T], token: str) -> None:
        """Store `values` (none: release only) and release our locks of `keys`."""
        await self._publishes.submit(_Publish(keys, values, token))

    async def held(self, keys: Sequence[str]) -> list[bool]:
        """Whether each key's lock exists (one pipeline); all False when Redis fails."""
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.exists(LOCK_PREFIX + key)
        found = await self.guard.call("poll", pipe.execute, None)
        return [bool(h) for h in found] if found is not None else [False] * len(keys)

    async def _claim_batch(self, claims: list[_Claim]) -> list[Claimed | None]:
        keys = [key for claim in claims for key in claim.keys]
        lock_keys = [LOCK_PREFIX + key for key in keys]
        tokens = [claim.token for claim in claims for _ in claim.keys]
        script = self._claim_script
        raw = await self.guard.call("lock", lambda: script(keys=keys + lock_keys, args=[self.lock_ms, *tokens]),
                                    None)
        if raw is None:
            return [None] * len(claims)
        out, start = [], 0
        for claim in claims:
            out.append(list(raw[start : start + len(claim.keys)]))
            start += len(claim.keys)
        return out

    async def _publish_batch(self, publishes: list[_Publish[T]]) -> list[None]:
        pipe = self.redis.pipeline(transaction=False)
        for publish in publishes:
            if publish.values:
                self.writes.queue_remote(pipe, publish.keys, publish.values)
        lock_keys = [LOCK_PREFIX + key for publish in publishes for key in publish.keys]
        tokens = [publish.token for publish in publishes for _ in publish.keys]
        pipe.evalsha(self._release_script.sha, len(lock_keys), *lock_keys, *tokens)  # after the stores
        results = await self.guard.call("publish", lambda: pipe.execute(raise_on_error=False), None)
        if results is not None and isinstance(results[-1], NoScriptError):  # Redis lost its script cache
            script = self._release_script
            await self.guard.call("unlock", lambda: script(keys=lock_keys, args=tokens), None)
        return [None] * len(publishes)
