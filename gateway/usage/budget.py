"""Per-key budgets (USD and/or tokens per UTC day or month), enforced with reserve → settle in Redis.

Before a call, the request's worst case — estimated prompt tokens plus its max output tokens, at the route's
dearest price — is **reserved** by one Lua script that checks the period's spend-plus-reservations against the
caps and adds the reservation only when it fits. The script runs atomically, so concurrent requests can never
together reserve more than the budget. After the call the reservation is **settled**: replaced by the real usage
(the upstream's, or the gateway's estimate for a stream that broke before reporting it), or released when no
upstream call was billed. Amounts are integers: micro-USD (a price per 1M tokens × tokens is micro-USD) and tokens.

Redis unreachable → requests of keys that have a budget are refused with 503 (`budget_unavailable`): a spending
cap that cannot be checked is not silently lifted. Keys without a budget never touch this module.

`gateway_budget_used_ratio{key, period}` (`BudgetUsage`) exports, per configured budget, the spend-plus-reservations
Redis last returned to this process over the cap (the larger of the USD and token ratios); it is updated on every
reserve, settle and `/admin/budgets` read, and drops to 0 when its period (UTC day or month) has rolled over.
Replicas each export what they last saw: aggregate with `max by (key, period)`.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.auth import Principal
from gateway.cache.guard import RedisGuard
from gateway.config import GatewaySettings, KeyBudget
from gateway.errors import BackendUnavailableError, RateLimitedError
from gateway.routing.config import Price

KEY_PREFIX = "tritonstack:budget:"

RESERVE = """
local usd_limit = tonumber(ARGV[1])
local tok_limit = tonumber(ARGV[2])
local usd = tonumber(ARGV[3])
local tok = tonumber(ARGV[4])
local spent_usd = tonumber(redis.call('HGET', KEYS[1], 'usd') or '0')
local spent_tok = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
if (usd_limit >= 0 and spent_usd + usd > usd_limit) or (tok_limit >= 0 and spent_tok + tok > tok_limit) then
  return {0, spent_usd, spent_tok}
end
redis.call('HINCRBY', KEYS[1], 'usd', usd)
redis.call('HINCRBY', KEYS[1], 'tokens', tok)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return {1, spent_usd + usd, spent_tok + tok}
"""

_FAILED = object()


def micro_usd(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    """The cost of a call in micro-USD, rounded up."""
    exact = prompt_tokens * price.input_per_1m + completion_tokens * price.output_per_1m
    return math.ceil(round(exact, 6))


def period_window(period: str, now: float) -> tuple[str, float]:
    """(period id, epoch seconds when it ends) for a UTC day or month."""
    t = time.gmtime(now)
    if period == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return time.strftime("%Y-%m-%d", t), start + 86_400
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return time.strftime("%Y-%m", t), calendar.timegm((year, month, 1, 0, 0, 0))


def used_ratio(budget: KeyBudget, usd_micro: int, tokens: int) -> float:
    """Spend over cap, the larger of the USD and token ratios (only the caps the budget sets)."""
    ratios = [usd_micro / (budget.usd * 1_000_000)] if budget.usd is not None else []
    if budget.tokens is not None:
        ratios.append(tokens / budget.tokens)
    return max(ratios)


class BudgetUsage:
    """Prometheus collector of `gateway_budget_used_ratio{key, period}` for the configured budgets only."""

    def __init__(self, budgets: dict[str, KeyBudget], clock: Callable[[], float] = time.time,
                 registry: CollectorRegistry | None = None) -> None:
        self._budgets = budgets
        self._clock = clock
        self._seen: dict[str, tuple[str, float]] = {}  # key name → (period id, ratio)
        if registry is not None:
            registry.register(self)

    def record(self, name: str, period_id: str, usd_micro: int, tokens: int) -> None:
        """Remember what Redis said the key has spent or reserved in `period_id`."""
        budget = self._budgets.get(name)
        if budget is not None:
            self._seen[name] = (period_id, used_ratio(budget, usd_micro, tokens))

    def ratio(self, name: str) -> float | None:
        """The exported value for `name` (None before anything was recorded)."""
        seen = self._seen.get(name)
        if seen is None:
            return None
        current, _ = period_window(self._budgets[name].period, self._clock())
        return seen[1] if seen[0] == current else 0.0  # a new period starts with nothing spent

    def describe(self) -> Iterator[Metric]:
        """The family without samples."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        """One sample per configured budget that this process has seen a spend for."""
        family = self._family()
        for name in sorted(self._seen):
            value = self.ratio(name)
            if value is not None:
                family.add_metric([name, self._budgets[name].period], value)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("gateway_budget_used_ratio", "Budget spent or reserved in the current period "
                                 "over its cap (larger of USD and tokens), as this process last read it.",
                                 labels=["key", "period"])


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one request holds against its key's budget until it settles."""

    redis_key: str
    key_name: str
    usd_micro: int
    tokens: int


