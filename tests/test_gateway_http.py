"""Gateway HTTP behaviour that needs no Triton: errors, auth, admission, request ids, health, metrics.

The gateway runs as a real uvicorn server; Triton's addresses point at closed ports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack.redis import RedisServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for


@pytest.fixture
def no_triton(
    gateway_factory: Callable[..., RunningGateway], redis_server: RedisServer, gateway_keys: GatewayKeys
) -> RunningGateway:
    return gateway_factory(settings_for(None, redis_server, gateway_keys, max_body_bytes=64 * 1024))


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _assert_envelope(resp: httpx.Response, status: int, *, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    assert "Traceback" not in resp.text
    return error


def test_healthz_and_request_id(no_triton: RunningGateway) -> None:
    resp = httpx.get(f"{no_triton.url}/healthz", headers={"x-request-id": "abc-123"})
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
    assert resp.headers["x-request-id"] == "abc-123"
    generated = httpx.get(f"{no_triton.url}/healthz", headers={"x-request-id": "bad id\twith junk" + "x" * 300})
    assert generated.headers["x-request-id"] != "abc-123"
    assert len(generated.headers["x-request-id"]) == 32


def test_readyz_reports_triton_down(no_triton: RunningGateway) -> None:
    error = _assert_envelope(httpx.get(f"{no_triton.url}/readyz"), 503)
    assert "triton" in error["message"] and "redis" not in error["message"]
    assert httpx.get(f"{no_triton.url}/readyz").headers["retry-after"]


def test_missing_and_bad_keys_are_401(no_triton: RunningGateway) -> None:
    url = f"{no_triton.url}/v1/embeddings"
    body = {"model": "minilm", "input": "hi"}
    assert _assert_envelope(httpx.post(url, json=body), 401)["code"] == "invalid_api_key"
    assert _assert_envelope(httpx.post(url, json=body, headers=_auth("sk-wrong")), 401)["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=f"{no_triton.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model="minilm", input="hello")


def test_admin_scope(no_triton: RunningGateway, gateway_keys: GatewayKeys) -> None:
    url = f"{no_triton.url}/admin/keys"
    _assert_envelope(httpx.get(url, headers=_auth(gateway_keys.user)), 403)
    resp = httpx.get(url, headers=_auth(gateway_keys.admin))
    assert resp.status_code == 200
    names = {k["name"] for k in resp.json()["data"]}
    assert names == {"test-user", "test-admin"}
    assert gateway_keys.admin not in resp.text and "sha256" not in resp.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "minilm", "input": ""}, "input"),
        ({"model": "minilm", "input": []}, "input"),
        ({"model": "minilm", "input": ["a", ""]}, "input"),
        ({"model": "minilm", "input": [1, 2, 3]}, "input"),
        ({"model": "minilm", "input": [[1, 2], [3]]}, "input"),
        ({"model": "minilm", "input": ["a", 3]}, "input"),
        ({"model": "minilm", "input": {"a": 1}}, "input"),
        ({"input": "hi"}, "model"),
        ({"model": "minilm"}, "input"),
        ({"model": "minilm", "input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "minilm", "input": "hi", "dimensions": 0}, "dimensions"),
        ({"model": "minilm", "input": ["x"] * 2049}, "input"),
        ({"model": "minilm", "input": "x" * 40_000}, "input"),
    ],
)
def test_validation_errors_are_400_with_param(
    no_triton: RunningGateway, gateway_keys: GatewayKeys, body: dict, param: str
) -> None:
    resp = httpx.post(f"{no_triton.url}/v1/embeddings", json=body, headers=_auth(gateway_keys.user))
    _assert_envelope(resp, 400, param=param)


def test_token_inputs_message(no_triton: RunningGateway, gateway_keys: GatewayKeys) -> None:
    resp = httpx.post(f"{no_triton.url}/v1/embeddings", json={"model": "minilm", "input": [[1, 2]]},
                      headers=_auth(gateway_keys.user))
    assert "Token-array inputs are not supported" in _assert_envelope(resp, 400)["message"]


def test_openai_sdk_2049_inputs_is_bad_request(no_triton: RunningGateway, gateway_keys: GatewayKeys) -> None:
    client = openai.OpenAI(base_url=f"{no_triton.url}/v1", api_key=gateway_keys.user, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="minilm", input=["hello"] * 2049)
    assert info.value.param == "input"


def test_malformed_json_and_wrong_types(no_triton: RunningGateway, gateway_keys: GatewayKeys) -> None:
    headers = {**_auth(gateway_keys.user), "content-type": "application/json"}
    url = f"{no_triton.url}/v1/embeddings"
    assert _assert_envelope(httpx.post(url, content=b"{not json", headers=headers), 400)["code"] == "invalid_json"
    _assert_envelope(httpx.post(url, content=b"[1, 2]", headers=headers), 400)
    _assert_envelope(httpx.post(url, content=b"", headers=headers), 400)


def test_unknown_route_and_method(no_triton: RunningGateway, gateway_keys: GatewayKeys) -> None:
    _assert_envelope(httpx.get(f"{no_triton.url}/nope", headers=_auth(gateway_keys.user)), 404)
    _assert_envelope(httpx.get(f"{no_triton.url}/v1/embeddings", headers=_auth(gateway_keys.user)), 405)


def test_openapi_documents_the_embeddings_route(no_triton: RunningGateway) -> None:
    operation = httpx.get(f"{no_triton.url}/openapi.json").json()["paths"]["/v1/embeddings"]["post"]
    assert "input" in operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/EmbeddingResponse"}
    assert "parameters" not in operation  # the one dependency reads the request itself: nothing else to document


def test_oversize_body_is_413(no_triton: RunningGateway, gateway_keys: GatewayKeys) -> None:
    big = {"model": "minilm", "input": ["x" * 1000] * 100}  # ≈ 100 kB > 64 kB limit
    resp = httpx.post(f"{no_triton.url}/v1/embeddings", json=big, headers=_auth(gateway_keys.user))
    assert _assert_envelope(resp, 413)["code"] == "payload_too_large"


def test_oversize_chunked_body_is_413(no_triton: RunningGateway, gateway_keys: GatewayKeys) -> None:
    def chunks():
        yield b'{"model": "minilm", "input": ["'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"]}'

    headers = {**_auth(gateway_keys.user), "content-type": "application/json"}
    resp = httpx.post(f"{no_triton.url}/v1/embeddings", content=chunks(), headers=headers)
    assert "content-length" not in resp.request.headers
    _assert_envelope(resp, 413)


def test_backend_down_is_503_with_retry_after(no_triton: RunningGateway, gateway_keys: GatewayKeys) -> None:
    resp = httpx.post(f"{no_triton.url}/v1/embeddings", json={"model": "minilm", "input": "hi"},
                      headers=_auth(gateway_keys.user))
    _assert_envelope(resp, 503)
    assert resp.headers["retry-after"] == "1"


def test_invalid_model_names_are_404(no_triton: RunningGateway, gateway_keys: GatewayKeys) -> None:
    headers = _auth(gateway_keys.user)
    for name in ("..", "a/b", "x" * 200):
        resp = httpx.post(f"{no_triton.url}/v1/embeddings", json={"model": name, "input": "hi"}, headers=headers)
        assert _assert_envelope(resp, 404)["code"] == "model_not_found"
    resp = httpx.get(f"{no_triton.url}/v2/models/..%2F..%2Fetc/config", headers=headers)
    assert resp.status_code == 404


def test_metrics_parse(no_triton: RunningGateway) -> None:
    httpx.get(f"{no_triton.url}/healthz")
    resp = httpx.get(f"{no_triton.url}/metrics")
    assert resp.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    assert "gateway_requests" in families
    assert "gateway_request_duration_seconds" in families
    assert "gateway_in_flight_requests" in families
    routes = {s.labels.get("route") for s in families["gateway_requests"].samples}
    assert "/healthz" in routes


def _in_flight(gw: RunningGateway) -> float:
    text = httpx.get(f"{gw.url}/metrics").text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "gateway_in_flight_requests")
    return family.samples[0].value - 1  # minus this /metrics request


def test_in_flight_bound_is_fast_503(
    gateway_factory: Callable[..., RunningGateway], redis_server: RedisServer, gateway_keys: GatewayKeys
) -> None:
    gw = gateway_factory(settings_for(None, redis_server, gateway_keys, max_in_flight=1))
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b'{"model": "minilm", '
        release.wait(30)
        yield b'"input": "hi"}'

    headers = {**_auth(gateway_keys.user), "content-type": "application/json"}
    holder = threading.Thread(
        target=lambda: httpx.post(f"{gw.url}/v1/embeddings", content=slow_body(), headers=headers, timeout=60)
    )
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while _in_flight(gw) < 1:  # readiness check: the first request is being served
            assert time.monotonic() < deadline
        resp = httpx.get(f"{gw.url}/v1/models", headers=_auth(gateway_keys.user))
        error = _assert_envelope(resp, 503)
        assert error["code"] == "overloaded" and resp.headers["retry-after"] == "1"
        assert httpx.get(f"{gw.url}/healthz").status_code == 200  # probes bypass the bound
    finally:
        release.set()
        holder.join(30)
