"""RateLimiter against a real redis-server: budgets, headers, token debits, overrides, Redis down, parity with the
`limits` library's sliding window, grouped checks."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from limits import RateLimitItemPerMinute
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from gateway.ratelimit import (
    Limits,
    RateLimitDecision,
    RateLimiter,
    RateLimitHooks,
    async_storage_uri,
    format_seconds,
    retry_after,
)
from gateway.ratelimit.batching import GroupCommit
from gateway.ratelimit.window import window_keys
from stack.process import free_port
from tests.redis_helpers import Counter, own_redis, unique, wait_until


@pytest.fixture
async def limiter_factory(redis_server) -> AsyncIterator:
    made: list[RateLimiter] = []

    def make(default: Limits, **kw: object) -> RateLimiter:
        kw.setdefault("timeout_ms", 500)
        limiter = RateLimiter(str(kw.pop("uri", redis_server.url)), default=default, **kw)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


def assert_refused(decision: RateLimitDecision, reason: str) -> None:
    assert not decision.allowed
    assert decision.reason == reason
    assert decision.retry_after_s is not None and 1 <= decision.retry_after_s <= 60
    assert decision.headers()["retry-after"] == str(decision.retry_after_s)
    assert reason in decision.message


async def test_requests_allowed_up_to_the_limit_then_refused(limiter_factory) -> None:
    limiter, who = limiter_factory(Limits(requests_per_min=3, tokens_per_min=1000)), unique("id")
    decisions = [await limiter.check(who) for _ in range(3)]
    assert all(d.allowed and not d.degraded for d in decisions)
    assert [d.remaining_requests for d in decisions] == [2, 1, 0]
    assert all(0 < (d.reset_requests_s or 0) <= 60 for d in decisions)

    headers = decisions[-1].headers()
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "1000"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert "retry-after" not in headers

    refused = await limiter.check(who)
    assert_refused(refused, "requests")
    assert refused.headers()["x-ratelimit-remaining-requests"] == "0"
    assert (await limiter.check(unique("id"))).allowed  # other identities are unaffected


async def test_processes_share_the_budget_through_redis(limiter_factory) -> None:
    limits, who = Limits(requests_per_min=2), unique("id")
    first, second = limiter_factory(limits), limiter_factory(limits)
    assert (await first.check(who)).allowed
    assert (await second.check(who)).remaining_requests == 0
    assert_refused(await first.check(who), "requests")


async def test_token_debit_exhausts_the_token_budget(limiter_factory) -> None:
    limiter, who = limiter_factory(Limits(requests_per_min=100, tokens_per_min=50)), unique("id")
    assert (await limiter.check(who)).allowed
    await limiter.debit_tokens(who, 30)
    decision = await limiter.check(who)
    assert decision.allowed and decision.remaining_tokens == 20
    await limiter.debit_tokens(who, 500)  # more than remains: the window is simply exhausted
    refused = await limiter.check(who)
    assert_refused(refused, "tokens")
    assert refused.headers()["x-ratelimit-remaining-tokens"] == "0"
    assert refused.remaining_requests == 98  # a refused request consumes nothing


async def test_token_estimate_must_fit_the_remaining_budget(limiter_factory) -> None:
    limiter, who = limiter_factory(Limits(tokens_per_min=10)), unique("id")
    assert (await limiter.check(who, cost_tokens_estimate=25)).allowed  # bigger than the budget: idle window ok
    await limiter.debit_tokens(who, 8)
    assert_refused(await limiter.check(who, cost_tokens_estimate=5), "tokens")
    decision = await limiter.check(who, cost_tokens_estimate=2)
    assert decision.allowed
    assert set(decision.headers()) == {f"x-ratelimit-{k}-tokens" for k in ("limit", "remaining", "reset")}


async def test_per_identity_overrides(limiter_factory) -> None:
    vip, plain, unlimited = unique("vip"), unique("plain"), unique("free")
    limiter = limiter_factory(Limits(requests_per_min=1),
                              overrides={vip: Limits(requests_per_min=3), unlimited: Limits()})
    assert limiter.limits_for(vip) == Limits(requests_per_min=3)
    assert limiter.limits_for(plain) == Limits(requests_per_min=1)
    assert [(await limiter.check(vip)).allowed for _ in range(4)] == [True, True, True, False]
    assert [(await limiter.check(plain)).allowed for _ in range(2)] == [True, False]

    decision = await limiter.check(unlimited)
    assert decision.allowed and decision.headers() == {}


async def test_shares_the_gateway_connection_pool(limiter_factory, redis_server) -> None:
    client = aioredis.from_url(redis_server.url)
    limiter = limiter_factory(Limits(requests_per_min=5), connection_pool=client.connection_pool)
    assert (await limiter.check(unique("id"))).remaining_requests == 4
    await limiter.aclose()
    assert await client.ping()  # closing the limiter left the shared pool usable
    await client.aclose()


async def test_unreachable_redis_fails_open_without_headers(limiter_factory) -> None:
    errors = Counter()
    limiter = limiter_factory(Limits(requests_per_min=1), uri=f"redis://127.0.0.1:{free_port()}/0",
                              metrics=RateLimitHooks(redis_error=errors))
    decision = await limiter.check("anyone")
    assert decision.allowed and decision.degraded
    assert decision.headers() == {}
    await limiter.debit_tokens("anyone", 10)  # skipped silently while the breaker is open
    assert errors.calls == ["check"]
    assert not await limiter.healthy()


async def test_stopped_redis_fails_closed_when_configured(tmp_path: Path, limiter_factory) -> None:
    errors = Counter()
    with own_redis(tmp_path) as server:
        limiter = limiter_factory(Limits(requests_per_min=10), uri=server.url, fail_open=False,
                                  timeout_ms=300, metrics=RateLimitHooks(redis_error=errors))
        assert (await limiter.check("anyone")).allowed
        assert await limiter.healthy()
        server.stop()
        started = time.monotonic()
        decision = await limiter.check("anyone")
        assert time.monotonic() - started < 0.3
    assert_refused(decision, "unavailable")
    assert decision.degraded and errors.calls == ["check"]
    assert "fail closed" in decision.message


async def test_frozen_redis_is_bounded_by_the_timeout(tmp_path: Path, limiter_factory) -> None:
    with own_redis(tmp_path) as server:
        limiter = limiter_factory(Limits(requests_per_min=10), uri=server.url, timeout_ms=100)
        assert (await limiter.check("anyone")).allowed
        server.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            decision = await limiter.check("anyone")
            assert time.monotonic() - started < 0.5
        finally:
            server.signal(signal.SIGCONT)
        assert decision.allowed and decision.degraded


def test_formats_and_validation() -> None:
    formatted = [format_seconds(x) for x in (0, 1, 0.25, 0.0001, 59.9999, -3)]
    assert formatted == ["0s", "1s", "0.25s", "0.001s", "60s", "0s"]
    assert [retry_after(x) for x in (0, 0.2, 1.5, 600)] == [1, 1, 2, 60]
    assert async_storage_uri("redis://h:1/0") == "async+redis://h:1/0"
    assert async_storage_uri("async+redis://h:1/0") == "async+redis://h:1/0"
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            Limits(requests_per_min=bad)  # type: ignore[arg-type]
    assert RateLimitDecision(allowed=True).message == ""


async def test_one_script_call_matches_the_librarys_sliding_window(limiter_factory, redis_server) -> None:
    """Windows written as the library writes them (a weighted previous one, a current one, one due to shift) are
    read and counted exactly as `limits`' own strategy reads them."""
    limits = Limits(requests_per_min=100, tokens_per_min=1000)
    limiter, who = limiter_factory(limits), unique("id")
    req, tok = RateLimitItemPerMinute(100, namespace="requests"), RateLimitItemPerMinute(1000, namespace="tokens")
    (req_prev, req_cur), (tok_prev, tok_cur) = (window_keys(limiter.storage, i, who) for i in (req, tok))
    client = aioredis.from_url(redis_server.url)
    # requests: previous window 40 hits with 31.2 s left (weight 0.52), current 10 hits
    await client.set(req_prev, 40, px=31_200)
    await client.set(req_cur, 10, px=100_000)
    # tokens: the current window is older than one period, so both readers shift it into the previous slot
    await client.set(tok_cur, 300, px=49_500)
    library = SlidingWindowCounterRateLimiter(limiter.storage)
    before = await library.get_window_stats(req, who)
    tokens_before = await library.get_window_stats(tok, who)
    decision = await limiter.check(who, cost_tokens_estimate=5)
    assert decision.allowed
    assert before.remaining == 100 - (20 + 10) and decision.remaining_requests == before.remaining - 1
    assert decision.remaining_tokens == tokens_before.remaining == 1000 - 247
    assert (await library.get_window_stats(req, who)).remaining == before.remaining - 1  # our hit, as it sees it
    assert await client.pttl(tok_prev) > 0
    await client.aclose()


