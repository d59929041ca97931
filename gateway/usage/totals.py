"""Token usage and cost per API key and per public model: Prometheus counters plus Redis totals.

Redis holds all-time totals in hashes ``tritonstack:usage:key:{name}`` and ``tritonstack:usage:model:{name}``
(fields `requests`, `prompt_tokens`, `completion_tokens`, `cost_micro_usd`, `cached`), indexed by two sets, so
every gateway process adds to the same totals; `GET /admin/usage` reads them back. Writes are guarded (a Redis
outage loses those increments, counted in `gateway_redis_errors`, never fails a request).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.cache.guard import RedisGuard
from gateway.chat.metrics import ChatMetrics

KEY_PREFIX = "tritonstack:usage:"
_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cost_micro_usd", "cached")

MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMER_TOKENS = 3


def estimate_tokens(texts: Iterable[str], bytes_per_token: float) -> int:
    """Prompt tokens estimated from text length: UTF-8 bytes / `bytes_per_token`, plus per-message overhead.

    With `bytes_per_token` = 1 (the default) this bounds byte-level BPE tokenizers from above, so a
    reservation never undershoots the real prompt; raise it (≈ 4 for English) for tighter reservations.
    """
    total = REPLY_PRIMER_TOKENS
    for text in texts:
        total += math.ceil(len(text.encode("utf-8")) / bytes_per_token) + MESSAGE_OVERHEAD_TOKENS
    return total


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request's usage, as accounted."""

    key: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_micro_usd: int
    cached: bool = False


class UsageTotals:
    """Counts usage in Prometheus and in Redis (see module docstring)."""

    def __init__(self, redis: aioredis.Redis, guard: RedisGuard, metrics: ChatMetrics) -> None:
        self.redis = redis
        self.guard = guard
        self.metrics = metrics

    def count(self, record: UsageRecord) -> None:
        """Prometheus counters (synchronous, cheap)."""
        m = self.metrics
        m.tokens.labels(record.key, record.model, "prompt").inc(record.prompt_tokens)
        m.tokens.labels(record.key, record.model, "completion").inc(record.completion_tokens)
        m.cost.labels(record.key, record.model).inc(record.cost_micro_usd / 1_000_000)

    async def add(self, record: UsageRecord) -> None:
        """Add to the Redis totals (one pipelined round trip; never raises)."""
        values = (1, record.prompt_tokens, record.completion_tokens, record.cost_micro_usd, int(record.cached))

        async def write() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for kind, name in (("key", record.key), ("model", record.model)):
                    pipe.sadd(f"{KEY_PREFIX}{kind}s", name)
                    for field_name, value in zip(_FIELDS, values, strict=True):
                        if value:
                            pipe.hincrby(f"{KEY_PREFIX}{kind}:{name}", field_name, value)
                await pipe.execute()

        await self.guard.call("usage_add", write, None)

    async def totals(self) -> dict[str, Any] | None:
        """All-time totals by key and by model; None when Redis cannot be read."""

        async def read() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for kind in ("key", "model"):
                names = sorted(n.decode() for n in await self.redis.smembers(f"{KEY_PREFIX}{kind}s"))
                async with self.redis.pipeline(transaction=False) as pipe:
                    for name in names:
                        pipe.hgetall(f"{KEY_PREFIX}{kind}:{name}")
                    rows = await pipe.execute()
                out[f"by_{kind}"] = {name: _row(raw) for name, raw in zip(names, rows, strict=True)}
            return out

        return await self.guard.call("usage_read", read, None)


def _row(raw: dict[bytes, bytes]) -> dict[str, Any]:
    values = {k.decode(): int(v) for k, v in raw.items()}
    row: dict[str, Any] = {f: values.get(f, 0) for f in _FIELDS if f != "cost_micro_usd"}
    row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    row["cost_usd"] = values.get("cost_micro_usd", 0) / 1_000_000
    return row
