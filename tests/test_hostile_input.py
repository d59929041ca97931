"""Hostile input (issue 9, item 5), explicit cases against a real gateway (real Triton and Redis; chat routed to
the fake cloud LLM): huge bodies, oversize arrays and strings, invalid UTF-8, deep nesting, wrong content
types, header injection in `x-request-id`, path traversal in model names, `dimensions` and `max_tokens` abuse.

Each asserts the status and the OpenAI envelope (`tests/envelope.py`). Cases already covered without Triton in
`tests/test_gateway_http.py` (64 kB body limit, 2049 inputs, 40k-character input, malformed JSON) are not
repeated; here they run at the default limits, through the full stack, at hostile sizes.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.envelope import assert_envelope, assert_kserve_error, auth, full_gateway
from tests.fake_llm import FakeLLMServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway, start_gateway

MODEL = "minilm"
MIB = 1 << 20
JSON = {"content-type": "application/json"}
CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gw(triton_server: TritonServer, redis_server: RedisServer, gateway_keys: GatewayKeys,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """One gateway for the module at default limits (8 MiB bodies, 2048 inputs, 32,768 characters per input)."""
    upstream = FakeLLMServer().start()
    started: list[RunningGateway] = []

    def start(settings: object) -> RunningGateway:
        started.append(start_gateway(settings))  # type: ignore[arg-type]
        return started[-1]

    try:
        yield full_gateway(start, triton_server, redis_server, gateway_keys, upstream, tmp_path_factory.mktemp("h"))
    finally:
        for gateway in started:
            gateway.stop()
        upstream.stop()


@pytest.fixture(scope="module")
def headers(gateway_keys: GatewayKeys) -> dict[str, str]:
    return {**auth(gateway_keys.user), **JSON}


def raw_request(gw: RunningGateway, head: bytes, body: bytes = b"") -> bytes:
    """Send exact bytes (no client-side validation or normalization); the whole answer, connection closed."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as conn:
        conn.sendall(head + body)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def raw_path(gw: RunningGateway, method: str, path: str, key: str, body: bytes | None = None) -> httpx.Response:
    """A request whose path goes on the wire exactly as given (http.client neither normalizes nor re-encodes)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={**auth(key), **JSON})
        answer = conn.getresponse()
        return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())
    finally:
        conn.close()


# --- sizes ---------------------------------------------------------------------------------------------------------


def test_huge_body_with_content_length_is_413_before_reading(gw: RunningGateway, headers: dict[str, str]) -> None:
    body = b'{"model": "minilm", "input": "' + b"x" * (9 * MIB) + b'"}'
    started = time.perf_counter()
    resp = httpx.post(f"{gw.url}/v1/embeddings", content=body, headers=headers, timeout=30)
    assert_envelope(resp, 413, code="payload_too_large")
    assert time.perf_counter() - started < 5


def test_huge_chunked_body_is_413(gw: RunningGateway, headers: dict[str, str]) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "minilm", "input": "'
        for _ in range(9 * 16):
            yield b"x" * (MIB // 16)
        yield b'"}'

    resp = httpx.post(f"{gw.url}/v1/chat/completions", content=chunks(), headers=headers, timeout=30)
    assert "content-length" not in resp.request.headers
    assert_envelope(resp, 413, code="payload_too_large")


def test_2049_inputs_never_reach_triton(gw: RunningGateway, headers: dict[str, str]) -> None:
    resp = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": ["a"] * 2049}, headers=headers)
    assert_envelope(resp, 400, param="input")
    ok = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": ["a"] * 2048}, headers=headers,
                    timeout=60)
    assert ok.status_code == 200 and len(ok.json()["data"]) == 2048


def test_one_megabyte_string(gw: RunningGateway, headers: dict[str, str]) -> None:
    """Embeddings: 400 `input` (32,768 characters per input). Chat: accepted up to the body limit (policy:
    the deployment's context window judges prompts; budgets reserve on the estimated prompt size)."""
    big = "word " * (MIB // 5)
    resp = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": big}, headers=headers)
    assert_envelope(resp, 400, param="input")
    resp = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": ["ok", big]}, headers=headers)
    assert_envelope(resp, 400, param="input")
    chat = httpx.post(f"{gw.url}/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": "chat", "messages": [{"role": "user", "content": big}], "max_tokens": 3})
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["prompt_tokens"] > MIB // 5


# --- encoding and structure ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/chat/completions", "/v1/jobs"])
def test_invalid_utf8_is_400(gw: RunningGateway, headers: dict[str, str], path: str) -> None:
    bodies = [b'{"model": "minilm", "input": "caf\xe9"}', b'{"model": "chat", "messages": [{"role": "user", '
              b'"content": "\xff\xfe"}]}', b'{"type": "embeddings", "model": "minilm", "input": ["\xc3\x28"]}',
              b'{"model": "minilm", "input": "\xed\xa0\x80"}']  # last: an encoded lone surrogate
    for body in bodies:
        assert_envelope(httpx.post(f"{gw.url}{path}", content=body, headers=headers), 400)


def test_invalid_utf8_in_a_jsonl_upload_is_400(gw: RunningGateway, headers: dict[str, str]) -> None:
    resp = httpx.post(f"{gw.url}/v1/jobs", content=b'"ok"\n"caf\xe9"\n', params={"model": MODEL},
                      headers={**headers, "content-type": "application/x-ndjson"})
    assert_envelope(resp, 400)


@pytest.mark.parametrize(("path", "content_type"), [
    ("/v1/embeddings", "application/json"), ("/v1/chat/completions", "application/json"),
    ("/v1/jobs", "application/json"), ("/v1/jobs", "application/x-ndjson"),
])
def test_deep_nesting_is_400_fast(gw: RunningGateway, headers: dict[str, str], path: str, content_type: str) -> None:
    for body in (b"[" * 100_000, b'{"model": "minilm", "input": ' + b"[" * 100_000,
                 b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        started = time.perf_counter()
        resp = httpx.post(f"{gw.url}{path}", content=body, headers={**headers, "content-type": content_type},
                          params={"model": MODEL})
        assert_envelope(resp, 400)
        assert time.perf_counter() - started < 2
    assert httpx.get(f"{gw.url}/healthz").status_code == 200


def test_deep_nesting_through_the_kserve_passthrough(gw: RunningGateway, headers: dict[str, str],
                                                     triton_server: TritonServer) -> None:
    """/v2 JSON bodies are checked by the gateway before Triton sees them; Triton lives on."""
    resp = httpx.post(f"{gw.url}/v2/models/{MODEL}/infer", content=b"[" * 100_000, headers=headers, timeout=30)
    assert assert_kserve_error(resp, 400) == "inference request body is not valid JSON"  # Triton answered 500
    assert httpx.get(f"http://{triton_server.http_url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{gw.url}/readyz").status_code == 200


@pytest.mark.parametrize("body", [
    # found by tests/test_fuzz.py: this one request killed the Triton process (huge declared shape)
    b'{"inputs": [{"name": "x", "datatype": "BOOL", "shape": [8644937, 1722961068615836, 49195], "data": [true]}]}',
    b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [100000000000], "data": ["a"]}]}',
    # these were Triton 500s relayed to the caller
    b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}], "outputs": [""]}',
    b'{"inputs": [{"name": "x", "datatype": "BOOL", "shape": [2], "data": true}]}',
    b'{"inputs": [{"name": "x", "datatype": "BOOL", "shape": [-635], "data": [true]}]}',
    b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [1]}]}',
    b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]}',
    b'{"inputs": "x"}', b'{"inputs": []}', b'[]', b'{"id": 5, "inputs": [{"name": "text", "datatype": "BYTES", '
    b'"shape": [1], "data": ["hi"]}]}',
])
def test_hostile_inference_requests_never_reach_triton(gw: RunningGateway, headers: dict[str, str],
                                                       triton_server: TritonServer, body: bytes) -> None:
    resp = httpx.post(f"{gw.url}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=30)
    assert_kserve_error(resp, 400)
    assert httpx.get(f"http://{triton_server.http_url}/v2/health/live").status_code == 200


def test_valid_inference_request_still_served(gw: RunningGateway, headers: dict[str, str]) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [["hello"], ["world"]]}]}
    resp = httpx.post(f"{gw.url}/v2/models/{MODEL}/infer", json=body, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    assert {o["name"] for o in resp.json()["outputs"]} >= {"embedding"}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml", "json"])
@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/chat/completions", "/v1/jobs"])
def test_wrong_content_type_is_415(gw: RunningGateway, gateway_keys: GatewayKeys, path: str,
                                   content_type: str | None) -> None:
    request = httpx.Request("POST", f"{gw.url}{path}", content=b'{"model": "minilm", "input": "hi"}',
                            headers=auth(gateway_keys.user))
    if content_type is None:
        request.headers.pop("content-type", None)
    else:
        request.headers["content-type"] = content_type
    with httpx.Client() as client:
        resp = client.send(request)
    assert_envelope(resp, 415, param="Content-Type", code="unsupported_media_type")


def test_json_content_types_with_parameters_are_accepted(gw: RunningGateway, headers: dict[str, str]) -> None:
    for content_type in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json"):
        resp = httpx.post(f"{gw.url}/v1/embeddings", content=b'{"model": "minilm", "input": "hi"}',
                          headers={**headers, "content-type": content_type})
        assert resp.status_code == 200, (content_type, resp.text)


# --- headers and paths ---------------------------------------------------------------------------------------------


def _answer_head(answer: bytes) -> tuple[int, dict[bytes, bytes]]:
    head, _, _ = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = dict(line.split(b": ", 1) for line in lines[1:] if b": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}


@pytest.mark.parametrize("value", [
    b"abc\rInjected: yes", b"abc\nInjected: yes", "idé-ü-✓".encode(), b"x" * 8000,
    b"a b", b"<script>alert(1)</script>", b"abc\x00def", b"abc;rm -rf /",
])
def test_request_id_injection_is_never_echoed(gw: RunningGateway, value: bytes) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-request-id: " + value + b"\r\n\r\n"
    answer = raw_request(gw, head)
    status, fields = _answer_head(answer)
    assert b"Injected" not in answer.split(b"\r\n\r\n")[0]
    assert value not in answer
    if status == 200:  # the server accepted the header: the gateway must have replaced the id
        assert len(fields[b"x-request-id"]) == 32 and fields[b"x-request-id"].isalnum()
    else:  # refused by the HTTP parser before the gateway ran (uvicorn's own 400)
        assert status == 400


def test_safe_request_id_is_kept(gw: RunningGateway) -> None:
    resp = httpx.get(f"{gw.url}/healthz", headers={"x-request-id": "trace-1.2:3_4"})
    assert resp.headers["x-request-id"] == "trace-1.2:3_4"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/models/../infer"), ("POST", "/v2/models/%2e%2e/infer"), ("POST", "/v2/models/..%2f../infer"),
    ("POST", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer"), ("GET", "/v2/models/.."), ("GET", "/v2/models/%2E%2E/config"),
    ("GET", "/v2/models/minilm/versions/..%2f1"), ("GET", "/v2/models/minilm/versions/1%00/config"),
    ("GET", "/v1/models/..%2f..%2fetc%2fpasswd"), ("GET", "/v1/models/%2e%2e"), ("GET", "/v2/models/.%2e/ready"),
    ("GET", "/v2/../admin/keys"), ("GET", "/v2/models/minilm/../../../admin/keys"),
])
def test_path_traversal_in_model_names(gw: RunningGateway, gateway_keys: GatewayKeys, triton_server: TritonServer,
                                       method: str, path: str) -> None:
    resp = raw_path(gw, method, path, gateway_keys.user, b"{}" if method == "POST" else None)
    if path.startswith("/v2"):
        assert "config" not in assert_kserve_error(resp, (400, 404)).lower()
    else:
        error = assert_envelope(resp, (400, 404))
        assert "config" not in resp.text.lower() or error["code"] in (None, "model_not_found")
    # Triton still serves exactly what it served: nothing was loaded, unloaded or read through the path
    index = httpx.post(f"http://{triton_server.http_url}/v2/repository/index", json={}).json()
    assert {m["name"]: m.get("state") for m in index} == {MODEL: "READY"}


@pytest.mark.parametrize("model", ["../minilm", "minilm/../minilm", "%2e%2e", "..\\..\\x", "minilm\x00", " minilm"])
def test_traversal_in_body_model_names(gw: RunningGateway, headers: dict[str, str], model: str) -> None:
    for path, body in (("/v1/embeddings", {"model": model, "input": "hi"}),
                       ("/v1/jobs", {"type": "embeddings", "model": model, "input": ["hi"]})):
        resp = httpx.post(f"{gw.url}{path}", json=body, headers=headers)
        assert_envelope(resp, 404, param="model", code="model_not_found")


# --- numeric abuse -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dimensions", [-1, 0, 383, 385, 10**6, 2**63, 2**70, "384", True, 1.5, [384], None])
def test_dimensions_abuse(gw: RunningGateway, headers: dict[str, str], dimensions: object) -> None:
    resp = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": "hi", "dimensions": dimensions},
                      headers=headers)
    if dimensions is None:
        assert resp.status_code == 200
    else:
        assert_envelope(resp, 400, param="dimensions")
    ok = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": "hi", "dimensions": 384},
                    headers=headers)
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 384


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens", "seed"])
@pytest.mark.parametrize("value", [-1, 0, 2**31, 2**64, 10**30, -(2**70), "10", 1.5, True])
def test_chat_integer_abuse(gw: RunningGateway, headers: dict[str, str], param: str, value: object) -> None:
    body = {"model": "chat", "messages": CHAT, param: value}
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    if param == "seed" and value in (-1, 0, 2**31):  # in the int64 range: a valid seed
        assert resp.status_code == 200, resp.text
    else:
        assert_envelope(resp, 400, param=param)


def test_chat_largest_max_tokens_is_served(gw: RunningGateway, headers: dict[str, str]) -> None:
    body = {"model": "chat", "messages": CHAT, "max_tokens": 2**31 - 1, "seed": 2**63 - 1}
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
