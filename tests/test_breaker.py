"""Circuit breaker: thresholds, error rate, one half-open probe, state shared through a real Redis, and
fail-soft behaviour when Redis is down."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.cache.guard import RedisGuard
from gateway.routing.breaker import BreakerStore, CircuitBreaker, Permit
from gateway.routing.config import BreakerPolicy
from stack.process import free_port
from stack.redis import RedisServer
from tests.redis_helpers import unique


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, store: BreakerStore | None = None, name: str = "dep", **policy: float) -> CircuitBreaker:
    values = {"failure_threshold": 3, "cooldown_s": 10.0, "window_s": 30.0, "min_requests": 10, **policy}
    return CircuitBreaker(name, BreakerPolicy(**values), store=store, clock=clock, sync_interval_s=0.0)


async def fail(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        await b.record(await b.allow(), False)


async def test_consecutive_failures_open_and_success_resets() -> None:
    clock = Clock()
    b = breaker(clock)
    await fail(b, 2)
    await b.record(await b.allow(), True)
    await fail(b, 2)
    assert b.state == "closed"
    await fail(b)
    assert b.state == "open"
    assert await b.allow() is Permit.DENY
    assert b.retry_in_s() == pytest.approx(10.0)


async def test_error_rate_over_window_opens() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=100, error_rate=0.5, min_requests=10)
    for i in range(9):
        await b.record(Permit.ALLOW, i % 2 == 0)  # 4 failures of 9: below min_requests anyway
        clock.now += 1
    assert b.state == "closed"
    await b.record(Permit.ALLOW, False)
    await b.record(Permit.ALLOW, False)  # 6 of 11 > 50%
    assert b.state == "open"


async def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=100, error_rate=0.5, min_requests=4, window_s=5)
    for _ in range(3):
        await b.record(Permit.ALLOW, True)
        await b.record(Permit.ALLOW, False)  # 3 of 6: not above 50%
    assert b.state == "closed"
    clock.now += 10
    await b.record(Permit.ALLOW, False)
    await b.record(Permit.ALLOW, True)
    await b.record(Permit.ALLOW, True)
    await b.record(Permit.ALLOW, True)
    assert b.state == "closed"  # 1 of 4 in the window (4 of 10 had the old ones stayed: open at the 7th)


async def test_half_open_lets_one_probe_through() -> None:
    clock = Clock()
    b = breaker(clock)
    await fail(b, 3)
    clock.now += 10
    probe = await b.allow()
    assert probe is Permit.PROBE and b.state == "half_open"
    assert await b.allow() is Permit.DENY  # only one probe at a time
    await b.record(probe, False)
    assert b.state == "open" and await b.allow() is Permit.DENY
    clock.now += 10
    probe = await b.allow()
    await b.record(probe, None)  # neutral (e.g. overflow): still half-open, the next call probes
    assert b.state == "half_open"
    probe = await b.allow()
    assert probe is Permit.PROBE
    await b.record(probe, True)
    assert b.state == "closed" and await b.allow() is Permit.ALLOW
    assert b.consecutive_failures == 0


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[BreakerStore]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield BreakerStore(client, RedisGuard(timeout_ms=200))
    await client.aclose()


async def test_state_is_shared_across_processes(store: BreakerStore) -> None:
    name = unique("shared")
    clock = Clock()
    clock.now = time.time()
    one, two = breaker(clock, store, name), breaker(clock, store, name)  # two gateway processes
    await fail(one, 3)
    assert one.state == "open"
    assert await two.allow() is Permit.DENY and two.state == "open"
    clock.now += 10
    probe = await one.allow()
    assert probe is Permit.PROBE
    assert await two.allow() is Permit.DENY  # the cluster-wide probe lock is held by `one`
    await one.record(probe, True)
    assert await two.allow() is Permit.ALLOW and two.state == "closed"


async def test_redis_down_falls_back_to_local_state() -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.05)
    errors: list[str] = []
    down = BreakerStore(client, RedisGuard(timeout_ms=50, on_error=errors.append))
    clock = Clock()
    b = breaker(clock, down)
    started = time.monotonic()
    await fail(b, 3)
    assert b.state == "open" and await b.allow() is Permit.DENY
    clock.now += 10
    probe = await b.allow()
    assert probe is Permit.PROBE
    await b.record(probe, True)
    assert b.state == "closed"
    assert errors and time.monotonic() - started < 1.0
    await client.aclose()


async def test_concurrent_half_open_calls_get_one_probe(store: BreakerStore) -> None:
    import asyncio

    clock = Clock()
    clock.now = time.time()
    b = breaker(clock, store, unique("race"))
    await fail(b, 3)
    clock.now += 10
    permits = await asyncio.gather(*(b.allow() for _ in range(5)))
    assert permits.count(Permit.PROBE) == 1 and permits.count(Permit.DENY) == 4
