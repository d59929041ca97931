"""The gateway in front of a real tritonserver and redis-server, with the official clients.

`openai` for /v1 (default base64 and float encodings, errors), `tritonclient.http` for the /v2 passthrough;
Triton's own output (gRPC, direct) is the reference.
"""

from __future__ import annotations

import http.client
import json
import uuid

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from stack.triton import TritonServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway

MODEL = "minilm"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ceci est une phrase en français, avec des accents : é è à ç.",
    "これは日本語の文です。",
    "Emoji 🚀🔥 are tokenised too 🤖",
    " ".join(["a very long document that goes on and on"] * 60),  # beyond the model window: truncated
]


def _fresh(texts: list[str]) -> list[str]:
    """Texts no earlier test sent (the cache is shared by the session)."""
    tag = uuid.uuid4().hex[:8]
    return [f"{t} [{tag}]" for t in texts]


def direct(triton: TritonServer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and token counts straight from Triton over gRPC (batches of at most 64)."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    vectors, counts = [], []
    for start in range(0, len(texts), 64):
        chunk = texts[start : start + 64]
        tensor = grpcclient.InferInput("text", [len(chunk), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in chunk], dtype=object).reshape(-1, 1))
        result = client.infer(MODEL, [tensor])
        vectors.append(result.as_numpy("embedding"))
        counts.append(result.as_numpy("token_count").reshape(-1))
    client.close()
    return np.concatenate(vectors), np.concatenate(counts)


@pytest.fixture(scope="module")
def client(gateway: RunningGateway, gateway_keys: GatewayKeys) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway_keys.user, max_retries=0)


def test_default_base64_matches_triton(client: openai.OpenAI, triton_server: TritonServer) -> None:
    texts = _fresh(TEXTS)
    response = client.embeddings.create(model=MODEL, input=texts)  # the SDK asks for base64 and decodes it
    want, tokens = direct(triton_server, texts)
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert [d.index for d in response.data] == list(range(len(texts)))
    assert got.shape == (len(texts), 384)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert response.usage.prompt_tokens == int(tokens.sum()) == response.usage.total_tokens
    assert response.model == MODEL


def test_float_encoding_matches_triton(client: openai.OpenAI, triton_server: TritonServer) -> None:
    texts = _fresh(TEXTS)
    response = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    want, tokens = direct(triton_server, texts)
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert response.usage.prompt_tokens == int(tokens.sum())


def test_base64_is_little_endian_float32_bytes(gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    import base64

    body = {"model": MODEL, "input": _fresh(["bytes check"]), "encoding_format": "base64"}
    headers = {"Authorization": f"Bearer {gateway_keys.user}"}
    b64 = httpx.post(f"{gateway.url}/v1/embeddings", json=body, headers=headers).json()["data"][0]["embedding"]
    floats = httpx.post(f"{gateway.url}/v1/embeddings", json={**body, "encoding_format": "float"},
                        headers=headers).json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(b64), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.array(floats, dtype=np.float32))


def test_single_string_input(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model=MODEL, input="just one", encoding_format="float")
    assert len(response.data) == 1 and len(response.data[0].embedding) == 384
    assert abs(np.linalg.norm(response.data[0].embedding) - 1.0) < 1e-4


def test_batch_larger_than_max_batch_size(client: openai.OpenAI, triton_server: TritonServer) -> None:
    texts = _fresh([f"sentence number {i}" for i in range(150)])  # > max_batch_size 64: split, sent concurrently
    response = client.embeddings.create(model=MODEL, input=texts)
    want, tokens = direct(triton_server, texts)
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [d.index for d in response.data] == list(range(150))
    assert response.usage.prompt_tokens == int(tokens.sum())