class BudgetLedger:
    """Reserves and settles chat spend per API key (see module docstring)."""

    def __init__(self, redis: aioredis.Redis, guard: RedisGuard, settings: GatewaySettings,
                 clock: Callable[[], float] = time.time, registry: CollectorRegistry | None = None) -> None:
        self.redis = redis
        self.guard = guard
        self._budgets = {k.name: k.budget for k in settings.api_keys if k.budget is not None}
        self._reserve = redis.register_script(RESERVE)
        self._clock = clock
        self.usage = BudgetUsage(self._budgets, clock, registry)

    def budget_for(self, principal: Principal) -> KeyBudget | None:
        """The caller's budget (None: no cap; anonymous callers have none)."""
        return None if principal.anonymous else self._budgets.get(principal.name)

    def _key(self, name: str, budget: KeyBudget) -> tuple[str, float]:
        period, ends = period_window(budget.period, self._clock())
        return f"{KEY_PREFIX}{name}:{period}", ends

    async def reserve(self, principal: Principal, usd_micro: int, tokens: int) -> Reservation | None:
        """Hold `usd_micro`/`tokens` against the caller's budget; None when the caller has no budget.

        RateLimitedError (429, `x-should-retry: false`) when the budget cannot cover it;
        BackendUnavailableError (503) when Redis cannot be reached.
        """
        budget = self.budget_for(principal)
        if budget is None:
            return None
        key, ends = self._key(principal.name, budget)
        usd_limit = -1 if budget.usd is None else int(budget.usd * 1_000_000)
        tok_limit = -1 if budget.tokens is None else budget.tokens
        ttl = int(ends - self._clock()) + 86_400
        args = [usd_limit, tok_limit, usd_micro, tokens, ttl]
        result = await self.guard.call("budget_reserve", lambda: self._reserve(keys=[key], args=args), _FAILED)
        if result is _FAILED:
            raise BackendUnavailableError("The budget store is unreachable; requests of keys with a budget are "
                                          "refused until it is back", code="budget_unavailable")
        ok, spent_usd, spent_tok = (int(x) for x in result)  # type: ignore[union-attr]
        self.usage.record(principal.name, _period_of(key), spent_usd, spent_tok)
        if not ok:
            raise over_budget(principal.name, budget, usd_micro, tokens, int(spent_usd), int(spent_tok), ends)
        return Reservation(key, principal.name, usd_micro, tokens)

    async def settle(self, reservation: Reservation | None, usd_micro: int, tokens: int) -> None:
        """Replace the reservation by the real spend (0, 0 releases it). Never raises."""
        if reservation is None:
            return
        d_usd, d_tok = usd_micro - reservation.usd_micro, tokens - reservation.tokens
        if d_usd == 0 and d_tok == 0:
            return

        async def apply() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(reservation.redis_key, "usd", d_usd)
                pipe.hincrby(reservation.redis_key, "tokens", d_tok)
                spent_usd, spent_tok = await pipe.execute()
            self.usage.record(reservation.key_name, _period_of(reservation.redis_key), int(spent_usd), int(spent_tok))

        await self.guard.call("budget_settle", apply, None)

    async def status(self) -> dict[str, dict[str, object]]:
        """Current-period spend (reservations included) against each configured budget."""
        out: dict[str, dict[str, object]] = {}
        for name, budget in self._budgets.items():
            key, ends = self._key(name, budget)
            raw = await self.guard.call("budget_get", lambda k=key: self.redis.hgetall(k), None)
            spent = {k.decode(): int(v) for k, v in (raw or {}).items()}
            if raw is not None:
                self.usage.record(name, _period_of(key), spent.get("usd", 0), spent.get("tokens", 0))
            out[name] = {"period": budget.period, "resets_at": int(ends), "usd_limit": budget.usd,
                         "tokens_limit": budget.tokens, "usd_spent": spent.get("usd", 0) / 1_000_000,
                         "tokens_spent": spent.get("tokens", 0), "available": raw is not None}
        return out


def _period_of(redis_key: str) -> str:
    """The period id at the end of a budget key (`…:{name}:{period}`)."""
    return redis_key.rsplit(":", 1)[1]


def over_budget(name: str, budget: KeyBudget, usd_micro: int, tokens: int, spent_usd: int, spent_tok: int,
                ends: float) -> RateLimitedError:
    """The 429 a refused reservation gets: what the request could cost, what is spent, when it resets."""
    resets = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ends))
    parts = []
    if budget.usd is not None:
        parts.append(f"${spent_usd / 1e6:.4f} of ${budget.usd:g} spent or reserved, this request may cost up to "
                     f"${usd_micro / 1e6:.4f}")
    if budget.tokens is not None:
        parts.append(f"{spent_tok} of {budget.tokens} tokens spent or reserved, this request may use up to {tokens}")
    period = "daily" if budget.period == "day" else "monthly"
    return RateLimitedError(
        f"The {period} budget of API key '{name}' cannot cover this request ({'; '.join(parts)}). "
        f"Lower max_tokens or wait until the budget resets at {resets}.",
        quota=True, code="budget_exceeded")
