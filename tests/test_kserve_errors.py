"""Errors under `/v2` have KServe v2's shape `{"error": "<message>"}`, whoever answers them.

`tritonclient.http` and `tritonclient.http.aio` pointed at the gateway must raise a readable
`InferenceServerException` (status and message) for the gateway's own refusals — missing key, rate limit, body
size, validation, Triton unreachable, unknown routes — and for Triton's (an unknown model, its text once), with the
same status codes and headers as before; `/v1` keeps the OpenAI envelope for the same refusals.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from gateway.admission import body_too_large
from gateway.config import ApiKeyConfig, hash_api_key
from gateway.errors import ERROR_TABLE, GatewayError, RateLimitedError, error_response, is_kserve_path
from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.envelope import assert_envelope, assert_kserve_error, auth
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for

MODEL = "minilm"
BODY_LIMIT = 4096
CLIENTS = ["sync", "aio"]
RATE_LIMIT_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")

Call = Callable[[Any], Any]  # given a tritonclient client: the call (a coroutine with the aio client)


@pytest.fixture
def limited_key() -> str:
    """A fresh key (fresh rate-limit identity) allowed one request per minute on the `strict` gateway."""
    return f"sk-limited-{secrets.token_hex(16)}"


@pytest.fixture
def strict(gateway_factory: Callable[..., RunningGateway], triton_server: TritonServer, redis_server: RedisServer,
           gateway_keys: GatewayKeys, limited_key: str) -> RunningGateway:
    """A gateway on the session's Triton with a small body limit and one key limited to 1 request/minute."""
    limited = ApiKeyConfig(name=f"limited-{limited_key[-8:]}", sha256=hash_api_key(limited_key), requests_per_minute=1)
    return gateway_factory(settings_for(triton_server, redis_server, gateway_keys, max_body_bytes=BODY_LIMIT,
                                        api_keys=[*gateway_keys.config(), limited]))


@pytest.fixture
def no_triton(gateway_factory: Callable[..., RunningGateway], redis_server: RedisServer,
              gateway_keys: GatewayKeys) -> RunningGateway:
    """A gateway whose Triton addresses are closed ports."""
    return gateway_factory(settings_for(None, redis_server, gateway_keys))


@pytest.fixture
def triton_client(triton_server: TritonServer) -> Iterator[httpclient.InferenceServerClient]:
    """A client straight to Triton, for Triton's own messages."""
    client = httpclient.InferenceServerClient(triton_server.http_url)
    yield client
    client.close()


def text_input(text: str) -> httpclient.InferInput:
    """The `text` input of MiniLM holding one string."""
    tensor = httpclient.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    return tensor


def infer(model: str, text: str = "hello", key: str | None = None) -> Call:
    """An inference call, with `key` as bearer token when given."""
    return lambda client: client.infer(model, [text_input(text)], headers=auth(key) if key else None)


def refusal(kind: str, address: str, call: Call) -> InferenceServerException:
    """The exception `call` raises through the sync or aio `tritonclient.http` client on `address`."""
    if kind == "aio":
        return asyncio.run(aio_refusal(address, call))
    client = httpclient.InferenceServerClient(address)
    try:
        with pytest.raises(InferenceServerException) as info:
            call(client)
    finally:
        client.close()
    return info.value


async def aio_refusal(address: str, call: Call) -> InferenceServerException:
    """`refusal` with the aio client (created inside the loop that runs it)."""
    client = aioclient.InferenceServerClient(address)
    try:
        with pytest.raises(InferenceServerException) as info:
            await call(client)
    finally:
        await client.close()
    return info.value


def assert_readable(exc: InferenceServerException, status: int, message: str) -> None:
    """Status and message as tritonclient reports them, and `str(exc)` (which crashed on a dict message)."""
    assert exc.status() == str(status)
    assert exc.message() == message
    assert str(exc) == f"[{status}] {message}"


# --- the shape is chosen by the path, for every error class ----------------------------------------------------------


