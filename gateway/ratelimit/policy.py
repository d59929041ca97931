"""Glue between settings, principals and the rate limiter (`gateway.ratelimit`).

Identities: `key:<name>` for API keys, `ip:<address>` for anonymous callers (auth disabled). Each key's
limits are the settings' defaults unless the key overrides them. A request is admitted against the
requests/min budget (and needs at least one token left); the tokens it really used are debited afterwards.
Refusal → 429 envelope with `retry-after` and `x-ratelimit-*`; a limiter that fails closed → 503.
Token usage is debited off the request path, summed per identity over `TokenLedger.interval_s` (one limiter
call per identity per interval instead of one per request), so a spent token budget is noticed within one
interval.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from gateway.auth import Principal
from gateway.config import GatewaySettings
from gateway.errors import BackendUnavailableError, RateLimitedError
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import Limits, RateLimiter, RateLimitHooks

REMAINING_TOKENS = "x-ratelimit-remaining-tokens"


def key_limits(settings: GatewaySettings) -> tuple[Limits, dict[str, Limits]]:
    """(default limits, per-key overrides by identity) from settings."""
    default = Limits(requests_per_min=settings.requests_per_minute, tokens_per_min=settings.tokens_per_minute)
    overrides = {
        f"key:{k.name}": Limits(
            requests_per_min=k.requests_per_minute or settings.requests_per_minute,
            tokens_per_min=k.tokens_per_minute or settings.tokens_per_minute,
        )
        for k in settings.api_keys
        if k.requests_per_minute or k.tokens_per_minute
    }
    return default, overrides


def build_limiter(settings: GatewaySettings, redis: aioredis.Redis, metrics: GatewayMetrics) -> RateLimiter | None:
    """The shared limiter (on the gateway's Redis pool), or None when rate limits are disabled."""
    if not settings.rate_limit_enabled:
        return None
    default, overrides = key_limits(settings)
    hooks = RateLimitHooks(redis_error=lambda op: metrics.redis_errors.labels(f"ratelimit_{op}").inc())
    return RateLimiter(
        settings.redis_url,
        default=default,
        overrides=overrides,
        fail_open=settings.rate_limit_fail_open,
        timeout_ms=settings.redis_timeout_ms,
        lease_ms=settings.rate_limit_lease_ms,
        metrics=hooks,
        connection_pool=redis.connection_pool,
    )


async def admit(limiter: RateLimiter, principal: Principal, metrics: GatewayMetrics) -> dict[str, str]:
    """Count one request; its rate-limit headers when allowed, else RateLimitedError (or 503 fail-closed)."""
    decision = await limiter.check(principal.identity)
    if decision.allowed:
        return decision.headers()
    metrics.rate_limited.labels(decision.reason or "unknown").inc()
    if decision.reason == "unavailable":
        raise BackendUnavailableError(decision.message, code="rate_limiter_unavailable",
                                      headers=decision.headers())
    raise RateLimitedError(decision.message, headers=decision.headers())


def spend_tokens(headers: dict[str, str], tokens: int) -> None:
    """Lower the remaining-tokens header by what the request just used."""
    remaining = headers.get(REMAINING_TOKENS)
    if remaining is not None and remaining.isdigit():
        headers[REMAINING_TOKENS] = str(max(0, int(remaining) - tokens))


class TokenLedger:
    """Sums token usage per identity and debits it in one limiter call per identity per interval."""

    def __init__(self, limiter: RateLimiter, interval_s: float = 0.05) -> None:
        self.limiter = limiter
        self.interval_s = interval_s
        self._pending: dict[str, int] = {}
        self._flusher: asyncio.Task[None] | None = None

    def add(self, principal: Principal, tokens: int) -> None:
        """Record usage; a flush is scheduled `interval_s` after the first unflushed record."""
        if tokens <= 0:
            return
        self._pending[principal.identity] = self._pending.get(principal.identity, 0) + tokens
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.interval_s)
        self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        """Debit everything recorded so far (the limiter never raises)."""
        pending, self._pending = self._pending, {}
        if pending:
            await asyncio.gather(*(self.limiter.debit_tokens(i, n) for i, n in pending.items()))

    async def close(self) -> None:
        """Flush what is pending; call at shutdown."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.flush()
