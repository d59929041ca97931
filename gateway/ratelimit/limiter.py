"""`RateLimiter`: per-identity requests/min and tokens/min shared through Redis (sliding window counter).

Built on the `limits` library's async Redis storage (redis-py implementation) and its sliding-window
counters. An admission check is at most one Redis round trip: one Lua script (`gateway.ratelimit.window.CHECK`) reads
both windows, counts the request and returns what the headers need — the library's strategy API would take
three round trips (two window reads and the hit). Checks made while a script call is in flight go together in
the next call (`GroupCommit`), so under load many requests share a round trip, and a busy key leases a few
requests at a time (`gateway.ratelimit.lease`: bounded, adaptive, never more than the limit), so most of its
requests need no round trip at all. Token debits, off the request
path, use the library's `SlidingWindowCounterRateLimiter` on the same keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string
from limits.util import WindowStats

from gateway.cache.guard import RedisGuard
from gateway.ratelimit.batching import GroupCommit
from gateway.ratelimit.decision import Limits, RateLimitDecision, retry_after
from gateway.ratelimit.lease import Leases
from gateway.ratelimit.window import CHECK, FIGURES, REQUESTS_SPENT, TOKENS_SPENT, Window, window_keys

KEY_PREFIX = "tritonstack:rl"
PERIOD_S = 60  # every limit is per minute
PERIOD_MS = PERIOD_S * 1000
_MAX_CACHED_KEYS = 10_000


def _noop(_op: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class RateLimitHooks:
    """`redis_error(op)`: a Redis call of the limiter failed or timed out (op "check" or "debit")."""

    redis_error: Callable[[str], None] = _noop


@lru_cache(maxsize=1024)
def _items(limits: Limits) -> tuple[RateLimitItem | None, RateLimitItem | None]:
    """The library's (requests, tokens) per-minute items for `limits`; None where unlimited."""
    req = RateLimitItemPerMinute(limits.requests_per_min, namespace="requests") if limits.requests_per_min else None
    tok = RateLimitItemPerMinute(limits.tokens_per_min, namespace="tokens") if limits.tokens_per_min else None
    return req, tok


def async_storage_uri(uri: str) -> str:
    """Accept a plain ``redis://``/``rediss://``/``redis+unix://`` URL as well as ``async+redis://``."""
    return uri if uri.startswith("async+") else f"async+{uri}"


