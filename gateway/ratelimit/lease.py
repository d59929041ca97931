"""Request leases: a process reserves a few requests of an identity's budget in one Redis call and admits them
locally, so a busy key does not cost a round trip per request.

Exactness is kept where it matters and the error is bounded everywhere else:

- a lease is granted by the same atomic script that counts requests (`gateway.ratelimit.window.CHECK`), from
  what remains in the shared window, so every process together never admits more than the limit;
- its size adapts to the identity's local rate: it starts at one request (an exact check), doubles while leases
  are used up before they expire and falls back to what the last one used otherwise, capped at
  `limit // 100` (1 % of the budget) and `max_size`; limits below 200/min are therefore always checked exactly;
- it lives `ttl_s` (the `rate_limit_lease_ms` setting): requests of a lease that expires unused stay counted — at
  most one lease of waste per process per `ttl_s`, which only makes the limiter stricter, never looser;
- the token budget is read when the lease is granted; usage is debited off the request path anyway
  (`gateway.ratelimit.policy.TokenLedger`), so a lease adds at most `ttl_s` to how late a spent token budget is noticed.
  Below `low_tokens` of its budget remaining, an identity is checked exactly again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

from gateway.ratelimit.decision import Limits, RateLimitDecision

MIN_LIMIT_FOR_LEASES = 200  # per minute: below this every request is checked in Redis


@dataclass(slots=True)
class _Lease:
    decision: RateLimitDecision  # as granted: remaining_requests already counts the first request
    granted: int
    used: int  # requests admitted from this lease, the first included
    started: float
    expires: float


@dataclass(slots=True)
class _State:
    want: int = 1
    lease: _Lease | None = None
    last_exact: float = float("-inf")  # when the last one-request check was granted


@dataclass
class Leases:
    """Per-identity leases of this process."""

    ttl_s: float = 0.1
    max_size: int = 64
    low_tokens: float = 0.1  # fraction of the token budget below which no lease is granted
    _states: dict[tuple[str, Limits], _State] = field(default_factory=dict)
    # a lease check in flight per identity: concurrent requests of that identity wait for it, then take from it
    _pending: dict[tuple[str, Limits], asyncio.Future[None]] = field(default_factory=dict)

    def take(self, identity: str, limits: Limits) -> RateLimitDecision | None:
        """A decision from a live lease of `identity` (one request consumed), or None: ask Redis."""
        state = self._states.get((identity, limits))
        lease = state.lease if state is not None else None
        if lease is None:
            return None
        now = time.monotonic()
        if now >= lease.expires or lease.used >= lease.granted:
            self._retire(state, lease, now)
            return None
        lease.used += 1
        return _aged(lease.decision, lease.used - 1, now - lease.started)

    def planned(self, identity: str, limits: Limits) -> int:
        """How many requests the next check of `identity` would ask for (1: an exact check)."""
        cap = min(self.max_size, (limits.requests_per_min or 0) // 100)
        state = self._states.get((identity, limits))
        if self.ttl_s <= 0 or cap <= 1 or state is None or (identity, limits) in self._pending:
            return 1
        return max(1, min(cap, state.want))

    def in_flight(self, identity: str, limits: Limits) -> asyncio.Future[None] | None:
        """The lease check of `identity` in flight, if any: wait for it, then `take` again."""
        return self._pending.get((identity, limits))

    def want(self, identity: str, limits: Limits) -> int:
        """`planned`, for a check about to be made; a check asking for more than one request is registered as in
        flight until `settled` (meanwhile `planned` answers 1)."""
        n = self.planned(identity, limits)
        if n > 1:
            self._pending[(identity, limits)] = asyncio.get_running_loop().create_future()
        return n

    def settled(self, identity: str, limits: Limits) -> None:
        """The check that `want` sized has finished (granted, refused or failed): wake whoever waits for it."""
        waiter = self._pending.pop((identity, limits), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def grant(self, identity: str, limits: Limits, decision: RateLimitDecision, granted: int) -> None:
        """Record what a check granted (its first request is the caller's own)."""
        key = (identity, limits)
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= 10_000:  # bounded: anonymous callers are identified by IP
                self._states.clear()
            state = self._states[key] = _State()
        now = time.monotonic()
        if not decision.allowed or decision.degraded or self._tokens_low(decision):
            state.lease, state.want = None, 1
        elif granted > 1:
            state.lease = _Lease(decision, granted, 1, now, now + self.ttl_s)
        elif state.lease is None:  # two exact checks within one lease lifetime: the key is busy enough to lease
            state.want = max(state.want, 2) if now - state.last_exact < self.ttl_s else 1
            state.last_exact = now

    def spend_tokens(self, identity: str, limits: Limits, n: int) -> None:
        """Tokens this process debited: lower the lease's view, and end the lease when the budget runs low."""
        state = self._states.get((identity, limits))
        lease = state.lease if state is not None else None
        if lease is None or lease.decision.remaining_tokens is None:
            return
        lease.decision = replace(lease.decision, remaining_tokens=max(0, lease.decision.remaining_tokens - n))
        if self._tokens_low(lease.decision):
            state.lease, state.want = None, 1  # type: ignore[union-attr]

    def _tokens_low(self, decision: RateLimitDecision) -> bool:
        if decision.limit_tokens is None or decision.remaining_tokens is None:
            return False
        return decision.remaining_tokens < self.low_tokens * decision.limit_tokens

    def _retire(self, state: _State, lease: _Lease, now: float) -> None:
        """Size the next lease from how this one went."""
        state.lease = None
        state.want = lease.granted * 2 if lease.used >= lease.granted and now < lease.expires else lease.used


def _aged(decision: RateLimitDecision, extra: int, elapsed_s: float) -> RateLimitDecision:
    """The granted decision as seen `extra` local requests and `elapsed_s` later."""
    remaining = None if decision.remaining_requests is None else max(0, decision.remaining_requests - extra)

    def later(reset: float | None) -> float | None:
        return None if reset is None else max(0.0, reset - elapsed_s)

    return replace(decision, remaining_requests=remaining, reset_requests_s=later(decision.reset_requests_s),
                   reset_tokens_s=later(decision.reset_tokens_s))