@pytest.mark.parametrize(("path", "kserve"), [("/v2", True), ("/v2/models/m/infer", True), ("/v2/", True),
                                              ("/v1/embeddings", False), ("/v20", False), ("/healthz", False),
                                              ("/admin/keys", False), ("/", False)])
def test_kserve_paths(path: str, kserve: bool) -> None:
    assert is_kserve_path(path) is kserve


@pytest.mark.parametrize("cls", list(ERROR_TABLE))
def test_every_error_class_has_both_shapes_with_one_status(cls: type[GatewayError]) -> None:
    error = cls("refused for a reason", param="p", code="c", headers={"x-ratelimit-limit-requests": "5"})
    kserve = error_response(error, path="/v2/models/m/infer")
    openai = error_response(error, path="/v1/embeddings")
    assert kserve.status_code == openai.status_code == ERROR_TABLE[cls].status
    assert kserve.body == b'{"error":"refused for a reason"}'
    assert httpx.Response(200, content=openai.body).json()["error"] == {
        "message": "refused for a reason", "type": ERROR_TABLE[cls].type, "param": "p", "code": "c"}
    for response in (kserve, openai):
        assert response.headers["x-ratelimit-limit-requests"] == "5"
        assert response.headers["content-type"] == "application/json"
        assert response.headers.get("retry-after") == (None if ERROR_TABLE[cls].retry_after_s is None
                                                       else str(ERROR_TABLE[cls].retry_after_s))


def test_quota_refusal_keeps_should_retry_on_v2() -> None:
    response = error_response(RateLimitedError("quota used up", quota=True), path="/v2/models/m/infer")
    assert response.status_code == 429 and response.headers["x-should-retry"] == "false"


# --- tritonclient against the gateway: the gateway's own refusals ---------------------------------------------------


@pytest.mark.parametrize("kind", CLIENTS)
def test_missing_and_wrong_key_are_401(kind: str, gateway: RunningGateway) -> None:
    missing = "Missing API key: send 'Authorization: Bearer <key>'"
    assert_readable(refusal(kind, gateway.address, infer(MODEL)), 401, missing)
    assert_readable(refusal(kind, gateway.address, lambda c: c.get_model_metadata(MODEL)), 401, missing)
    assert_readable(refusal(kind, gateway.address, infer(MODEL, key="sk-wrong")), 401,
                    "Incorrect API key provided")
    raw = httpx.get(f"{gateway.url}/v2/models/{MODEL}", headers={"x-request-id": "kserve-401"})
    assert assert_kserve_error(raw, 401) == missing
    assert raw.headers["www-authenticate"] == "Bearer" and raw.headers["x-request-id"] == "kserve-401"


