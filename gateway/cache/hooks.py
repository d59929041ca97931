"""Metric hooks the cache and single-flight call; the gateway wires them to Prometheus."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _noop(_value: object) -> None:
    return None


@dataclass(frozen=True, slots=True)
class CacheHooks:
    """Callbacks; each defaults to a no-op. They must be cheap and must not raise.

    - `redis_error(op)`: a Redis call failed or timed out (op: "get", "set", "clear", "lock" (lookup
      and lock), "publish" (store and unlock), "poll", "unlock").
    - `coalesced(n)`: `n` items of a batch were served by an identical in-flight computation in
      this process instead of a new backend call.
    - `remote_wait(n)`: `n` items were served by another replica's computation (lost the Redis
      lock, then found its result in the cache).
    """

    redis_error: Callable[[str], None] = _noop
    coalesced: Callable[[int], None] = _noop
    remote_wait: Callable[[int], None] = _noop
