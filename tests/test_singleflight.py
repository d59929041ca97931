"""SingleFlight: in-process coalescing per item, and the cross-replica Redis lock (real redis-server)."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio as aioredis

from gateway.cache import LOCK_PREFIX, CachedItem, CacheHooks, CacheMode, EmbeddingCache, SingleFlight
from stack.process import free_port
from tests.redis_helpers import Counter, unique, wait_until


def value_for(key: str) -> CachedItem:
    return CachedItem.from_array([float(zlib.crc32(key.encode()) % 100_000)], tokens=len(key))


class Backend:
    """A fake inference backend: records each call's keys, waits for `gate`, then answers or fails."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.fail = fail

    def compute_for(self, keys: Sequence[str]):
        async def compute(indices: list[int]) -> list[CachedItem]:
            batch = [keys[i] for i in indices]
            self.calls.append(batch)
            await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            return [value_for(k) for k in batch]

        return compute

    def run(self, flight: SingleFlight, keys: list[str], mode: CacheMode = CacheMode.DEFAULT) -> asyncio.Task:
        return asyncio.ensure_future(flight.run(keys, self.compute_for(keys), mode=mode))


class SpyCache(EmbeddingCache):
    """Counts remote reads, so a test can see a lock loser polling."""

    polls = 0

    async def get_keys(self, keys: Sequence[str]) -> list[CachedItem | None]:
        self.polls += 1
        return await super().get_keys(keys)


@pytest.fixture
async def redis_client(redis_server) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


def replica(redis: aioredis.Redis | None, **kw: object) -> tuple[SpyCache, SingleFlight]:
    """One gateway process: its own L1 cache and single-flight, sharing `redis`."""
    hooks = kw.pop("hooks", CacheHooks())
    cache = SpyCache(redis, l1_max_items=100, ttl_s=60, timeout_ms=200, metrics=hooks)
    return cache, SingleFlight(cache, redis=redis, guard=cache.guard, metrics=hooks, **kw)


async def test_identical_concurrent_runs_compute_once() -> None:
    coalesced, backend = Counter(), Backend()
    flight = SingleFlight(metrics=CacheHooks(coalesced=coalesced))
    tasks = [backend.run(flight, ["k"]) for _ in range(20)]
    await wait_until(lambda: sum(coalesced.calls) == 19)
    backend.gate.set()
    results = await asyncio.gather(*tasks)
    assert backend.calls == [["k"]]
    assert results == [[value_for("k")]] * 20
    await flight.wait_idle()
    assert flight.in_flight == 0


async def test_overlapping_batches_compute_each_key_once() -> None:
    backend, flight = Backend(), SingleFlight()
    first = backend.run(flight, ["a", "b", "c"])
    await wait_until(lambda: flight.in_flight == 3)
    second = backend.run(flight, ["b", "d", "c", "d"])
    await wait_until(lambda: flight.in_flight == 4)
    backend.gate.set()
    assert await first == [value_for(k) for k in "abc"]
    assert await second == [value_for(k) for k in "bdcd"]
    assert backend.calls == [["a", "b", "c"], ["d"]]


async def test_any_in_flight_names_only_the_keys_being_computed() -> None:
    """What the embeddings service asks before starting a computation early: are these texts in flight here?"""
    backend, flight = Backend(), SingleFlight()
    task = backend.run(flight, ["a", "b"])
    await wait_until(lambda: flight.in_flight == 2)
    assert flight.any_in_flight(["x", "b"]) and flight.any_in_flight(["a"])
    assert not flight.any_in_flight(["x", "y"]) and not flight.any_in_flight([])
    backend.gate.set()
    await task
    await flight.wait_idle()
    assert not flight.any_in_flight(["a", "b"])


async def test_exception_reaches_every_waiter_and_releases_the_key() -> None:
    backend, flight = Backend(fail=ValueError("triton down")), SingleFlight()
    tasks = [backend.run(flight, ["k", f"own-{i}"]) for i in range(5)]
    await wait_until(lambda: flight.in_flight == 6)
    backend.gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, ValueError) and str(o) == "triton down" for o in outcomes)
    await flight.wait_idle()
    assert flight.in_flight == 0

    backend.fail = None  # the next request retries instead of joining a dead computation
    assert await flight.run(["k"], backend.compute_for(["k"])) == [value_for("k")]
    assert len(backend.calls) == 6


