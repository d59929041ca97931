"""EmbeddingCache against a real redis-server: keys, L1/L2, clearing, Redis down or frozen."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from gateway.cache import (
    CachedItem,
    CacheHooks,
    CacheMode,
    EmbeddingCache,
    cache_status,
    make_keys,
    normalize_params,
    parse_cache_control,
)
from gateway.cache.keys import Params
from tests.redis_helpers import Counter, own_redis, unique


@pytest.fixture
async def redis_client(redis_server) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


def item(seed: int, dim: int = 8) -> CachedItem:
    return CachedItem.from_array(np.arange(dim, dtype=np.float32) + seed, tokens=seed + 1)


def make_cache(redis: aioredis.Redis | None, **kw: object) -> EmbeddingCache:
    opts: dict = {"l1_max_items": 100, "ttl_s": 60, "timeout_ms": 200} | kw
    return EmbeddingCache(redis, **opts)


async def get_many(cache: EmbeddingCache, model: str, version: str, params: Params, texts: list[str]
                   ) -> list[CachedItem | None]:
    return await cache.get_keys(cache.keys(model, version, params, texts))


async def set_many(cache: EmbeddingCache, model: str, version: str, params: Params, texts: list[str],
                   items: list[CachedItem]) -> None:
    await cache.set_keys(cache.keys(model, version, params, texts), items)


def test_item_pack_roundtrip_and_layout() -> None:
    it = CachedItem.from_array([1.5, -2.0, 3.25], tokens=7)
    raw = it.pack()
    assert raw[:4] == (7).to_bytes(4, "little")
    assert raw[4:] == np.array([1.5, -2.0, 3.25], dtype="<f4").tobytes()
    assert CachedItem.unpack(raw) == it
    assert it.array().tolist() == [1.5, -2.0, 3.25]
    assert CachedItem.unpack(b"\x01\x00") is None
    assert CachedItem.unpack(raw + b"\x00") is None


def test_key_layout_and_field_isolation() -> None:
    (key,) = make_keys("minilm", 1, {"b": 1, "a": "x"}, ["hello"])
    assert re.fullmatch(r"tritonstack:emb:minilm:1:[0-9a-f]{64}", key)
    assert normalize_params({"b": 1, "a": "x"}) == '{"a":"x","b":1}'
    assert make_keys("minilm", "1", '{"a":"x","b":1}', ["hello"]) == [key]
    # fields are length-prefixed: moving characters between fields changes the key
    assert make_keys("m", "1", "ab", ["c"]) != make_keys("m", "1", "a", ["bc"])
    # ':' and glob characters in names are escaped in the prefix
    (odd,) = make_keys("a:b*", "1", None, ["x"])
    assert odd.startswith("tritonstack:emb:a%3Ab%2A:1:")


async def test_roundtrip_and_isolation_by_model_version_params(redis_client: aioredis.Redis) -> None:
    cache, model = make_cache(redis_client), unique("m")
    texts = ["alpha", "beta"]
    await set_many(cache, model, "1", {"dim": 8}, texts, [item(1), item(2)])
    assert await get_many(cache, model, "1", {"dim": 8}, texts) == [item(1), item(2)]
    assert await get_many(cache, model, "2", {"dim": 8}, texts) == [None, None]
    assert await get_many(cache, model, "1", {"dim": 4}, texts) == [None, None]
    assert await get_many(cache, unique("other"), "1", {"dim": 8}, texts) == [None, None]
    assert await get_many(cache, model, "1", {"dim": 8}, ["alpha", "gamma"]) == [item(1), None]

    fresh = make_cache(redis_client)  # another process: empty L1, same Redis
    assert await get_many(fresh, model, "1", {"dim": 8}, texts) == [item(1), item(2)]
    assert len(fresh.l1) == 2  # L2 hits were copied into L1
    ttl = await redis_client.ttl(cache.keys(model, "1", {"dim": 8}, ["alpha"])[0])
    assert 0 < ttl <= 60


async def test_l1_is_a_bounded_lru() -> None:
    cache = make_cache(None, l1_max_items=3)
    keys = [f"k{i}" for i in range(4)]
    cache.put_local(keys[:3], [item(0), item(1), item(2)])
    assert cache.peek_keys(["k0"]) == [item(0)]  # k0 becomes most recently used
    cache.put_local(["k3"], [item(3)])
    assert len(cache.l1) == 3
    assert cache.peek_keys(keys) == [item(0), None, item(2), item(3)]
    assert await cache.get_keys(["k1"]) == [None]  # no Redis: L1 only


async def test_l1_entries_expire() -> None:
    cache = make_cache(None, l1_ttl_s=0.0)
    cache.put_local(["k"], [item(0)])
    assert cache.peek_keys(["k"]) == [None]


async def test_clear_model_removes_only_that_model(redis_client: aioredis.Redis) -> None:
    cache, model, other = make_cache(redis_client), unique("clear"), unique("keep")
    prefixed = model + ":x"  # a model whose name extends the cleared one must survive
    for version in ("1", "2"):
        await set_many(cache, model, version, None, ["a", "b", "c"], [item(1), item(2), item(3)])
    await set_many(cache, other, "1", None, ["a"], [item(9)])
    await set_many(cache, prefixed, "1", None, ["a"], [item(8)])

    assert await cache.clear_model(model) == 6
    assert await get_many(cache, model, "1", None, ["a", "b", "c"]) == [None, None, None]
    assert await get_many(make_cache(redis_client), model, "2", None, ["a"]) == [None]
    assert await get_many(cache, other, "1", None, ["a"]) == [item(9)]
    assert await get_many(cache, prefixed, "1", None, ["a"]) == [item(8)]
    assert await cache.clear_model(model) == 0


@pytest.mark.parametrize(
    ("header", "mode"),
    [
        (None, CacheMode.DEFAULT),
        ("", CacheMode.DEFAULT),
        ("max-age=60", CacheMode.DEFAULT),
        ("no-cache", CacheMode.REFRESH),
        ("No-Cache", CacheMode.REFRESH),
        ("max-age=0", CacheMode.REFRESH),
        ("no-store", CacheMode.BYPASS),
        ("no-cache, no-store", CacheMode.BYPASS),
    ],
)
def test_parse_cache_control(header: str | None, mode: CacheMode) -> None:
    assert parse_cache_control(header) is mode


def test_cache_modes_and_status() -> None:
    assert (CacheMode.DEFAULT.lookup, CacheMode.DEFAULT.store) == (True, True)
    assert (CacheMode.REFRESH.lookup, CacheMode.REFRESH.store) == (False, True)
    assert (CacheMode.BYPASS.lookup, CacheMode.BYPASS.store) == (False, False)
    assert [cache_status(3, 3), cache_status(0, 3), cache_status(1, 3)] == ["hit", "miss", "partial"]


async def test_redis_stopped_means_misses_skipped_sets_and_counted_errors(tmp_path: Path) -> None:
    errors = Counter()
    with own_redis(tmp_path) as server:
        client = aioredis.from_url(server.url)
        cache = make_cache(client, l1_max_items=0, timeout_ms=300, metrics=CacheHooks(redis_error=errors))
        await set_many(cache, "m", "1", None, ["a"], [item(1)])
        assert await get_many(cache, "m", "1", None, ["a"]) == [item(1)]
        server.stop()

        started = time.monotonic()
        assert await get_many(cache, "m", "1", None, ["a", "b"]) == [None, None]
        assert time.monotonic() - started < 0.3
        assert errors.calls == ["get"]

        # within the breaker cooldown Redis is not tried again: instant, no new error
        started = time.monotonic()
        await set_many(cache, "m", "1", None, ["b"], [item(2)])
        assert await get_many(cache, "m", "1", None, ["a"]) == [None]
        assert time.monotonic() - started < 0.05
        assert errors.calls == ["get"]

        cache.guard.reset()  # cooldown over: the next call tries Redis again and fails again
        await set_many(cache, "m", "1", None, ["b"], [item(2)])
        assert errors.calls == ["get", "set"]
        await client.aclose()


async def test_frozen_redis_costs_at_most_the_timeout(tmp_path: Path) -> None:
    errors = Counter()
    with own_redis(tmp_path) as server:
        client = aioredis.from_url(server.url)
        cache = make_cache(client, l1_max_items=0, timeout_ms=100, metrics=CacheHooks(redis_error=errors))
        await set_many(cache, "m", "1", None, ["a"], [item(1)])
        server.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert await get_many(cache, "m", "1", None, ["a"]) == [None]
            assert time.monotonic() - started < 0.5
            assert errors.calls == ["get"]
        finally:
            server.signal(signal.SIGCONT)
        cache.guard.reset()
        # the cancelled command's connection was discarded; a new one works
        assert await get_many(cache, "m", "1", None, ["a"]) == [item(1)]
        await client.aclose()


def test_rejects_a_decoding_client() -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        make_cache(aioredis.Redis(decode_responses=True))
