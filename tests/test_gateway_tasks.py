"""`/v1/rerank`, TEI's `/rerank`, `/v1/classify`, tasks in `/v1/models`, embed models of any dimension: the gateway
in front of a real tritonserver (the toy task models of tests/fixtures/task_models.py, built to the export's model
contract) and a real redis-server.

Cohere's own SDK (`cohere.ClientV2`) reranks through the gateway; the v1 request bodies of Cohere's API reference
(objects with `rank_fields`, `return_documents`) are sent with httpx.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.backends.base import ModelInfo, TensorInfo
from gateway.models.tasks import task_of
from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.envelope import envelope_problem
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for
from tests.fixtures.task_models import (
    CLASSIFY_MODEL,
    EMBED_DIM,
    EMBED_MODEL,
    LABELS,
    PLAIN_MODEL,
    RERANK_MODEL,
    classify_scores,
    pair_tokens,
    rerank_logit,
    rerank_score,
    text_tokens,
    toy_embedding,
)

QUERY = "how does triton batch requests"
DOCUMENTS = [
    "Redis keeps the cache warm.",
    "Triton batches requests dynamically on the server.",
    "The gateway forwards requests to Triton.",
    "Nothing relevant here at all.",
]


def fresh(texts: list[str]) -> list[str]:
    """Texts no earlier test sent (the cache is shared by the session)."""
    tag = uuid.uuid4().hex[:8]
    return [f"{t} {tag}" for t in texts]


def post(gw: RunningGateway, keys: GatewayKeys, path: str, body: Any, **headers: str) -> httpx.Response:
    """POST `body` as JSON (a str is sent as it is: JSON with escapes httpx would not write)."""
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return httpx.post(f"{gw.url}{path}", content=content, timeout=30,
                      headers={"Authorization": f"Bearer {keys.user}", "Content-Type": "application/json", **headers})


def expected_order(query: str, documents: list[str]) -> list[int]:
    return sorted(range(len(documents)), key=lambda i: (-rerank_logit(query, documents[i]), i))


def assert_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert envelope_problem(status, response.headers["content-type"], response.content, kserve=False) is None
    error = response.json()["error"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


# --- rerank --------------------------------------------------------------------------------------------------


def test_rerank_sorts_by_score_with_the_original_index(task_gateway: RunningGateway, gateway_keys: GatewayKeys
                                                       ) -> None:
    documents = fresh(DOCUMENTS)
    response = post(task_gateway, gateway_keys, "/v1/rerank", {"model": RERANK_MODEL, "query": QUERY,
                                                               "documents": documents})
    assert response.status_code == 200, response.text
    body = response.json()
    order = expected_order(QUERY, documents)
    assert [r["index"] for r in body["results"]] == order
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(rerank_score(QUERY, documents[result["index"]]), abs=1e-6)
        assert "document" not in result  # Cohere's default: return_documents false
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    tokens = sum(pair_tokens(QUERY, d) for d in documents)
    assert body["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1},
                            "tokens": {"input_tokens": tokens, "output_tokens": 0}}
    assert body["usage"] == {"total_tokens": tokens} and body["model"] == RERANK_MODEL
    assert body["id"] == response.headers["x-request-id"]
    assert response.headers["x-cache"] == "miss" and response.headers["x-tritonstack-model-version"] == "1"


def test_rerank_top_n_and_return_documents(task_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    documents = fresh(DOCUMENTS)
    body = post(task_gateway, gateway_keys, "/v1/rerank", {"model": RERANK_MODEL, "query": QUERY,
                                                           "documents": documents, "top_n": 2,
                                                           "return_documents": True}).json()
    order = expected_order(QUERY, documents)[:2]
    assert [r["index"] for r in body["results"]] == order
    assert [r["document"] for r in body["results"]] == [{"text": documents[i]} for i in order]
    big = post(task_gateway, gateway_keys, "/v1/rerank", {"model": RERANK_MODEL, "query": QUERY,
                                                          "documents": documents, "top_n": 50}).json()
    assert len(big["results"]) == len(documents)  # top_n beyond the documents: all of them


def test_rerank_documents_as_objects_and_rank_fields(task_gateway: RunningGateway, gateway_keys: GatewayKeys
                                                     ) -> None:
    texts = fresh(DOCUMENTS[:3])
    objects = [{"text": texts[0]}, texts[1], {"text": texts[2], "url": "https://example.com/2"}]  # mixed, as Jina
    body = post(task_gateway, gateway_keys, "/v1/rerank", {"model": RERANK_MODEL, "query": QUERY,
                                                           "documents": objects, "return_documents": True}).json()
    assert [r["index"] for r in body["results"]] == expected_order(QUERY, texts)
    by_index = {r["index"]: r["document"] for r in body["results"]}
    assert by_index == {0: {"text": texts[0]}, 1: {"text": texts[1]}, 2: objects[2]}  # objects come back as sent

    # Cohere v1's semi-structured documents: the fields named in rank_fields, as "field: value" lines
    records = [{"title": "Triton", "body": "batches requests"}, {"title": "Redis", "body": "caches"}]
    ranked = post(task_gateway, gateway_keys, "/v1/rerank", {"model": RERANK_MODEL, "query": QUERY,
                                                             "documents": records,
                                                             "rank_fields": ["title", "body"]}).json()
    yaml_like = ["title: Triton\nbody: batches requests", "title: Redis\nbody: caches"]
    assert [r["index"] for r in ranked["results"]] == expected_order(QUERY, yaml_like)
    assert ranked["results"][0]["relevance_score"] == pytest.approx(rerank_score(QUERY, yaml_like[0]), abs=1e-6)

    missing = post(task_gateway, gateway_keys, "/v1/rerank", {"model": RERANK_MODEL, "query": QUERY,
                                                              "documents": ["ok", {"title": "no text"}]})
    assert "rank_fields" in assert_error(missing, 400, "invalid_document", "documents.1")["message"]


def test_rerank_cache_per_query_and_document_pair(task_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    documents = fresh(DOCUMENTS)
    body = {"model": RERANK_MODEL, "query": QUERY, "documents": documents}
    first = post(task_gateway, gateway_keys, "/v1/rerank", body)
    again = post(task_gateway, gateway_keys, "/v1/rerank", body)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert again.json()["results"] == first.json()["results"]
    assert again.json()["meta"]["tokens"] == first.json()["meta"]["tokens"]  # cached pairs keep their tokens
    partial = post(task_gateway, gateway_keys, "/v1/rerank", {**body, "documents": [*documents[:2], *fresh(["new"])]})
    assert partial.headers["x-cache"] == "partial"
    other_query = post(task_gateway, gateway_keys, "/v1/rerank", {**body, "query": "another question"})
    assert other_query.headers["x-cache"] == "miss"  # the query is part of each pair's key
    assert post(task_gateway, gateway_keys, "/v1/rerank", body, **{"Cache-Control": "no-store"}
                ).headers["x-cache"] == "bypass"
    refreshed = post(task_gateway, gateway_keys, "/v1/rerank", body, **{"Cache-Control": "no-cache"})
    assert refreshed.headers["x-cache"] == "miss" and refreshed.json()["results"] == first.json()["results"]


def test_cohere_request_bodies(task_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    """What the `cohere` SDK sends (ClientV2.rerank; Client.rerank with objects), as Cohere's reference shows."""
    v2 = {"model": RERANK_MODEL, "query": "What is the capital of the United States?", "top_n": 3,
          "documents": ["Carson City is the capital city of the American state of Nevada.",
                        "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific "
                        "Ocean. Its capital is Saipan.",
                        "Washington, D.C. (also known as simply Washington or D.C., and officially as the District "
                        "of Columbia) is the capital of the United States. It is a federal district.",
                        "Capitalization or capitalisation in English grammar is the use of a capital letter at the "
                        "start of a word. English usage varies from capitalization in other languages.",
                        "Capital punishment has existed in the United States since beforethe United States was a "
                        "country. As of 2017, capital punishment is legal in 30 of the 50 states."],
          "max_tokens_per_doc": 4096}
    headers = {"Authorization": f"bearer {gateway_keys.user}", "X-Fern-Language": "Python",
               "X-Fern-SDK-Name": "cohere", "accept": "application/json"}
    for path in ("/v2/rerank", "/v1/rerank"):  # ClientV2 posts to /v2/rerank; Jina's and Cohere v1's to /v1
        response = httpx.post(f"{task_gateway.url}{path}", json=v2, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == 3 and results[0]["index"] == expected_order(v2["query"], v2["documents"])[0]
        assert {"index", "relevance_score"} == set(results[0])
    # under /v2, errors take KServe's shape, as everywhere under /v2
    refused = httpx.post(f"{task_gateway.url}/v2/rerank", json={**v2, "model": CLASSIFY_MODEL}, headers=headers)
    assert refused.status_code == 400 and refused.json()["error"].startswith("classify-toy is a classify model; "
                                                                             "/v2/rerank needs a rerank model")

    v1 = {"model": RERANK_MODEL, "query": "capital of the United States", "return_documents": True,
          "rank_fields": ["text"], "documents": [{"text": d, "id": str(i)} for i, d in enumerate(v2["documents"])]}
    body = httpx.post(f"{task_gateway.url}/v1/rerank", json=v1, headers=headers, timeout=30).json()
    assert body["results"][0]["document"]["id"] == str(body["results"][0]["index"])


def test_cohere_sdk_reranks_through_the_gateway(task_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    import cohere

    client = cohere.ClientV2(api_key=gateway_keys.user, base_url=task_gateway.url)
    documents = fresh(DOCUMENTS)
    response = client.rerank(model=RERANK_MODEL, query=QUERY, documents=documents, top_n=2)
    assert [r.index for r in response.results] == expected_order(QUERY, documents)[:2]
    assert response.results[0].relevance_score >= response.results[1].relevance_score


def test_tei_rerank_route(task_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    texts = fresh(DOCUMENTS)
    # TEI clients name no model: the one rerank model served is used
    body = post(task_gateway, gateway_keys, "/rerank", {"query": QUERY, "texts": texts, "raw_scores": True,
                                                        "return_text": True}).json()
    order = expected_order(QUERY, texts)
    assert [r["index"] for r in body] == order
    assert [r["text"] for r in body] == [texts[i] for i in order]
    assert body[0]["score"] == pytest.approx(rerank_logit(QUERY, texts[order[0]]), abs=1e-5)  # raw: the logit
    plain = post(task_gateway, gateway_keys, "/rerank", {"query": QUERY, "texts": texts, "model": RERANK_MODEL})
    assert plain.headers["x-cache"] == "hit"
    assert plain.json()[0] == {"index": order[0], "score": pytest.approx(rerank_score(QUERY, texts[order[0]]))}


# --- classify ------------------------------------------------------------------------------------------------


def test_classify_all_labels_sorted_and_top_k(task_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    texts = fresh(["what a great and good day", "an awful, terrible, bad film", "the sky is blue"])
    response = post(task_gateway, gateway_keys, "/v1/classify", {"model": CLASSIFY_MODEL, "input": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == CLASSIFY_MODEL
    tokens = sum(text_tokens(t) for t in texts)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    for item, text in zip(body["data"], texts, strict=True):
        want = sorted(zip(LABELS, classify_scores(text), strict=True), key=lambda p: -p[1])
        assert [label["label"] for label in item["labels"]] == [name for name, _ in want]
        assert [label["score"] for label in item["labels"]] == pytest.approx([s for _, s in want], abs=1e-6)
    assert [d["labels"][0]["label"] for d in body["data"]] == ["positive", "negative", "neutral"]

    top = post(task_gateway, gateway_keys, "/v1/classify", {"model": CLASSIFY_MODEL, "input": texts[0], "top_k": 1})
    assert top.headers["x-cache"] == "hit"  # one input, cached by the request before
    assert top.json()["data"] == [{"index": 0, "labels": [body["data"][0]["labels"][0]]}]


def test_classify_cache_per_input(task_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    texts = fresh(["good", "bad"])
    assert post(task_gateway, gateway_keys, "/v1/classify", {"model": CLASSIFY_MODEL, "input": texts}
                ).headers["x-cache"] == "miss"
    assert post(task_gateway, gateway_keys, "/v1/classify", {"model": CLASSIFY_MODEL, "input": [texts[1], *fresh(
        ["x"])]}).headers["x-cache"] == "partial"


# --- tasks: /v1/models, the wrong task, embed models of their own dimension ----------------------------------


def test_models_say_their_task(task_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    headers = {"Authorization": f"Bearer {gateway_keys.user}"}
    listed = httpx.get(f"{task_gateway.url}/v1/models", headers=headers, timeout=10).json()["data"]
    assert {m["id"]: m["task"] for m in listed} == {RERANK_MODEL: "rerank", CLASSIFY_MODEL: "classify",
                                                    EMBED_MODEL: "embed", PLAIN_MODEL: None}
    one = httpx.get(f"{task_gateway.url}/v1/models/{RERANK_MODEL}", headers=headers, timeout=10).json()
    assert one["task"] == "rerank" and one["object"] == "model"
    client = openai.OpenAI(base_url=f"{task_gateway.url}/v1", api_key=gateway_keys.user, max_retries=0)
    assert {m.id for m in client.models.list()} == {RERANK_MODEL, CLASSIFY_MODEL, EMBED_MODEL, PLAIN_MODEL}


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/v1/rerank", {"model": CLASSIFY_MODEL, "query": "q", "documents": ["d"]},
     "classify-toy is a classify model; /v1/rerank needs a rerank model"),
    ("/v1/classify", {"model": RERANK_MODEL, "input": "x"}, "rerank-toy is a rerank model; /v1/classify needs a"),
    ("/v1/embeddings", {"model": RERANK_MODEL, "input": "x"}, "rerank-toy is a rerank model; /v1/embeddings needs"),
    ("/v1/rerank", {"model": EMBED_MODEL, "query": "q", "documents": ["d"]}, "embed-toy is an embed model; "),
    ("/v1/classify", {"model": PLAIN_MODEL, "input": "x"}, "plain-toy is not served on /v1"),
    ("/rerank", {"model": EMBED_MODEL, "query": "q", "texts": ["d"]}, "embed-toy is an embed model; /rerank"),
])
def test_wrong_task_is_a_400_naming_it(task_gateway: RunningGateway, gateway_keys: GatewayKeys, path: str,
                                       body: dict[str, Any], message: str) -> None:
    error = assert_error(post(task_gateway, gateway_keys, path, body), 400, "model_task_mismatch", "model")
    assert error["message"].startswith(message), error


def test_minilm_is_an_embed_model(gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    """The MiniLM export has no task parameter: `text` in, `embedding` out makes it an embed model."""
    listed = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {gateway_keys.user}"},
                       timeout=10).json()["data"]
    assert {m["id"]: m["task"] for m in listed}["minilm"] == "embed"
    error = assert_error(post(gateway, gateway_keys, "/v1/rerank", {"model": "minilm", "query": "q",
                                                                     "documents": ["d"]}), 400, "model_task_mismatch")
    assert error["message"].startswith("minilm is an embed model; /v1/rerank needs a rerank model")
    # TEI's route with no model and no rerank model served
    assert_error(post(gateway, gateway_keys, "/rerank", {"query": "q", "texts": ["d"]}), 400, "model_required",
                 "model")


def test_task_inference_without_the_parameter() -> None:
    def info(inputs: list[str], outputs: list[str], **extra: str) -> ModelInfo:
        return ModelInfo("m", "1", ("1",), 8, tuple(TensorInfo(n, "BYTES", (1,)) for n in inputs),
                         tuple(TensorInfo(n, "FP32", (4,)) for n in outputs), extra=extra)

    assert task_of(info(["text"], ["embedding", "token_count"])) == "embed"
    assert task_of(info(["messages", "prompt", "max_tokens"], ["text"])) == "chat"
    assert task_of(info(["x"], ["y"])) is None
    assert task_of(info(["text"], ["embedding"], tritonstack_task="Rerank")) == "rerank"


def test_an_embed_model_of_its_own_dimension(task_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    client = openai.OpenAI(base_url=f"{task_gateway.url}/v1", api_key=gateway_keys.user, max_retries=0)
    texts = fresh(["first text", "second, longer text"])
    response = client.embeddings.create(model=EMBED_MODEL, input=texts)  # base64, decoded by the SDK
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, np.array([toy_embedding(t) for t in texts]), atol=1e-6)
    assert got.shape == (2, EMBED_DIM) and response.usage.prompt_tokens == sum(text_tokens(t) for t in texts)
    assert len(client.embeddings.create(model=EMBED_MODEL, input="x", dimensions=EMBED_DIM).data[0].embedding) == 12
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=EMBED_MODEL, input="x", dimensions=384)
    assert info.value.param == "dimensions"


# --- validation, keys, limits, metrics -----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/rerank", {"model": RERANK_MODEL, "query": "", "documents": ["d"]}, "query"),
    ("/v1/rerank", {"model": RERANK_MODEL, "query": "q", "documents": []}, "documents"),
    ("/v1/rerank", {"model": RERANK_MODEL, "query": "q", "documents": ["d"], "top_n": 0}, "top_n"),
    ("/v1/rerank", '{"model": "rerank-toy", "query": "q", "documents": ["ok", "\\ud800"]}', None),  # not UTF-8
    ("/v1/classify", {"model": CLASSIFY_MODEL, "input": []}, "input"),
    ("/v1/classify", {"model": CLASSIFY_MODEL, "input": [1, 2]}, "input"),
    ("/v1/classify", {"model": CLASSIFY_MODEL, "input": "x", "top_k": "2"}, "top_k"),
    ("/rerank", {"query": "q"}, "texts"),
])
def test_invalid_requests_are_400_naming_the_field(task_gateway: RunningGateway, gateway_keys: GatewayKeys,
                                                   path: str, body: dict[str, Any] | str, param: str | None
                                                   ) -> None:
    assert_error(post(task_gateway, gateway_keys, path, body), 400, param=param)


def test_unknown_model_is_404(task_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    assert_error(post(task_gateway, gateway_keys, "/v1/rerank", {"model": "nope", "query": "q", "documents": ["d"]}),
                 404, "model_not_found")
    assert_error(post(task_gateway, gateway_keys, "/v1/classify", {"model": "../x", "input": "q"}), 404,
                 "model_not_found")


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v1/classify"])
def test_keys_are_required(task_gateway: RunningGateway, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        response = httpx.post(f"{task_gateway.url}{path}", json={"model": RERANK_MODEL}, headers=headers, timeout=10)
        assert_error(response, 401, "invalid_api_key")


def test_request_and_token_limits_per_key(gateway_factory: Callable[..., RunningGateway], task_triton: TritonServer,
                                          redis_server: RedisServer, gateway_keys: GatewayKeys) -> None:
    few = gateway_factory(settings_for(task_triton, redis_server, gateway_keys, requests_per_minute=2,
                                       tokens_per_minute=1_000_000, max_input_items=3))
    body = {"model": RERANK_MODEL, "query": "q", "documents": fresh(["a", "b"])}
    first = post(few, gateway_keys, "/v1/rerank", body)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "2"
    too_many = post(few, gateway_keys, "/v1/rerank", {**body, "documents": ["1", "2", "3", "4"]})
    assert_error(too_many, 400, "too_many_inputs", "documents")  # over max_input_items (and counted)
    limited = post(few, gateway_keys, "/v1/classify", {"model": CLASSIFY_MODEL, "input": "x"})
    assert_error(limited, 429, "rate_limit_exceeded")
    assert int(limited.headers["retry-after"]) >= 1

    tight = gateway_factory(settings_for(task_triton, redis_server, gateway_keys, requests_per_minute=1000,
                                         tokens_per_minute=20))
    spent = post(tight, gateway_keys, "/v1/rerank", {"model": RERANK_MODEL, "query": "one two three",
                                                     "documents": fresh(["four five six seven"] * 3)})
    assert spent.status_code == 200 and spent.json()["usage"]["total_tokens"] > 20
    deadline = time.monotonic() + 5  # real tokens are debited just after the request
    while (response := post(tight, gateway_keys, "/v1/classify", {"model": CLASSIFY_MODEL, "input": "x"})
           ).status_code == 200:
        assert time.monotonic() < deadline, "the token limit never refused"
        time.sleep(0.1)
    assert_error(response, 429, "rate_limit_exceeded")


def test_metrics(task_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    post(task_gateway, gateway_keys, "/v1/rerank", {"model": RERANK_MODEL, "query": QUERY,
                                                    "documents": fresh(DOCUMENTS)})
    post(task_gateway, gateway_keys, "/v1/classify", {"model": CLASSIFY_MODEL, "input": fresh(["good"])})
    text = httpx.get(f"{task_gateway.url}/metrics", timeout=10).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("gateway_task_items_total", task="rerank", model=RERANK_MODEL) >= len(DOCUMENTS)
    assert value("gateway_task_items_total", task="classify", model=CLASSIFY_MODEL) >= 1
    assert value("gateway_requests_total", route="/v1/rerank", method="POST", model=RERANK_MODEL, status="200") >= 1
    assert value("gateway_requests_total", route="/v1/classify", method="POST", model=CLASSIFY_MODEL,
                 status="200") >= 1
    assert value("gateway_tokens_total", model=RERANK_MODEL) > 0
    assert value("gateway_cache_items_total", result="miss") > 0
