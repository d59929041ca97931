"""Routing through the gateway with the `openai` SDK: fallback on 500 / hang / 429 / broken streams, overflow,
circuit breakers (open, half-open probe, recovery) and deployments that cannot serve (Triton model missing)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_llm import Fault
from tests.fixtures.fake_llm import FakeUpstream, cloud
from tests.fixtures.gateway import GatewayKeys, RunningGateway

MESSAGES = [{"role": "user", "content": "route me please"}]


def client_for(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=10)


def two_deployments(fake: FakeUpstream, policy: dict[str, Any] | None = None, primary: dict | None = None,
                    ) -> dict[str, Any]:
    return {
        "policy": {"total_timeout_s": 2.0, "backoff_base_s": 0.01, **(policy or {})},
        "deployments": {"primary": cloud(fake, "up-primary", **(primary or {})),
                        "secondary": cloud(fake, "up-secondary")},
        "routes": {"chat": {"deployments": ["primary", "secondary"]}},
    }


def served_by(gw: RunningGateway, key: str, **kwargs: Any) -> str:
    raw = client_for(gw, key).chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, **kwargs)
    raw.parse()
    return raw.headers["x-served-by"]


def metric(gw: RunningGateway, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw.url}/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_primary_500_falls_back_to_secondary(chat_gateway: Callable[..., RunningGateway], fake_llm: FakeUpstream,
                                             gateway_keys: GatewayKeys) -> None:
    gw = chat_gateway(two_deployments(fake_llm))
    fake_llm.state.fault("up-primary", Fault(status=500))
    assert served_by(gw, gateway_keys.user) == "secondary"
    assert len(fake_llm.state.calls("up-primary")) == 1
    assert metric(gw, "gateway_chat_fallbacks_total", deployment="primary", reason="server_error") == 1
    fake_llm.state.clear()
    assert served_by(gw, gateway_keys.user) == "primary"


def test_primary_hang_falls_back_within_budget(chat_gateway: Callable[..., RunningGateway],
                                               fake_llm: FakeUpstream, gateway_keys: GatewayKeys) -> None:
    gw = chat_gateway(two_deployments(fake_llm, primary={"timeout_s": 0.3}))
    fake_llm.state.fault("up-primary", Fault(hang_s=3.0))
    started = time.monotonic()
    assert served_by(gw, gateway_keys.user) == "secondary"
    assert time.monotonic() - started < 1.5
    assert metric(gw, "gateway_chat_fallbacks_total", deployment="primary", reason="timeout") == 1


def test_total_budget_gives_504(chat_gateway: Callable[..., RunningGateway], fake_llm: FakeUpstream,
                                gateway_keys: GatewayKeys) -> None:
    gw = chat_gateway(two_deployments(fake_llm, policy={"total_timeout_s": 0.4}))
    fake_llm.state.fault("up-primary", Fault(hang_s=3.0))
    fake_llm.state.fault("up-secondary", Fault(hang_s=3.0))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client_for(gw, gateway_keys.user).chat.completions.create(model="chat", messages=MESSAGES)
    assert info.value.status_code == 504
    assert time.monotonic() - started < 1.0


def test_429_retry_after_is_honoured(chat_gateway: Callable[..., RunningGateway], fake_llm: FakeUpstream,
                                     gateway_keys: GatewayKeys) -> None:
    single = {"policy": {"total_timeout_s": 2.0, "backoff_base_s": 0.01},
              "deployments": {"only": cloud(fake_llm, "up-only")}, "routes": {"chat": {"deployments": ["only"]}}}
    gw = chat_gateway(single)
    fake_llm.state.fault("up-only", Fault(status=429, retry_after=0.3), times=1)
    started = time.monotonic()
    assert served_by(gw, gateway_keys.user) == "only"
    assert time.monotonic() - started >= 0.3  # waited for the upstream's retry-after, then retried
    assert [c.status for c in fake_llm.state.calls("up-only")] == [429, 200]
    # a retry-after beyond the policy's bound is not waited for: the client gets an honest 429
    fake_llm.state.fault("up-only", Fault(status=429, retry_after=30))
    with pytest.raises(openai.RateLimitError) as info:
        client_for(gw, gateway_keys.user).chat.completions.create(model="chat", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "30"


def test_429_moves_to_secondary_at_once(chat_gateway: Callable[..., RunningGateway], fake_llm: FakeUpstream,
                                        gateway_keys: GatewayKeys) -> None:
    gw = chat_gateway(two_deployments(fake_llm))
    fake_llm.state.fault("up-primary", Fault(status=429, retry_after=5))
    started = time.monotonic()
    assert served_by(gw, gateway_keys.user) == "secondary"
    assert time.monotonic() - started < 1.0


def test_stream_broken_before_first_token_falls_back(chat_gateway: Callable[..., RunningGateway],
                                                     fake_llm: FakeUpstream, gateway_keys: GatewayKeys) -> None:
    gw = chat_gateway(two_deployments(fake_llm))
    fake_llm.state.fault("up-primary", Fault(cut_after=1))  # the role chunk, then the connection drops
    raw = client_for(gw, gateway_keys.user).chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, stream=True)
    assert raw.headers["x-served-by"] == "secondary"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "Echo: route me please"
    assert metric(gw, "gateway_chat_fallbacks_total", deployment="primary", reason="stream_broken") == 1


def test_stream_broken_after_first_token_ends_with_error(chat_gateway: Callable[..., RunningGateway],
                                                         fake_llm: FakeUpstream, gateway_keys: GatewayKeys) -> None:
    gw = chat_gateway(two_deployments(fake_llm))
    fake_llm.state.fault("up-primary", Fault(cut_after=3))
    stream = client_for(gw, gateway_keys.user).chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="broke after it started"):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Echo: route"
    assert fake_llm.state.calls("up-secondary") == []  # never switched provider mid-stream


def test_breaker_opens_half_opens_and_recovers(chat_gateway: Callable[..., RunningGateway],
                                               fake_llm: FakeUpstream, gateway_keys: GatewayKeys) -> None:
    breaker = {"failure_threshold": 3, "cooldown_s": 0.5}
    gw = chat_gateway(two_deployments(fake_llm, policy={"breaker": breaker, "retry_rounds": 0}))
    fake_llm.state.fault("up-primary", Fault(status=500))
    for _ in range(3):
        assert served_by(gw, gateway_keys.user) == "secondary"
    assert len(fake_llm.state.calls("up-primary")) == 3
    admin = {"Authorization": f"Bearer {gateway_keys.admin}"}
    states = {d["name"]: d["breaker"]["state"] for d in httpx.get(f"{gw.url}/admin/deployments",
                                                                    headers=admin).json()["deployments"]}
    assert states == {"primary": "open", "secondary": "closed"}
    assert metric(gw, "gateway_breaker_state", deployment="primary") == 1
    for _ in range(3):
        assert served_by(gw, gateway_keys.user) == "secondary"
    assert len(fake_llm.state.calls("up-primary")) == 3  # open: the primary is not called
    assert metric(gw, "gateway_chat_fallbacks_total", deployment="primary", reason="breaker_open") == 3
    time.sleep(0.6)
    assert served_by(gw, gateway_keys.user) == "secondary"  # half-open probe fails: open again
    assert len(fake_llm.state.calls("up-primary")) == 4
    assert served_by(gw, gateway_keys.user) == "secondary"
    assert len(fake_llm.state.calls("up-primary")) == 4
    fake_llm.state.clear()
    time.sleep(0.6)
    assert served_by(gw, gateway_keys.user) == "primary"  # the probe succeeds: closed
    assert served_by(gw, gateway_keys.user) == "primary"
    assert metric(gw, "gateway_breaker_state", deployment="primary") == 0
    assert metric(gw, "gateway_breaker_transitions_total", deployment="primary", state="half_open") == 2


def test_only_deployment_is_never_ejected(chat_gateway: Callable[..., RunningGateway], fake_llm: FakeUpstream,
                                          gateway_keys: GatewayKeys) -> None:
    single = {"policy": {"retry_rounds": 0, "breaker": {"failure_threshold": 1, "cooldown_s": 60}},
              "deployments": {"only": cloud(fake_llm, "up-only")}, "routes": {"chat": {"deployments": ["only"]}}}
    gw = chat_gateway(single)
    fake_llm.state.fault("up-only", Fault(status=502))
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as info:
            client_for(gw, gateway_keys.user).chat.completions.create(model="chat", messages=MESSAGES)
        assert info.value.status_code == 503
        assert "server error (502)" in info.value.message
    assert len(fake_llm.state.calls("up-only")) == 3  # still tried every time: the honest upstream error
    fake_llm.state.clear()
    assert served_by(gw, gateway_keys.user) == "only"


def test_overflow_goes_to_next_at_once(chat_gateway: Callable[..., RunningGateway], fake_llm: FakeUpstream,
                                       gateway_keys: GatewayKeys) -> None:
    gw = chat_gateway(two_deployments(fake_llm, primary={"max_in_flight": 1}))
    # the primary's one slot stays busy long enough for the others to arrive, however loaded the machine is
    fake_llm.state.fault("up-primary", Fault(delay_s=0.8))
    results: list[str] = []

    def call() -> None:
        results.append(served_by(gw, gateway_keys.user))

    threads = [threading.Thread(target=call) for _ in range(3)]
    threads[0].start()
    deadline = time.monotonic() + 10
    while not fake_llm.state.calls("up-primary") and time.monotonic() < deadline:
        time.sleep(0.01)  # poll until the first request holds the primary's only slot
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["primary", "secondary", "secondary"]
    assert metric(gw, "gateway_chat_fallbacks_total", deployment="primary", reason="overflow") == 2


def test_triton_deployment_without_model(chat_gateway: Callable[..., RunningGateway], fake_llm: FakeUpstream,
                                         gateway_keys: GatewayKeys) -> None:
    routes = {"deployments": {"local": {"kind": "triton", "model": "no-such-llm", "timeout_s": 1.0},
                              "cloud": cloud(fake_llm, "up-cloud")},
              "routes": {"local-only": {"deployments": ["local"]}, "chat": {"deployments": ["local", "cloud"]}}}
    gw = chat_gateway(routes)
    with pytest.raises(openai.APIStatusError) as info:
        client_for(gw, gateway_keys.user).chat.completions.create(model="local-only", messages=MESSAGES)
    assert info.value.status_code == 503
    assert info.value.body["code"] in {"upstream_unavailable", "deployment_model_not_found"}
    assert served_by(gw, gateway_keys.user) == "cloud"
    # local deployments keep prompts as they are; cloud ones get PII redacted (auto)
    client_for(gw, gateway_keys.user).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "a@b.example"}])
    assert fake_llm.state.calls("up-cloud")[-1].text == "[EMAIL_1]"


def test_upstream_400_is_returned_not_retried(chat_gateway: Callable[..., RunningGateway],
                                              fake_llm: FakeUpstream, gateway_keys: GatewayKeys) -> None:
    gw = chat_gateway(two_deployments(fake_llm))
    fake_llm.state.fault("up-primary", Fault(status=400))
    with pytest.raises(openai.BadRequestError, match="upstream rejected the request: injected 400"):
        client_for(gw, gateway_keys.user).chat.completions.create(model="chat", messages=MESSAGES)
    assert fake_llm.state.calls("up-secondary") == []


def test_weighted_tier_spreads_load() -> None:
    import random

    from gateway.routing.config import RoutesConfig
    from gateway.routing.table import weighted_order

    config = RoutesConfig.model_validate({
        "deployments": {"a": {"kind": "openai", "base_url": "http://a", "model": "m", "weight": 3},
                        "b": {"kind": "openai", "base_url": "http://b", "model": "m", "weight": 1}},
        "routes": {"chat": {"deployments": [["a", "b"]]}}})

    class Dep:
        def __init__(self, name: str) -> None:
            self.name, self.config = name, config.deployments[name]

    rng = random.Random(7)
    firsts = [weighted_order([Dep("a"), Dep("b")], rng)[0].name for _ in range(4000)]  # type: ignore[list-item]
    assert 0.70 < firsts.count("a") / len(firsts) < 0.80