def test_dimensions(client: openai.OpenAI) -> None:
    assert len(client.embeddings.create(model=MODEL, input="dims", dimensions=384).data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="dims", dimensions=128)
    assert info.value.param == "dimensions"


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="no-such-model", input="x")
    assert info.value.code == "model_not_found"


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_readyz(gateway: RunningGateway) -> None:
    resp = httpx.get(f"{gateway.url}/readyz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready", "triton": True, "redis": True}


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_through_gateway(
    gateway: RunningGateway, gateway_keys: GatewayKeys, triton_server: TritonServer, binary: bool
) -> None:
    auth = {"Authorization": f"Bearer {gateway_keys.user}"}
    client = httpclient.InferenceServerClient(url=gateway.address)
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL, headers=auth)
        assert client.get_model_metadata(MODEL, headers=auth)["name"] == MODEL
        assert client.get_model_config(MODEL, headers=auth)["max_batch_size"] == 64
        assert client.get_server_metadata(headers=auth)["name"] == "triton"
        texts = _fresh(["through the gateway", "second item"])
        tensor = httpclient.InferInput("text", [2, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object).reshape(-1, 1),
                                   binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("embedding", "token_count")]
        result = client.infer(MODEL, [tensor], outputs=outputs, headers=auth)
        want, tokens = direct(triton_server, texts)
        np.testing.assert_allclose(result.as_numpy("embedding"), want, atol=1e-5)
        np.testing.assert_array_equal(result.as_numpy("token_count").reshape(-1), tokens)
        versioned = client.infer(MODEL, [tensor], model_version="1", outputs=outputs, headers=auth)
        assert versioned.get_response()["model_version"] == "1"
    finally:
        client.close()


def test_v2_passthrough_compresses_only_when_asked(gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    body = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": _fresh(["compressed?"])}]}
    url = f"{gateway.url}/v2/models/{MODEL}/infer"
    auth = {"Authorization": f"Bearer {gateway_keys.user}"}
    connection = http.client.HTTPConnection(gateway.address, timeout=30)  # sends no Accept-Encoding at all
    connection.putrequest("POST", f"/v2/models/{MODEL}/infer", skip_accept_encoding=True)
    raw = json.dumps(body).encode()
    for name, value in {**auth, "content-type": "application/json", "content-length": str(len(raw))}.items():
        connection.putheader(name, value)
    connection.endheaders(raw)
    plain = connection.getresponse()
    assert plain.status == 200 and plain.getheader("content-encoding") is None
    data = json.loads(plain.read())["outputs"][0]["data"]
    connection.close()
    assert len(data) == 384
    gzipped = httpx.post(url, json=body, headers={**auth, "accept-encoding": "gzip"})
    assert gzipped.headers["content-encoding"] == "gzip"  # Triton's own compressed bytes, passed through
    assert gzipped.json()["outputs"][0]["data"] == data


def test_v2_requires_key_and_validates_names(gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    assert httpx.get(f"{gateway.url}/v2/models/{MODEL}").status_code == 401
    auth = {"Authorization": f"Bearer {gateway_keys.user}"}
    assert httpx.get(f"{gateway.url}/v2/models/{MODEL}/versions/abc", headers=auth).status_code == 404
    assert httpx.get(f"{gateway.url}/v2/models/{MODEL}/bogus", headers=auth).status_code == 404
    missing = httpx.get(f"{gateway.url}/v2/models/nope", headers=auth)
    assert missing.status_code >= 400 and "error" in missing.json()  # Triton's own answer, passed through


def test_metrics_after_traffic(client: openai.OpenAI, gateway: RunningGateway) -> None:
    client.embeddings.create(model=MODEL, input=_fresh(["metrics"]))
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{gateway.url}/metrics").text)}
    requests = families["gateway_requests"].samples
    assert any(s.labels["route"] == "/v1/embeddings" and s.labels["model"] == MODEL
               and s.labels["status"] == "200" for s in requests)
    overhead = families["gateway_overhead_seconds"].samples
    assert any(s.name.endswith("_count") and s.value > 0 for s in overhead)
    assert any(s.labels.get("result") == "miss" for s in families["gateway_cache_requests"].samples)