class RateLimiter:
    """Per-identity limits (API key, or client IP when anonymous), shared by every gateway process.

    `check` counts the request and refuses it when either budget is spent; `debit_tokens` records
    real token usage after the response. Redis failures never raise: with `fail_open` (default)
    requests are allowed without headers, otherwise refused with reason "unavailable". Every
    Redis interaction is bounded by `timeout_ms`; after a failure Redis is skipped for
    `breaker_cooldown_s`. Extra keyword arguments go to the redis-py client (e.g.
    ``connection_pool=`` to share the gateway's pool).
    """

    def __init__(
        self,
        storage_uri: str,
        *,
        default: Limits,
        overrides: Mapping[str, Limits] | None = None,
        fail_open: bool = True,
        timeout_ms: float = 50.0,
        metrics: RateLimitHooks | None = None,
        key_prefix: str = KEY_PREFIX,
        breaker_cooldown_s: float = 1.0,
        lease_ms: float = 100.0,
        **storage_options: float | str | bool | object,
    ) -> None:
        self.default = default
        self._overrides: dict[str, Limits] = dict(overrides or {})
        self.fail_open = fail_open
        self.hooks = metrics if metrics is not None else RateLimitHooks()
        self.guard = RedisGuard(timeout_ms=timeout_ms, cooldown_s=breaker_cooldown_s,
                                on_error=self.hooks.redis_error)
        self.storage = storage_from_string(
            async_storage_uri(storage_uri), implementation="redispy", key_prefix=key_prefix,
            **storage_options,  # type: ignore[arg-type]
        )
        if not isinstance(self.storage, RedisStorage):
            raise ValueError(f"not a Redis storage URI: {storage_uri!r}")
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)
        self._check_script = self.storage.bridge.get_connection().register_script(CHECK)
        self._keys: dict[tuple[str, Limits], list[str]] = {}
        self._checks: GroupCommit[_Check, tuple[RateLimitDecision, int] | None] = GroupCommit(self._flush)
        self.leases = Leases(ttl_s=lease_ms / 1000.0)
        self.checks_sent = 0  # checks that reached Redis (the rest were answered from leases)

    # --- configuration -----------------------------------------------------------------

    def limits_for(self, identity: str) -> Limits:
        """The identity's configured limits, else the default."""
        return self._overrides.get(identity, self.default)

    # --- checks --------------------------------------------------------------------------

    async def check(self, identity: str, cost_tokens_estimate: int = 0) -> RateLimitDecision:
        """Count one request for `identity` and decide whether it may proceed.

        Refused when the request budget is spent, or when fewer than
        ``min(max(1, cost_tokens_estimate), tokens_per_min)`` tokens remain (so a request larger than
        the whole budget still passes on an idle window). A refused request consumes nothing.
        """
        limits = self.limits_for(identity)
        if limits.unlimited:
            return RateLimitDecision(allowed=True)
        if not self.guard.available:
            return self._unavailable()
        leased = self.leases.take(identity, limits)
        if leased is not None:
            return leased
        waiter = self.leases.in_flight(identity, limits)
        if waiter is not None:  # another request of this key is fetching a lease: take from it when it lands
            await asyncio.shield(waiter)
            leased = self.leases.take(identity, limits)
            if leased is not None:
                return leased
        want = self.leases.want(identity, limits)
        try:
            result = await self._checks.submit(_Check(identity, limits, cost_tokens_estimate, want))
        finally:
            if want > 1:
                self.leases.settled(identity, limits)
        if result is None:
            return self._unavailable()
        decision, granted = result
        self.leases.grant(identity, limits, decision, granted)
        return decision

    async def debit_tokens(self, identity: str, n: int) -> None:
        """Record `n` tokens actually used by `identity`. Usage beyond the remaining budget is capped
        at the budget (the window is then exhausted). Never raises."""
        limit = self.limits_for(identity).tokens_per_min
        if limit is None or n <= 0:
            return
        self.leases.spend_tokens(identity, self.limits_for(identity), n)
        item = RateLimitItemPerMinute(limit, namespace="tokens")
        await self.guard.call("debit", lambda: self._debit(item, identity, n), None)

    async def healthy(self) -> bool:
        """True when the limiter's Redis answers within the timeout."""
        return bool(await self.guard.call("ping", self.storage.check, False))

    async def aclose(self) -> None:
        """Close the limiter's Redis client (a shared `connection_pool` is left open)."""
        client = getattr(getattr(self.storage, "bridge", None), "storage", None)
        if client is not None:
            await client.aclose()

    # --- internals -------------------------------------------------------------------------

    async def _flush(self, checks: list[_Check]) -> list[tuple[RateLimitDecision, int] | None]:
        """One script call for a batch of checks: (decision, requests granted) each; None for each when Redis
        failed."""
        keys: list[str] = []
        args: list[int] = [PERIOD_MS]
        self.checks_sent += len(checks)
        for check in checks:
            req, tok = _items(check.limits)
            keys += self._window_keys(check.identity, check.limits)
            args += [req.amount if req else 0, tok.amount if tok else 0,
                     min(max(1, check.cost), tok.amount) if tok else 0, check.want]
        raw = await self.guard.call("check", lambda: self._check_script(keys=keys, args=args), None)
        if raw is None:
            return [None] * len(checks)
        now = time.time()
        out: list[tuple[RateLimitDecision, int] | None] = []
        for i, check in enumerate(checks):
            figures = [int(x) for x in raw[i * FIGURES : (i + 1) * FIGURES]]
            out.append((_decide(check.limits, figures, now), figures[9]))
        return out

    def _window_keys(self, identity: str, limits: Limits) -> list[str]:
        """The script's four keys (an unlimited dimension's pair is never touched: placeholders)."""
        found = self._keys.get((identity, limits))
        if found is None:
            if len(self._keys) >= _MAX_CACHED_KEYS:
                self._keys.clear()
            keys: list[str] = []
            for item in _items(limits):
                keys += window_keys(self.storage, item, identity) if item is not None else ("", "")
            found = self._keys[(identity, limits)] = keys
        return found

    async def _debit(self, item: RateLimitItem, identity: str, n: int) -> None:
        if await self.strategy.hit(item, identity, cost=min(n, item.amount)):
            return
        stats = await self.strategy.get_window_stats(item, identity)
        if stats.remaining > 0:
            await self.strategy.hit(item, identity, cost=stats.remaining)

    def _unavailable(self) -> RateLimitDecision:
        if self.fail_open:
            return RateLimitDecision(allowed=True, degraded=True)
        return RateLimitDecision(allowed=False, reason="unavailable", degraded=True,
                                 retry_after_s=retry_after(self.guard.cooldown_s))


@dataclass(frozen=True, slots=True)
class _Check:
    identity: str
    limits: Limits
    cost: int
    want: int = 1


def _decide(limits: Limits, figures: list[int], now: float) -> RateLimitDecision:
    """The decision for one check from the script's verdict and the windows it saw before the check."""
    req, tok = _items(limits)
    verdict = figures[0]
    req_stats = Window(*figures[1:5]).stats(req.amount, PERIOD_S, now) if req is not None else None
    tok_stats = Window(*figures[5:9]).stats(tok.amount, PERIOD_S, now) if tok is not None else None
    if verdict == TOKENS_SPENT:
        return _decision(False, "tokens", limits, req_stats, tok_stats, now)
    if req_stats is not None:
        if verdict == REQUESTS_SPENT:
            return _decision(False, "requests", limits, WindowStats(req_stats.reset_time, 0), tok_stats, now)
        # an idle window reports "reset now"; after our hit, the window runs for its full period
        reset = req_stats.reset_time if req_stats.reset_time > now else now + PERIOD_S
        req_stats = WindowStats(reset, req_stats.remaining - 1)
    return _decision(True, None, limits, req_stats, tok_stats, now)


def _decision(allowed: bool, reason: str | None, limits: Limits, req: WindowStats | None,
              tok: WindowStats | None, now: float) -> RateLimitDecision:
    reset_req = max(0.0, req.reset_time - now) if req is not None else None
    reset_tok = max(0.0, tok.reset_time - now) if tok is not None else None
    refused_reset = reset_req if reason == "requests" else reset_tok
    return RateLimitDecision(
        allowed=allowed,
        limit_requests=limits.requests_per_min,
        remaining_requests=req.remaining if req is not None else None,
        reset_requests_s=reset_req,
        limit_tokens=limits.tokens_per_min,
        remaining_tokens=tok.remaining if tok is not None else None,
        reset_tokens_s=reset_tok,
        retry_after_s=None if allowed else retry_after(refused_reset or 0.0),
        reason=reason,
    )