async def test_cancelled_leader_does_not_cancel_its_waiters() -> None:
    coalesced, backend = Counter(), Backend()
    flight = SingleFlight(metrics=CacheHooks(coalesced=coalesced))
    leader = backend.run(flight, ["k"])
    await wait_until(lambda: len(backend.calls) == 1)
    waiter = backend.run(flight, ["k"])
    await wait_until(lambda: len(coalesced) == 1)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    backend.gate.set()
    assert await waiter == [value_for("k")]
    assert len(backend.calls) == 1


async def test_wrong_result_count_is_an_error() -> None:
    async def compute(indices: list[int]) -> list[int]:
        return []

    with pytest.raises(RuntimeError, match="0 values for 1 items"):
        await SingleFlight().run(["k"], compute)


async def test_cache_modes_decide_lookup_and_publishing() -> None:
    cache, flight = replica(None)
    backend = Backend()
    backend.gate.set()
    await flight.run(["x"], backend.compute_for(["x"]))
    assert cache.peek_keys(["x"]) == [value_for("x")]  # published to L1
    await flight.run(["x"], backend.compute_for(["x"]))
    assert len(backend.calls) == 1  # DEFAULT: served from L1, no compute

    cache.put_local(["x"], [CachedItem.from_array([0.0], 0)])
    assert await flight.run(["x"], backend.compute_for(["x"]), mode=CacheMode.REFRESH) == [value_for("x")]
    assert cache.peek_keys(["x"]) == [value_for("x")]  # REFRESH: recomputed and stored
    await flight.run(["y"], backend.compute_for(["y"]), mode=CacheMode.BYPASS)
    assert cache.peek_keys(["y"]) == [None]  # BYPASS: not stored
    assert backend.calls == [["x"], ["x"], ["y"]]


async def test_results_are_published_to_redis_and_the_lock_released(redis_client: aioredis.Redis) -> None:
    cache, flight = replica(redis_client)
    key = cache.keys(unique("pub"), "1", None, ["hello"])[0]
    backend = Backend()
    backend.gate.set()
    assert await flight.run([key], backend.compute_for([key])) == [value_for(key)]
    await flight.wait_idle()
    other, _ = replica(redis_client)
    assert await other.get_keys([key]) == [value_for(key)]
    assert await redis_client.exists(LOCK_PREFIX + key) == 0


async def test_two_replicas_share_one_computation(redis_client: aioredis.Redis) -> None:
    waited = Counter()
    cache_a, flight_a = replica(redis_client)
    cache_b, flight_b = replica(redis_client, hooks=CacheHooks(remote_wait=waited))
    key = cache_a.keys(unique("xr"), "1", None, ["same text"])[0]
    backend = Backend()
    a = backend.run(flight_a, [key])
    await wait_until(lambda: len(backend.calls) == 1)  # A holds the lock and is computing
    b = backend.run(flight_b, [key])
    await wait_until(lambda: cache_b.polls >= 1)  # B lost the lock and polls the cache
    backend.gate.set()
    assert await a == await b == [value_for(key)]
    assert backend.calls == [[key]]
    assert waited.calls == [1]


async def test_lock_loser_computes_as_soon_as_the_winner_fails(redis_client: aioredis.Redis) -> None:
    _, flight_a = replica(redis_client, lock_ms=10_000)
    cache_b, flight_b = replica(redis_client, lock_ms=10_000)
    key = cache_b.keys(unique("xf"), "1", None, ["t"])[0]
    failing, healthy = Backend(fail=ValueError("boom")), Backend()
    healthy.gate.set()
    a = failing.run(flight_a, [key])
    await wait_until(lambda: len(failing.calls) == 1)
    b = healthy.run(flight_b, [key])
    await wait_until(lambda: cache_b.polls >= 1)
    started = time.monotonic()
    failing.gate.set()
    with pytest.raises(ValueError, match="boom"):
        await a
    assert await b == [value_for(key)]
    assert time.monotonic() - started < 2.0  # did not wait out the 10 s lock
    assert healthy.calls == [[key]]


