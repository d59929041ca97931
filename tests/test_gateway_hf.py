"""`/v1/rerank` and `/v1/classify` on models exported for real by `tritonstack export hf` (tiny, randomly initialised
BERT cross-encoder and classifier from tests/hf_models.py), served by the bundled Triton: the gateway answers what
Triton computes, in the Cohere and OpenAI-style shapes, with the labels the export recorded."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from typer.testing import CliRunner

from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for, start_gateway
from tests.fixtures.servers import start_triton

pytestmark = pytest.mark.slow
hf_models = pytest.importorskip("tests.hf_models", reason="the tiny Hugging Face model builders (export hf)")
pytest.importorskip("export.hf", reason="`tritonstack export hf`")
QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital and most populous city of France.", "A man is riding a horse.",
             "How do I reset my password?", "¡Está allí! 🎉"]
TEXTS = ["I love this product, it works perfectly!", "Die Straße ist nass.", "🍕"]


@pytest.fixture(scope="module")
def hf_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    from export.cli import app

    base = tmp_path_factory.mktemp("hf-tasks")
    repository = base / "model_repository"
    for directory, task in ((hf_models.bert_reranker(base / "bert-rerank"), "rerank"),
                            (hf_models.bert_classifier(base / "bert-classify"), "classify")):
        result = CliRunner().invoke(app, ["hf", str(directory), "--task", task, "--repository", str(repository),
                                          "--instances", "1", "--max-batch-size", "8"])
        assert result.exit_code == 0, result.output
    server = start_triton(repository, base / "state")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hf_gateway(hf_triton: TritonServer, redis_server: RedisServer, gateway_keys: GatewayKeys
               ) -> Iterator[RunningGateway]:
    gw = start_gateway(settings_for(hf_triton, redis_server, gateway_keys))
    try:
        yield gw
    finally:
        gw.stop()


def direct(triton: TritonServer, model: str, inputs: dict[str, list[str]], outputs: list[str]) -> list[np.ndarray]:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    tensors = []
    for name, values in inputs.items():
        tensor = grpcclient.InferInput(name, [len(values), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object).reshape(-1, 1))
        tensors.append(tensor)
    result = client.infer(model, tensors)
    client.close()
    return [result.as_numpy(name) for name in outputs]


def test_exported_reranker_and_classifier_behind_the_gateway(hf_gateway: RunningGateway, hf_triton: TritonServer,
                                                             gateway_keys: GatewayKeys) -> None:
    headers = {"Authorization": f"Bearer {gateway_keys.user}"}
    models = httpx.get(f"{hf_gateway.url}/v1/models", headers=headers, timeout=10).json()["data"]
    assert {m["id"]: m["task"] for m in models} == {"bert-rerank": "rerank", "bert-classify": "classify"}

    # Cohere's request body (v2: strings), as its SDK sends it
    body = {"model": "bert-rerank", "query": QUERY, "documents": DOCUMENTS, "top_n": 3, "return_documents": True}
    response = httpx.post(f"{hf_gateway.url}/v1/rerank", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    score, logit, tokens = direct(hf_triton, "bert-rerank", {"query": [QUERY] * len(DOCUMENTS),
                                                            "document": DOCUMENTS}, ["score", "logit", "token_count"])
    order = sorted(range(len(DOCUMENTS)), key=lambda i: (-float(logit[i, 0]), i))[:3]
    results = response.json()["results"]
    assert [r["index"] for r in results] == order
    assert [r["relevance_score"] for r in results] == pytest.approx([float(score[i, 0]) for i in order], abs=1e-6)
    assert [r["document"]["text"] for r in results] == [DOCUMENTS[i] for i in order]
    assert response.json()["meta"]["tokens"]["input_tokens"] == int(tokens.sum())

    response = httpx.post(f"{hf_gateway.url}/v1/classify", json={"model": "bert-classify", "input": TEXTS},
                          headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    (scores,) = direct(hf_triton, "bert-classify", {"text": TEXTS}, ["scores"])
    for item, row in zip(response.json()["data"], scores, strict=True):
        names = ["negative", "neutral", "positive"]  # the exported id2label
        want = sorted(range(3), key=lambda i: (-float(row[i]), i))
        assert [label["label"] for label in item["labels"]] == [names[i] for i in want]
        assert [label["score"] for label in item["labels"]] == pytest.approx([float(row[i]) for i in want],
                                                                             abs=1e-6)
