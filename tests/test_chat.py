"""Chat completions through the gateway with the official `openai` SDK against the fake upstream:
contract (non-stream, stream, usage chunk, validation), cache, redaction, usage and audit records."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.fixtures.fake_llm import FakeUpstream, cloud
from tests.fixtures.gateway import GatewayKeys, RunningGateway

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there friend"}]


def client_for(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=10)


def one_route(fake: FakeUpstream, **route: Any) -> dict[str, Any]:
    return {"deployments": {"primary": cloud(fake, "up-primary")},
            "routes": {"chat": {"deployments": ["primary"], **route}}}


@pytest.fixture
def gw(chat_gateway: Callable[..., RunningGateway], fake_llm: FakeUpstream) -> RunningGateway:
    return chat_gateway(one_route(fake_llm))


def test_non_stream(gw: RunningGateway, fake_llm: FakeUpstream, gateway_keys: GatewayKeys) -> None:
    raw = client_for(gw, gateway_keys.user).chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, max_tokens=50, temperature=0.5, top_p=0.9, stop=["zzz"], user="u1")
    completion = raw.parse()
    assert raw.headers["x-served-by"] == "primary"
    assert completion.choices[0].message.content == "Echo: hello there friend"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "chat"
    (call,) = fake_llm.state.calls("up-primary")
    assert call.headers["authorization"] == f"Bearer {fake_llm.key}"  # resolved from api_key_env
    assert call.body["max_tokens"] == 50 and call.body["top_p"] == 0.9 and call.body["stop"] == ["zzz"]
    assert call.body["messages"] == MESSAGES and not call.body["stream"]
    assert completion.usage is not None
    assert completion.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == call.usage


def test_stream_with_usage(gw: RunningGateway, fake_llm: FakeUpstream, gateway_keys: GatewayKeys) -> None:
    raw = client_for(gw, gateway_keys.user).chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        max_completion_tokens=3)
    assert raw.headers["x-served-by"] == "primary"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hello there"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    (call,) = fake_llm.state.calls("up-primary")
    assert call.body["max_completion_tokens"] == 3
    assert last.usage.prompt_tokens == call.usage["prompt_tokens"]
    assert last.usage.completion_tokens == call.usage["completion_tokens"]
    assert len({c.id for c in chunks}) == 1


def test_logprobs_pass_through_to_a_cloud_deployment_and_back(gw: RunningGateway, fake_llm: FakeUpstream,
                                                               gateway_keys: GatewayKeys) -> None:
    client = client_for(gw, gateway_keys.user)
    completion = client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0, logprobs=True,
                                                top_logprobs=2)
    (call,) = fake_llm.state.calls("up-primary")
    assert call.body["logprobs"] is True and call.body["top_logprobs"] == 2
    entries = completion.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == completion.choices[0].message.content == "Echo: hello there friend"
    assert all(e.logprob == -0.5 and [t.token for t in e.top_logprobs] == ["alt0", "alt1"] for e in entries)
    chunks = list(client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0, logprobs=True,
                                                 stream=True))
    streamed = [e.token for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert streamed == [e.token for e in entries]
    again = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, temperature=0,
                                                              logprobs=True)
    assert "x-cache" not in again.headers  # not cached: the cache keeps text only
    assert len(fake_llm.state.calls("up-primary")) == 3
    plain = client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0)
    assert plain.choices[0].logprobs is None


def test_stream_ends_with_done(gw: RunningGateway, gateway_keys: GatewayKeys) -> None:
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", headers={"Authorization": f"Bearer {gateway_keys.user}"},
                      json={"model": "chat", "messages": MESSAGES, "stream": True}) as resp:
        events = [line for line in resp.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert not any('"usage":{' in e for e in events)  # no usage chunk unless asked


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"logit_bias": {"1234": -100}}, "logit_bias"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"temperature": 3}, "temperature"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content"),
])
def test_validation_errors_are_400_with_param(gw: RunningGateway, gateway_keys: GatewayKeys, body: dict,
                                              param: str) -> None:
    payload = {"model": "chat", "messages": MESSAGES, **body}
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=payload,
                      headers={"Authorization": f"Bearer {gateway_keys.user}"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_neutral_values_of_refused_parameters_are_accepted(gw: RunningGateway, gateway_keys: GatewayKeys) -> None:
    payload = {"model": "chat", "messages": MESSAGES, "logit_bias": {}, "response_format": {"type": "text"},
               "tools": None, "n": 1}
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=payload,
                      headers={"Authorization": f"Bearer {gateway_keys.user}"})
    assert resp.status_code == 200, resp.text


def test_unknown_model_is_404_and_bad_key_401(gw: RunningGateway, gateway_keys: GatewayKeys) -> None:
    with pytest.raises(openai.NotFoundError):
        client_for(gw, gateway_keys.user).chat.completions.create(model="nope", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        client_for(gw, "sk-wrong").chat.completions.create(model="chat", messages=MESSAGES)


def test_cached_deterministic_request(gw: RunningGateway, fake_llm: FakeUpstream, gateway_keys: GatewayKeys) -> None:
    client = client_for(gw, gateway_keys.user)
    first = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, temperature=0)
    assert first.headers["x-cache"] == "miss"
    assert len(fake_llm.state.calls("up-primary")) == 1
    again = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, temperature=0)
    assert again.headers["x-cache"] == "hit" and again.headers["x-served-by"] == "primary"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    stream = client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hello there friend"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert len(fake_llm.state.calls("up-primary")) == 1  # both answered from the cache
    # a seed is deterministic too; no-store bypasses; temperature > 0 without a seed is never cached
    client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0,
                                   extra_headers={"Cache-Control": "no-store"})
    client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0.7)
    client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0.7)
    assert len(fake_llm.state.calls("up-primary")) == 4


def test_stream_answer_is_cached_for_later_requests(gw: RunningGateway, fake_llm: FakeUpstream,
                                                    gateway_keys: GatewayKeys) -> None:
    client = client_for(gw, gateway_keys.user)
    list(client.chat.completions.create(model="chat", messages=MESSAGES, seed=7, stream=True))
    done = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, seed=7)
    assert done.headers["x-cache"] == "hit"
    assert done.parse().choices[0].message.content == "Echo: hello there friend"
    assert len(fake_llm.state.calls("up-primary")) == 1


def test_pii_is_redacted_before_leaving(chat_gateway: Callable[..., RunningGateway], fake_llm: FakeUpstream,
                                        gateway_keys: GatewayKeys) -> None:
    gw = chat_gateway(one_route(fake_llm))
    secret = ("Contact jane.doe@example.com or +44 20 7946 0958, card 4111 1111 1111 1111, "
              "IBAN GB82 WEST 1234 5698 7654 32, from 192.168.10.20 / 2001:db8::7")
    client_for(gw, gateway_keys.user).chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": secret}, {"role": "user", "content": "jane.doe@example.com"}])
    (call,) = fake_llm.state.calls("up-primary")
    sent = call.text
    for original in ("jane.doe@example.com", "7946 0958", "4111 1111 1111 1111", "GB82", "192.168.10.20",
                     "2001:db8::7"):
        assert original not in sent
    for placeholder in ("[EMAIL_1]", "[PHONE_1]", "[CARD_1]", "[IBAN_1]", "[IP_1]", "[IP_2]"):
        assert placeholder in sent
    assert call.body["messages"][1]["content"] == "[EMAIL_1]"  # same value, same placeholder
    assert "[EMAIL_1]" in orjson.dumps(call.body).decode()


def test_redaction_can_be_turned_off(chat_gateway: Callable[..., RunningGateway], fake_llm: FakeUpstream,
                                     gateway_keys: GatewayKeys) -> None:
    gw = chat_gateway(one_route(fake_llm, redact_pii="off"))
    client_for(gw, gateway_keys.user).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "mail jane@example.com"}])
    assert "jane@example.com" in fake_llm.state.calls("up-primary")[0].text


def test_usage_and_audit_match_upstream(gw: RunningGateway, fake_llm: FakeUpstream, gateway_keys: GatewayKeys,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.chat.audit")
    client = client_for(gw, gateway_keys.user)
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES,
                                                           extra_headers={"x-request-id": "audit-req-1"})
    raw.parse()
    stream = client.chat.completions.create(model="chat", messages=MESSAGES, stream=True,
                                            extra_headers={"x-request-id": "audit-req-2"})
    list(stream)
    calls = fake_llm.state.calls("up-primary")
    reported = [c.usage for c in calls]
    admin = httpx.get(f"{gw.url}/admin/usage", headers={"Authorization": f"Bearer {gateway_keys.admin}"})
    assert admin.status_code == 200
    mine = admin.json()["by_key"]["test-user"]
    assert mine["requests"] == 2
    assert mine["prompt_tokens"] == sum(u["prompt_tokens"] for u in reported)
    assert mine["completion_tokens"] == sum(u["completion_tokens"] for u in reported)
    assert admin.json()["by_model"]["chat"]["total_tokens"] == sum(u["total_tokens"] for u in reported)
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.chat.audit"]
    by_id = {line["request_id"]: line for line in lines}
    for rid, usage in zip(("audit-req-1", "audit-req-2"), reported, strict=True):
        line = by_id[rid]
        assert line["key"] == "test-user" and line["model"] == "chat" and line["deployment"] == "primary"
        assert line["prompt_tokens"] == usage["prompt_tokens"]
        assert line["completion_tokens"] == usage["completion_tokens"]
        assert line["status"] == 200 and line["latency_ms"] > 0
        assert "prompt" not in line and "hello there" not in orjson.dumps(line).decode()
    assert by_id["audit-req-2"]["stream"] is True


def test_redis_down_still_serves(gateway_factory: Callable[..., RunningGateway], fake_llm: FakeUpstream,
                                 gateway_keys: GatewayKeys, tmp_path: Any) -> None:
    """Cache, breakers and usage totals fail soft without Redis; only a key with a budget is refused (503)."""
    import yaml

    from gateway.config import ApiKeyConfig, KeyBudget, hash_api_key
    from tests.fixtures.gateway import settings_for

    routes = tmp_path / "routes.yaml"
    routes.write_text(yaml.safe_dump(one_route(fake_llm)))
    keys = [ApiKeyConfig(name="test-user", sha256=hash_api_key(gateway_keys.user)),
            ApiKeyConfig(name="test-admin", sha256=hash_api_key(gateway_keys.admin), budget=KeyBudget(usd=5))]
    gw = gateway_factory(settings_for(None, None, gateway_keys, routes_file=routes, api_keys=keys,
                                      redis_timeout_ms=50))
    client = client_for(gw, gateway_keys.user)
    seen = []
    for _ in range(2):
        done = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, temperature=0)
        assert done.parse().choices[0].message.content == "Echo: hello there friend"
        seen.append(done.headers["x-cache"])
    assert seen == ["miss", "hit"]  # the in-process L1 still caches
    assert len(fake_llm.state.calls("up-primary")) == 1
    with pytest.raises(openai.APIStatusError) as info:
        client_for(gw, gateway_keys.admin).chat.completions.create(model="chat", messages=MESSAGES)
    assert info.value.status_code == 503 and info.value.body["code"] == "budget_unavailable"