async def test_concurrent_checks_share_calls_and_count_exactly(limiter_factory, redis_server) -> None:
    limiter, who = limiter_factory(Limits(requests_per_min=5)), unique("id")
    await limiter.check(unique("warm"))  # the script is loaded
    client = aioredis.from_url(redis_server.url)
    calls_before = await evalsha_calls(client)
    decisions = await asyncio.gather(*(limiter.check(who) for _ in range(20)))
    calls = await evalsha_calls(client) - calls_before
    await client.aclose()
    assert sorted(d.remaining_requests for d in decisions if d.allowed) == [0, 1, 2, 3, 4]
    assert [d.reason for d in decisions if not d.allowed] == ["requests"] * 15
    assert 1 <= calls < 20  # grouped: the checks made while a call was in flight went in one call


async def evalsha_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_group_commit_batches_while_a_call_is_in_flight() -> None:
    gate, batches = asyncio.Event(), []

    async def flush(items: list[int]) -> list[int]:
        batches.append(items)
        await gate.wait()
        return [i * 10 for i in items]

    group = GroupCommit(flush)
    first = asyncio.ensure_future(group.submit(1))
    await wait_until(lambda: len(batches) == 1)
    rest = [asyncio.ensure_future(group.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)  # all three are queued behind the call in flight
    rest[1].cancel()  # a caller that goes away does not disturb its batch
    gate.set()
    assert await first == 10
    assert [await rest[0], await rest[2]] == [20, 40]
    assert batches == [[1], [2, 3, 4]]


async def test_group_commit_failure_reaches_the_whole_batch() -> None:
    async def flush(items: list[int]) -> list[int]:
        raise ValueError("boom")

    group = GroupCommit(flush)
    outcomes = await asyncio.gather(*(group.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)


async def test_a_busy_key_leases_requests_and_headers_stay_exact(limiter_factory, redis_server) -> None:
    limiter, who = limiter_factory(Limits(requests_per_min=100_000)), unique("id")
    await limiter.check(unique("warm"))
    client = aioredis.from_url(redis_server.url)
    calls_before = await evalsha_calls(client)
    decisions = [await limiter.check(who) for _ in range(300)]
    calls = await evalsha_calls(client) - calls_before
    await client.aclose()
    assert all(d.allowed for d in decisions)
    # remaining counts down one per request, as if every request had been checked in Redis
    assert [d.remaining_requests for d in decisions] == list(range(99_999, 99_999 - 300, -1))
    assert calls < 40, f"300 checks of one busy key took {calls} Redis calls"


async def test_leases_never_admit_more_than_the_limit_across_processes(limiter_factory) -> None:
    limits, who = Limits(requests_per_min=1000), unique("id")
    first, second = limiter_factory(limits), limiter_factory(limits)

    async def admitted(limiter: RateLimiter) -> int:
        n = 0
        while (await limiter.check(who)).allowed:
            n += 1
        return n

    counts = await asyncio.gather(admitted(first), admitted(second))
    cap = 1000 // 100  # the largest lease: a lease left unused when the window ran out is the only waste
    assert 1000 - 2 * cap <= sum(counts) <= 1000, counts
    assert min(counts) > 0  # both processes drew on the shared budget


async def test_leases_off_checks_every_request(limiter_factory, redis_server) -> None:
    limiter, who = limiter_factory(Limits(requests_per_min=100_000), lease_ms=0), unique("id")
    await limiter.check(unique("warm"))
    client = aioredis.from_url(redis_server.url)
    calls_before = await evalsha_calls(client)
    for _ in range(20):
        await limiter.check(who)
    assert await evalsha_calls(client) - calls_before == 20
    await client.aclose()


async def test_a_low_token_budget_is_checked_exactly(limiter_factory) -> None:
    limiter, who = limiter_factory(Limits(requests_per_min=100_000, tokens_per_min=1000)), unique("id")
    for _ in range(50):
        await limiter.check(who)
    assert limiter.leases.planned(who, limiter.limits_for(who)) > 1  # busy: leasing
    await limiter.debit_tokens(who, 950)  # 5 % left: below the 10 % where leases stop
    decision = await limiter.check(who, cost_tokens_estimate=40)
    assert decision.allowed and decision.remaining_tokens == 50  # read from Redis, not from a lease
    assert limiter.leases.planned(who, limiter.limits_for(who)) == 1
    await limiter.debit_tokens(who, 50)
    assert_refused(await limiter.check(who), "tokens")


async def test_concurrent_requests_of_a_busy_key_share_one_lease(limiter_factory, redis_server) -> None:
    limiter, who = limiter_factory(Limits(requests_per_min=100_000)), unique("id")
    for _ in range(100):  # busy: the lease size grows to its cap
        await limiter.check(who)
    sent_before = limiter.checks_sent
    decisions = await asyncio.gather(*(limiter.check(who) for _ in range(64)))
    sent = limiter.checks_sent - sent_before
    assert all(d.allowed for d in decisions)
    remaining = [d.remaining_requests for d in decisions]
    assert len(set(remaining)) == 64 and max(remaining) - min(remaining) == 63  # each its own, none twice
    assert sent <= 3, f"64 concurrent requests of one busy key sent {sent} checks to Redis"
