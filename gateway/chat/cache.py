"""Answer cache for deterministic chat requests (temperature 0 or an explicit seed): L1 LRU + Redis.

Key: ``tritonstack:chat:{sha256}`` over the deployment's upstream model (kind and name) and the normalised
request — messages (role, name, text), temperature, top_p, stop (as a list), seed, the effective max tokens
and the penalties; not `user`, `stream` or `stream_options`, so a streamed and a non-streamed request share
an answer (a cached answer replays as a stream when asked). A lookup tries the route's deployments in order
and takes the first hit. `Cache-Control: no-cache` skips the lookup and stores the fresh answer, `no-store`
does neither (the embeddings' semantics, `gateway.cache.control`). Redis calls are guarded: Redis down means
uncached answers, never an error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import orjson
import redis.asyncio as aioredis

from gateway.cache.guard import RedisGuard
from gateway.cache.l1 import LRUCache
from gateway.chat.protocol import ChatCompletionRequest

NAMESPACE = "tritonstack:chat:"


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A complete answer and the usage it cost when it was computed."""

    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    deployment: str

    def pack(self) -> bytes:
        """JSON bytes."""
        return orjson.dumps(asdict(self))

    @classmethod
    def unpack(cls, raw: bytes) -> CachedAnswer | None:
        """Parse; None when malformed (a miss)."""
        try:
            return cls(**orjson.loads(raw))
        except (orjson.JSONDecodeError, TypeError):
            return None


def normalized(request: ChatCompletionRequest, max_tokens: int) -> bytes:
    """The output-determining part of a request, canonical JSON."""
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    return orjson.dumps({
        "messages": [[m.role, m.name, m.text] for m in request.messages],
        "temperature": request.temperature, "top_p": request.top_p, "stop": stop, "seed": request.seed,
        "max_tokens": max_tokens, "min_tokens": request.min_tokens or 0, "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
    }, option=orjson.OPT_SORT_KEYS)


def cache_key(request_digest: bytes, deployment_model: str) -> str:
    """The key of a normalised request answered by `deployment_model` ("kind:upstream model")."""
    digest = hashlib.sha256(deployment_model.encode() + b"\0" + request_digest).hexdigest()
    return NAMESPACE + digest


class ChatCache:
    """Whole answers by key, in a bounded L1 in front of Redis (TTL)."""

    def __init__(self, redis: aioredis.Redis, guard: RedisGuard, *, l1_size: int, ttl_s: int) -> None:
        self.redis = redis
        self.guard = guard
        self.ttl_s = ttl_s
        self.l1: LRUCache[CachedAnswer] = LRUCache(l1_size, ttl_s)

    async def get(self, keys: Sequence[str]) -> CachedAnswer | None:
        """The answer under the first key that has one."""
        for key in keys:
            hit = self.l1.get(key)
            if hit is not None:
                return hit
        if not keys:
            return None
        raw = await self.guard.call("chat_cache_get", lambda: self.redis.mget(list(keys)), None)
        for key, value in zip(keys, raw or [], strict=False):
            answer = CachedAnswer.unpack(value) if value else None
            if answer is not None:
                self.l1.set(key, answer)
                return answer
        return None

    async def put(self, key: str, answer: CachedAnswer, ttl_s: int) -> None:
        """Store in L1 and Redis (guarded)."""
        if ttl_s <= 0:
            return
        self.l1.set(key, answer)
        await self.guard.call("chat_cache_set", lambda: self.redis.set(key, answer.pack(), ex=ttl_s), None)
