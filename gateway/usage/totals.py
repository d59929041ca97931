"""Token usage and cost per API key and per public model: Prometheus counters plus Redis totals.

Redis holds all-time totals in hashes ``tritonstack:usage:key:{name}`` and ``tritonstack:usage:model:{name}``
(fields `requests`, `prompt_tokens`, `completion_tokens`, `cost_micro_usd`, `cached`), indexed by two sets, so
every gateway process adds to the same totals; `GET /admin/usage` reads them back. Increments are summed in
memory and written in one pipelined round trip per `flush_interval_s`, off the request path. Writes
are guarded: a Redis outage loses those increments (counted in `gateway_redis_errors`), never fails a request.
"""

from __future__ import annotations

import asyncio
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

    def __init__(self, redis: aioredis.Redis, guard: RedisGuard, metrics: ChatMetrics,
                 flush_interval_s: float = 0.05) -> None:
        self.redis = redis
        self.guard = guard
        self.metrics = metrics
        self.flush_interval_s = flush_interval_s
        self._pending: dict[tuple[str, str], list[int]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def count(self, record: UsageRecord) -> None:
        """Prometheus counters (synchronous, cheap)."""
        m = self.metrics
        m.child(m.tokens, record.key, record.model, "prompt").inc(record.prompt_tokens)
        m.child(m.tokens, record.key, record.model, "completion").inc(record.completion_tokens)
        m.child(m.cost, record.key, record.model).inc(record.cost_micro_usd / 1_000_000)

    def add(self, record: UsageRecord) -> None:
        """Queue the record for the Redis totals (written within `flush_interval_s`)."""
        values = (1, record.prompt_tokens, record.completion_tokens, record.cost_micro_usd, int(record.cached))
        for target in (("key", record.key), ("model", record.model)):
            sums = self._pending.setdefault(target, [0] * len(_FIELDS))
            for i, value in enumerate(values):
                sums[i] += value
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_interval_s)
        self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        """Write everything queued so far (one pipelined round trip; never raises)."""
        pending, self._pending = self._pending, {}
        if not pending:
            return

        async def write() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (kind, name), sums in pending.items():
                    pipe.sadd(f"{KEY_PREFIX}{kind}s", name)
                    for field_name, value in zip(_FIELDS, sums, strict=True):
                        if value:
                            pipe.hincrby(f"{KEY_PREFIX}{kind}:{name}", field_name, value)
                await pipe.execute()

        await self.guard.call("usage_add", write, None)

    async def close(self) -> None:
        """Flush what is queued (shutdown)."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.flush()

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
