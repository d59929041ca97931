"""Per-key budgets: 50 concurrent requests against a budget that affords 10, settlement with real usage
(also for a stream that breaks), and the 429 with `x-should-retry: false`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from gateway.config import ApiKeyConfig, KeyBudget, hash_api_key
from gateway.routing.config import Price
from gateway.usage.budget import micro_usd, period_window
from gateway.usage.totals import estimate_tokens
from stack.redis import RedisServer
from tests.fake_llm import Fault
from tests.fixtures.fake_llm import FakeUpstream, cloud
from tests.fixtures.gateway import GatewayKeys, RunningGateway

CONTENT = "how much is this"
MESSAGES = [{"role": "user", "content": CONTENT}]
MAX_TOKENS = 10
PRICE = Price(input_per_1m=1000.0, output_per_1m=2000.0)


def reservation_micro() -> int:
    """What one request reserves: prompt estimate + max tokens at the route's price."""
    return micro_usd(PRICE, estimate_tokens([CONTENT], 1.0), MAX_TOKENS)


def keys_with_budget(keys: GatewayKeys, budget: KeyBudget) -> list[ApiKeyConfig]:
    return [ApiKeyConfig(name="test-user", sha256=hash_api_key(keys.user), budget=budget),
            ApiKeyConfig(name="test-admin", sha256=hash_api_key(keys.admin), scopes=frozenset({"admin"}))]


def routes(fake: FakeUpstream) -> dict[str, Any]:
    return {"deployments": {"paid": cloud(fake, "up-paid", price=PRICE.model_dump())},
            "routes": {"chat": {"deployments": ["paid"]}}}


def budget_key(name: str = "test-user", period: str = "day") -> str:
    return f"tritonstack:budget:{name}:{period_window(period, time.time())[0]}"


async def test_concurrent_requests_never_overspend(chat_gateway: Callable[..., RunningGateway],
                                                   fake_llm: FakeUpstream, gateway_keys: GatewayKeys,
                                                   redis_server: RedisServer) -> None:
    limit_micro = 10 * reservation_micro()
    budget = KeyBudget(usd=limit_micro / 1_000_000)
    gw = chat_gateway(routes(fake_llm), api_keys=keys_with_budget(gateway_keys, budget))
    fake_llm.state.fault("up-paid", Fault(delay_s=0.3))  # every reservation happens before any settles
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=gateway_keys.user, max_retries=0, timeout=10)
    redis = aioredis.Redis.from_url(redis_server.url)
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, int(await redis.hget(budget_key(), "usd") or 0))
            await asyncio.sleep(0.005)

    async def one() -> str:
        try:
            await client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=MAX_TOKENS)
        except openai.RateLimitError as exc:
            assert exc.response.headers["x-should-retry"] == "false"
            assert exc.body["code"] == "budget_exceeded"
            assert "budget of API key 'test-user' cannot cover this request" in exc.message
            return "refused"
        return "served"

    watcher = asyncio.create_task(watch())
    try:
        outcomes = await asyncio.gather(*(one() for _ in range(50)))
    finally:
        stop.set()
        await watcher
    served = outcomes.count("served")
    assert 1 <= served <= 10
    assert outcomes.count("refused") == 50 - served
    assert len(fake_llm.state.calls("up-paid")) == served
    assert peak <= limit_micro
    # settled with the real usage the upstream reported (less than the reservations)
    real = sum(micro_usd(PRICE, c.usage["prompt_tokens"], c.usage["completion_tokens"])
               for c in fake_llm.state.calls("up-paid"))
    await _until(lambda: _spent(redis), real)
    async with httpx.AsyncClient() as http:
        admin = {"Authorization": f"Bearer {gateway_keys.admin}"}
        report = (await http.get(f"{gw.url}/admin/usage", headers=admin)).json()
    assert report["budgets"]["test-user"]["usd_spent"] == pytest.approx(real / 1e6)
    assert report["by_key"]["test-user"]["cost_usd"] == pytest.approx(real / 1e6)
    await redis.aclose()
    await client.close()


async def _spent(redis: aioredis.Redis) -> int:
    return int(await redis.hget(budget_key(), "usd") or 0)


