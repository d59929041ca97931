"""Bounded, never-raising Redis calls with a short circuit breaker.

Every Redis round trip of the cache, the single-flight lock and the rate limiter goes through a
`RedisGuard`: it caps the call at `timeout_ms`, turns any failure into a caller-supplied fallback
value, reports the failure to a metrics hook, and then skips Redis entirely for `cooldown_s` so a
dead or wedged Redis costs one timeout per cooldown instead of one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

R = TypeVar("R")

log = logging.getLogger(__name__)

ErrorHook = Callable[[str], None]
"""Called with the operation name (e.g. "get", "set", "lock") each time a Redis call fails."""


def _ignore(_op: str) -> None:
    return None


class RedisGuard:
    """Run Redis calls under a timeout; on failure return a fallback and open the breaker."""

    def __init__(
        self,
        *,
        timeout_ms: float,
        cooldown_s: float = 1.0,
        on_error: ErrorHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")
        self.timeout_s = timeout_ms / 1000.0
        self.cooldown_s = cooldown_s
        self.on_error: ErrorHook = on_error if on_error is not None else _ignore
        self._clock = clock
        self._open_until = 0.0

    @property
    def available(self) -> bool:
        """False while the breaker is open (Redis failed less than `cooldown_s` ago)."""
        return self._clock() >= self._open_until

    def trip(self, op: str, exc: BaseException | None = None) -> None:
        """Record a failure of `op`: count it and skip Redis for the cooldown."""
        if self.available:
            log.warning("redis %s failed (%s); skipping redis for %.1fs", op, exc or "error", self.cooldown_s)
        self._open_until = self._clock() + self.cooldown_s
        self.on_error(op)

    def reset(self) -> None:
        """Close the breaker now (tests, or after an explicit successful health check)."""
        self._open_until = 0.0

    async def call(self, op: str, fn: Callable[[], Awaitable[R]], fallback: R) -> R:
        """Await `fn()` within the timeout; return `fallback` if the breaker is open or the call fails.

        `fn` is a zero-argument callable so that no coroutine is created while the breaker is open.
        Cancellation of the caller still propagates.
        """
        if not self.available:
            return fallback
        try:
            async with asyncio.timeout(self.timeout_s):
                return await fn()
        except Exception as exc:  # any client, protocol or timeout error means "Redis unusable now"
            self.trip(op, exc)
            return fallback