@pytest.mark.parametrize("kind", CLIENTS)
def test_rate_limited_key_is_429_with_headers(kind: str, strict: RunningGateway, limited_key: str) -> None:
    url = f"{strict.url}/v2/models/{MODEL}/infer"
    body = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [["hi"]]}]}
    answers = [httpx.post(url, json=body, headers=auth(limited_key), timeout=30) for _ in range(3)]
    assert answers[0].status_code == 200, answers[0].text
    refused = answers[-1]
    message = assert_kserve_error(refused, 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert all(name in refused.headers for name in RATE_LIMIT_HEADERS), refused.headers
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-request-id" in refused.headers
    reason = "Rate limit reached for requests per minute (limit 1). Please retry after "
    assert message.startswith(reason)
    exc = refusal(kind, strict.address, infer(MODEL, key=limited_key))
    assert_readable(exc, 429, exc.message())
    assert exc.message().startswith(reason)


@pytest.mark.parametrize("kind", CLIENTS)
def test_oversized_body_is_413(kind: str, strict: RunningGateway, gateway_keys: GatewayKeys) -> None:
    exc = refusal(kind, strict.address, infer(MODEL, "x" * (2 * BODY_LIMIT), gateway_keys.user))
    assert_readable(exc, 413, body_too_large(BODY_LIMIT))


def test_oversized_chunked_body_is_413(strict: RunningGateway, gateway_keys: GatewayKeys) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [["'
        yield from (b"x" * 1024 for _ in range(8))
        yield b'"]]}]}'

    resp = httpx.post(f"{strict.url}/v2/models/{MODEL}/infer", content=chunks(), headers=auth(gateway_keys.user))
    assert "content-length" not in resp.request.headers
    assert assert_kserve_error(resp, 413) == body_too_large(BODY_LIMIT)


@pytest.mark.parametrize("kind", CLIENTS)
def test_triton_down_is_503_with_retry_after(kind: str, no_triton: RunningGateway,
                                                   gateway_keys: GatewayKeys) -> None:
    unavailable = "The inference server is unavailable"
    key = gateway_keys.user
    assert_readable(refusal(kind, no_triton.address, infer(MODEL, key=key)), 503, unavailable)
    assert_readable(refusal(kind, no_triton.address, lambda c: c.get_model_metadata(MODEL, headers=auth(key))),
                    503, unavailable)
    raw = httpx.get(f"{no_triton.url}/v2/models/{MODEL}", headers=auth(key))
    assert assert_kserve_error(raw, 503) == unavailable
    assert raw.headers["retry-after"] == "1"


@pytest.mark.parametrize("kind", CLIENTS)
def test_triton_control_routes_are_404_not_forwarded(kind: str, gateway: RunningGateway,
                                                           gateway_keys: GatewayKeys) -> None:
    key = gateway_keys.admin
    exc = refusal(kind, gateway.address, lambda c: c.load_model(MODEL, headers=auth(key)))
    assert_readable(exc, 404, "no such route")


def test_invalid_inference_request_and_wrong_method(gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    headers = auth(gateway_keys.user)
    bad = httpx.post(f"{gateway.url}/v2/models/{MODEL}/infer", headers=headers,
                     json={"inputs": [{"name": "text", "shape": [-1], "datatype": "BYTES", "data": ["a"]}]})
    assert assert_kserve_error(bad, 400) == "tensor 'text' dimensions must be non-negative"
    wrong = httpx.delete(f"{gateway.url}/v2/models/{MODEL}", headers=headers)
    assert assert_kserve_error(wrong, 405) == "Method Not Allowed"
    assert "GET" in wrong.headers["allow"]
    unknown = httpx.get(f"{gateway.url}/v2/nothing/here", headers=headers)
    assert assert_kserve_error(unknown, 404) == "no such route"


# --- Triton's own refusals: relayed once ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENTS)
def test_unknown_model_is_tritons_message_once(kind: str, gateway: RunningGateway, gateway_keys: GatewayKeys,
                                                     triton_client: httpclient.InferenceServerClient) -> None:
    key = gateway_keys.user
    for call in (infer("nope", key=key), lambda c: c.get_model_metadata("nope", headers=auth(key)),
                 lambda c: c.get_model_config("nope", headers=auth(key))):
        with pytest.raises(InferenceServerException) as direct:
            call(triton_client)  # Triton itself, for its status and wording
        exc = refusal(kind, gateway.address, call)
        assert "unknown model" in exc.message().lower() and "{" not in exc.message()
        assert_readable(exc, int(direct.value.status()), direct.value.message())
    raw = httpx.post(f"{gateway.url}/v2/models/nope/infer", headers=auth(key),
                     json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
    assert assert_kserve_error(raw, (400, 404)) == "Request for unknown model: 'nope' is not found"
    assert all(name in raw.headers for name in RATE_LIMIT_HEADERS)


# --- /v1 keeps the OpenAI envelope for the same refusals --------------------------------------------------------------


def test_v1_keeps_the_openai_envelope(no_triton: RunningGateway, gateway_keys: GatewayKeys) -> None:
    url = f"{no_triton.url}/v1/embeddings"
    body = {"model": MODEL, "input": "hi"}
    assert assert_envelope(httpx.post(url, json=body), 401)["code"] == "invalid_api_key"
    down = httpx.post(url, json=body, headers=auth(gateway_keys.user))
    assert assert_envelope(down, 503)["message"] == "The inference server is unavailable"
    assert down.headers["retry-after"] == "1"
    assert assert_envelope(httpx.get(f"{no_triton.url}/nothing/here"), 404)["message"] == "no such route"