async def test_unreachable_redis_degrades_to_in_process_coalescing() -> None:
    errors = Counter()
    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    _, flight = replica(dead, hooks=CacheHooks(redis_error=errors))
    backend = Backend()
    tasks = [backend.run(flight, ["k"]) for _ in range(3)]
    await wait_until(lambda: len(backend.calls) == 1)
    backend.gate.set()
    assert await asyncio.gather(*tasks) == [[value_for("k")]] * 3
    assert errors.calls == ["lock"]  # then the breaker skips Redis (no publish/unlock attempts)
    await dead.aclose()


class RoundTrips:
    """Counts client round trips to Redis (each command, pipeline or script call takes one pool connection)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.count = 0
        pool = client.connection_pool
        original = pool.get_connection

        async def counting(*args: object, **kwargs: object):
            self.count += 1
            return await original(*args, **kwargs)

        pool.get_connection = counting  # type: ignore[method-assign]


async def test_redis_hits_are_served_by_the_lookup_and_counted_as_cached(redis_client: aioredis.Redis) -> None:
    writer_cache, writer = replica(redis_client)
    reader_cache, reader = replica(redis_client)
    cached_key, new_key = writer_cache.keys(unique("l2"), "1", None, ["cached", "new"])
    backend = Backend()
    backend.gate.set()
    await writer.run([cached_key], backend.compute_for([cached_key]))
    await writer.wait_idle()

    fetched = await reader.get([cached_key, new_key, cached_key], backend.compute_for([cached_key, new_key]))
    assert fetched.values == [value_for(cached_key), value_for(new_key), value_for(cached_key)]
    assert fetched.cached == 2  # positions answered by the cache (Redis here: the reader's L1 was empty)
    assert backend.calls == [[cached_key], [new_key]]
    assert reader_cache.peek_keys([cached_key]) == [value_for(cached_key)]  # copied into L1
    await reader.wait_idle()
    assert await redis_client.exists(LOCK_PREFIX + cached_key, LOCK_PREFIX + new_key) == 0


async def test_a_miss_costs_one_round_trip_before_and_one_after_the_backend(redis_client: aioredis.Redis) -> None:
    trips = RoundTrips(redis_client)
    cache, flight = replica(redis_client)
    keys = cache.keys(unique("rt"), "1", None, ["a", "b", "c"])
    backend = Backend()

    task = backend.run(flight, keys)
    await wait_until(lambda: len(backend.calls) == 1)
    assert trips.count == 1  # lookup and lock of all three keys: one script call
    backend.gate.set()
    await task
    await flight.wait_idle()
    assert trips.count == 2  # stores and unlock: one pipeline
    assert await redis_client.exists(*(LOCK_PREFIX + k for k in keys)) == 0
    other, _ = replica(redis_client)
    assert await other.get_keys(keys) == [value_for(k) for k in keys]


async def test_locks_are_released_after_redis_lost_its_scripts(redis_client: aioredis.Redis) -> None:
    errors = Counter()
    cache, flight = replica(redis_client, hooks=CacheHooks(redis_error=errors))
    first, second = cache.keys(unique("noscript"), "1", None, ["first", "second"])
    backend = Backend()
    backend.gate.set()
    await flight.run([first], backend.compute_for([first]))
    await flight.wait_idle()
    await redis_client.script_flush()  # e.g. a Redis restart: the scripts' SHAs are unknown again
    assert await flight.run([second], backend.compute_for([second])) == [value_for(second)]
    await flight.wait_idle()
    assert await redis_client.exists(LOCK_PREFIX + second) == 0
    assert await redis_client.get(second) is not None
    assert errors.calls == []


async def test_concurrent_misses_share_round_trips(redis_client: aioredis.Redis) -> None:
    trips = RoundTrips(redis_client)
    cache, flight = replica(redis_client)
    keys = cache.keys(unique("burst"), "1", None, [f"text {i}" for i in range(10)])
    backend = Backend()
    tasks = [backend.run(flight, [key]) for key in keys]  # ten requests, each leading its own key
    await wait_until(lambda: len(backend.calls) == 10)
    claims = trips.count
    assert claims <= 2  # the first claim goes alone, the nine made meanwhile share the next call
    backend.gate.set()
    assert await asyncio.gather(*tasks) == [[value_for(k)] for k in keys]
    await flight.wait_idle()
    assert trips.count - claims <= 2  # likewise the publishes
    assert await redis_client.exists(*(LOCK_PREFIX + k for k in keys)) == 0
