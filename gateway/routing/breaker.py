"""Circuit breaker per deployment, its state shared across gateway processes through Redis (fail-soft).

States: **closed** (calls flow) → **open** after `failure_threshold` consecutive failures, or an error rate above
`error_rate` over the last `window_s` seconds (at least `min_requests` calls) → after `cooldown_s`,
**half-open**: exactly one probe call is let through (one per cluster: a Redis `SET NX` lock); its success
closes the breaker, its failure re-opens it for another cool-down.

Sharing: a process that opens a breaker writes ``tritonstack:breaker:{deployment}`` = the open-until epoch time;
a successful probe deletes it. Every process re-reads the key at most every `sync_interval_s` before using the
deployment, so a breaker opened anywhere stops traffic everywhere within that interval. Failure *detection*
(consecutive count, error rate) is per process. Every Redis call is bounded and never raises (`RedisGuard`):
with Redis down each process keeps deciding from its own state.
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable

import redis.asyncio as aioredis

from gateway.cache.guard import RedisGuard
from gateway.routing.config import BreakerPolicy

KEY_PREFIX = "tritonstack:breaker:"
_UNKNOWN = object()


class Permit(enum.Enum):
    """What `CircuitBreaker.allow` grants: a normal call, the half-open probe, or nothing."""

    ALLOW = "allow"
    PROBE = "probe"
    DENY = "deny"


class BreakerStore:
    """The breakers' shared state in Redis; every call is guarded (timeouts and errors → fallbacks)."""

    def __init__(self, redis: aioredis.Redis, guard: RedisGuard) -> None:
        self.redis = redis
        self.guard = guard

    async def read(self, name: str) -> object:
        """Open-until epoch seconds, None when closed, or `_UNKNOWN` when Redis is unusable."""
        raw = await self.guard.call("breaker_get", lambda: self.redis.get(KEY_PREFIX + name), _UNKNOWN)
        if raw is _UNKNOWN or raw is None:
            return raw
        try:
            return float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None

    async def open(self, name: str, until: float, ttl_s: float) -> None:
        """Publish "open until `until`" (expires after `ttl_s`: an idle breaker eventually closes)."""
        await self.guard.call("breaker_set", lambda: self.redis.set(KEY_PREFIX + name, repr(until),
                                                                    px=max(1, int(ttl_s * 1000))), None)

    async def close(self, name: str) -> None:
        """Publish "closed" and release the probe lock."""
        await self.guard.call("breaker_del", lambda: self.redis.delete(KEY_PREFIX + name,
                                                                       f"{KEY_PREFIX}{name}:probe"), None)

    async def try_probe(self, name: str, ttl_s: float) -> bool | None:
        """Take the cluster-wide half-open probe lock; None when Redis is unusable."""
        got = await self.guard.call("breaker_probe", lambda: self.redis.set(
            f"{KEY_PREFIX}{name}:probe", b"1", nx=True, px=max(1, int(ttl_s * 1000))), _UNKNOWN)
        return None if got is _UNKNOWN else bool(got)

    async def release_probe(self, name: str) -> None:
        """Let another probe through (the last one told nothing about health)."""
        await self.guard.call("breaker_del", lambda: self.redis.delete(f"{KEY_PREFIX}{name}:probe"), None)


class _Window:
    """Call outcomes over the last `window_s` seconds, in one-second buckets (bounded memory)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._buckets: deque[list[int]] = deque()  # [second, calls, failures]

    def add(self, now: float, failed: bool) -> None:
        second = int(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += int(failed)
        self._prune(now)

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        while self._buckets and self._buckets[0][0] + 1 <= horizon:
            self._buckets.popleft()

    def stats(self) -> tuple[int, int]:
        """(calls, failures) in the window."""
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def clear(self) -> None:
        self._buckets.clear()


class CircuitBreaker:
    """One deployment's breaker (see module docstring)."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        store: BreakerStore | None = None,
        probe_ttl_s: float = 30.0,
        sync_interval_s: float = 0.5,
        on_change: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.policy = policy
        self.store = store
        self.probe_ttl_s = probe_ttl_s
        self.sync_interval_s = sync_interval_s
        self._on_change = on_change
        self._clock = clock
        self.state = "closed"
        self.open_until = 0.0
        self.consecutive_failures = 0
        self._window = _Window(policy.window_s)
        self._probing = False
        self._synced_at = -math.inf

    # --- state -----------------------------------------------------------------------------

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(self.name, state)

    def snapshot(self) -> dict[str, object]:
        """State for `GET /admin/deployments`."""
        calls, failures = self._window.stats()
        retry_in = max(0.0, self.open_until - self._clock()) if self.state == "open" else 0.0
        return {"state": self.state, "consecutive_failures": self.consecutive_failures,
                "window_calls": calls, "window_failures": failures, "half_open_in_s": round(retry_in, 3)}

    def retry_in_s(self) -> float:
        """Seconds until the breaker half-opens (0 unless open)."""
        return max(0.0, self.open_until - self._clock()) if self.state == "open" else 0.0

    async def sync(self, force: bool = False) -> None:
        """Adopt the shared state (at most every `sync_interval_s` unless forced)."""
        now = self._clock()
        if self.store is None or (not force and now - self._synced_at < self.sync_interval_s):
            return
        self._synced_at = now
        shared = await self.store.read(self.name)
        if shared is _UNKNOWN or self._probing:
            return
        if shared is None:
            if self.state != "closed":
                self._close_locally()
        elif isinstance(shared, float) and (self.state == "closed" or shared > self.open_until):
            self.open_until = shared
            self._set("open")

    # --- decisions -------------------------------------------------------------------------

    async def allow(self) -> Permit:
        """May a call go to this deployment now? PROBE means "the half-open probe: report its outcome"."""
        await self.sync()
        if self.state == "closed":
            return Permit.ALLOW
        if self._probing or self._clock() < self.open_until:
            return Permit.DENY
        self._probing = True  # before any await: one probe per process even while Redis answers
        if self.store is not None and await self.store.try_probe(self.name, self.probe_ttl_s) is False:
            self._probing = False
            return Permit.DENY
        self._set("half_open")
        return Permit.PROBE

    async def record(self, permit: Permit, ok: bool | None) -> None:
        """Report a call's outcome: True success, False failure, None neutral (tells nothing about health)."""
        if permit is Permit.PROBE:
            await self._probe_done(ok)
            return
        if ok is None or self.state != "closed":
            return
        now = self._clock()
        self._window.add(now, failed=not ok)
        if ok:
            self.consecutive_failures = 0
            return
        self.consecutive_failures += 1
        if self._tripped():
            await self._open(now)

    def _tripped(self) -> bool:
        p = self.policy
        if self.consecutive_failures >= p.failure_threshold:
            return True
        calls, failures = self._window.stats()
        return calls >= p.min_requests and failures / calls > p.error_rate

    async def _probe_done(self, ok: bool | None) -> None:
        self._probing = False
        if ok is True:
            self._close_locally()
            if self.store is not None:
                await self.store.close(self.name)
        elif ok is False:
            await self._open(self._clock())
        elif self.store is not None:
            await self.store.release_probe(self.name)

    async def _open(self, now: float) -> None:
        self.open_until = now + self.policy.cooldown_s
        self._set("open")
        if self.store is not None:
            ttl = max(self.policy.cooldown_s * 10, 60.0)
            await self.store.open(self.name, self.open_until, ttl)
            await self.store.release_probe(self.name)

    def _close_locally(self) -> None:
        self.consecutive_failures = 0
        self._window.clear()
        self.open_until = 0.0
        self._set("closed")