async def _until(read: Callable[[], Any], expected: int, within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    value = None
    while time.monotonic() < deadline:
        value = await read()
        if value == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {expected}, last saw {value}")


async def test_broken_stream_is_settled_with_what_was_streamed(
        chat_gateway: Callable[..., RunningGateway], fake_llm: FakeUpstream, gateway_keys: GatewayKeys,
        redis_server: RedisServer) -> None:
    gw = chat_gateway(routes(fake_llm), api_keys=keys_with_budget(gateway_keys, KeyBudget(usd=100.0)))
    fake_llm.state.fault("up-paid", Fault(cut_after=3))  # role, "Echo:", " how" — then the connection drops
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=gateway_keys.user, max_retries=0, timeout=10)
    stream = await client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=MAX_TOKENS,
                                                  stream=True)
    with contextlib.suppress(openai.APIError):
        async for _ in stream:
            pass
    streamed = "Echo: how"
    expected = micro_usd(PRICE, estimate_tokens([CONTENT], 1.0), len(streamed.encode()))
    redis = aioredis.Redis.from_url(redis_server.url)
    await _until(lambda: _spent(redis), expected)
    assert expected < reservation_micro()
    await redis.aclose()
    await client.close()


async def test_tokens_budget_and_no_max_tokens(chat_gateway: Callable[..., RunningGateway], fake_llm: FakeUpstream,
                                               gateway_keys: GatewayKeys) -> None:
    gw = chat_gateway(routes(fake_llm) | {"policy": {"default_max_tokens": 50}},
                      api_keys=keys_with_budget(gateway_keys, KeyBudget(tokens=60, period="month")))
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=gateway_keys.user, max_retries=0, timeout=10)
    with pytest.raises(openai.RateLimitError, match="monthly budget"):  # 23 prompt (estimate) + 50 > 60
        await client.chat.completions.create(model="chat", messages=MESSAGES)
    await client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=5)
    (call,) = fake_llm.state.calls("up-paid")
    assert call.body["max_tokens"] == 5
    await client.close()


def _principal(name: str = "test-user") -> Any:
    from gateway.auth import Principal

    return Principal(name=name, identity=f"key:{name}", scopes=frozenset())


def _ledger(url: str, keys: GatewayKeys, budget: KeyBudget) -> tuple[Any, aioredis.Redis]:
    from gateway.cache.guard import RedisGuard
    from gateway.config import GatewaySettings
    from gateway.usage.budget import BudgetLedger

    settings = GatewaySettings(api_keys=keys_with_budget(keys, budget))
    client = aioredis.Redis.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2)
    return BudgetLedger(client, RedisGuard(timeout_ms=200), settings), client


async def test_ledger_reserves_atomically_and_settles(redis_server: RedisServer, gateway_keys: GatewayKeys) -> None:
    from tests.fixtures.fake_llm import clear_chat_state

    clear_chat_state(redis_server.url)
    ledger, client = _ledger(redis_server.url, gateway_keys, KeyBudget(usd=1.0, tokens=1000))

    async def attempt() -> Any:
        try:
            return await ledger.reserve(_principal(), 100_000, 10)  # $0.10 each: ten fit
        except Exception as exc:  # the refusal is the point
            return exc

    results = await asyncio.gather(*(attempt() for _ in range(100)))
    held = [r for r in results if not isinstance(r, Exception)]
    assert len(held) == 10
    assert all(getattr(r, "code", None) == "budget_exceeded" for r in results if isinstance(r, Exception))
    assert int(await client.hget(budget_key(), "usd")) == 1_000_000
    for reservation in held:
        await ledger.settle(reservation, 40_000, 4)
    assert int(await client.hget(budget_key(), "usd")) == 400_000
    assert int(await client.hget(budget_key(), "tokens")) == 40
    assert await ledger.reserve(_principal("test-admin"), 10**9, 10**9) is None  # no budget, no cap
    await client.aclose()


async def test_ledger_fails_closed_without_redis(gateway_keys: GatewayKeys) -> None:
    from gateway.errors import BackendUnavailableError
    from stack.process import free_port

    ledger, client = _ledger(f"redis://127.0.0.1:{free_port()}/0", gateway_keys, KeyBudget(usd=1.0))
    with pytest.raises(BackendUnavailableError, match="budget store is unreachable"):
        await ledger.reserve(_principal(), 1, 1)
    await client.aclose()
