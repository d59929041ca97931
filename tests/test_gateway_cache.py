"""Caching, coalescing, model versions, rate limits and Redis failure, end to end.

Real tritonserver and redis-server; Triton's own statistics (`inference_count`: items computed,
`execution_count`: model executions) prove what reached the model.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import ApiKeyConfig, hash_api_key
from stack.process import free_port
from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for
from tests.fixtures.servers import start_triton

MODEL = "minilm"


def _fresh(n: int, label: str = "item") -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{label} {i} {tag}" for i in range(n)]


def stats(triton: TritonServer, version: str = "") -> tuple[int, int]:
    """(inference_count, execution_count) of the model (one version, or all versions summed)."""
    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        models = client.get_inference_statistics(MODEL, model_version=version)["model_stats"]
    finally:
        client.close()
    return sum(int(m["inference_count"]) for m in models), sum(int(m["execution_count"]) for m in models)


def _model_stats(triton: TritonServer, version: str) -> list[dict]:
    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        return client.get_inference_statistics(MODEL, model_version=version)["model_stats"]
    finally:
        client.close()


class TritonCounts:
    """Items and executions Triton computed between two points of a test, read race-free.

    Triton records statistics just *after* it answers, so a read right after a response may miss that
    response's work. Each reading therefore first sends a marker batch of `MARKER` items straight to Triton
    and waits until the marker shows in the per-batch-size statistics: the single model instance executes
    the marker after everything sent before it, so by then all earlier work is recorded too. The marker's
    own work is subtracted. (No test sends batches of exactly `MARKER` items otherwise.)
    """

    MARKER = 63

    def __init__(self, triton: TritonServer, version: str = "") -> None:
        self.triton = triton
        self.version = version
        self.base = self._settled()

    def _marker_count(self) -> int:
        return sum(
            int(b["compute_infer"]["count"])
            for m in _model_stats(self.triton, self.version)
            for b in m.get("batch_stats", [])
            if int(b["batch_size"]) == self.MARKER
        )

    def _settled(self, within_s: float = 15.0) -> tuple[int, int]:
        seen = self._marker_count()
        client = grpcclient.InferenceServerClient(self.triton.grpc_url)
        texts = np.array([f"marker {i} {uuid.uuid4().hex}".encode() for i in range(self.MARKER)], dtype=object)
        tensor = grpcclient.InferInput("text", [self.MARKER, 1], "BYTES")
        tensor.set_data_from_numpy(texts.reshape(-1, 1))
        client.infer(MODEL, [tensor], model_version=self.version)
        client.close()
        deadline = time.monotonic() + within_s
        while self._marker_count() < seen + 1:  # readiness check on Triton's own statistics
            assert time.monotonic() < deadline, "the marker batch never showed in Triton's statistics"
        return stats(self.triton, self.version)

    def delta(self) -> tuple[int, int]:
        """(items, executions) since the previous reading, not counting this reading's marker."""
        now = self._settled()
        got = (now[0] - self.base[0] - self.MARKER, now[1] - self.base[1] - 1)
        self.base = now
        return got


def create(client: openai.OpenAI, texts: list[str], **headers: str) -> tuple[str, np.ndarray, int]:
    """(x-cache, vectors, prompt_tokens) of one embeddings call."""
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=texts, extra_headers=headers or None)
    parsed = raw.parse()
    vectors = np.array([d.embedding for d in parsed.data], dtype=np.float32)
    return raw.headers.get("x-cache", ""), vectors, parsed.usage.prompt_tokens


def metric(gw: RunningGateway, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw.url}/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def client(gateway: RunningGateway, gateway_keys: GatewayKeys) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway_keys.user, max_retries=0)


def test_partial_batch_computes_only_misses(client: openai.OpenAI, triton_server: TritonServer) -> None:
    first, second = _fresh(2, "cached"), _fresh(3, "new")
    status, cached_vectors, _ = create(client, first)
    assert status == "miss"
    counts = TritonCounts(triton_server)
    status, vectors, tokens = create(client, [second[0], first[0], second[1], first[1], second[2]])
    assert status == "partial"
    assert counts.delta()[0] == 3  # only the three misses were computed
    np.testing.assert_array_equal(vectors[1], cached_vectors[0])  # stitched back in input order
    np.testing.assert_array_equal(vectors[3], cached_vectors[1])
    status, again, again_tokens = create(client, [second[0], first[0], second[1], first[1], second[2]])
    assert status == "hit" and counts.delta() == (0, 0)
    np.testing.assert_array_equal(again, vectors)
    assert again_tokens == tokens  # usage of cached items is the real token count


def test_duplicates_within_a_request_are_computed_once(client: openai.OpenAI, triton_server: TritonServer) -> None:
    text = _fresh(1, "dup")[0]
    counts = TritonCounts(triton_server)
    status, vectors, _ = create(client, [text, text, text])
    assert status == "miss" and counts.delta() == (1, 1)
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_twenty_identical_concurrent_requests_cost_one_inference(
    client: openai.OpenAI, triton_server: TritonServer, gateway: RunningGateway
) -> None:
    texts = _fresh(4, "flight")
    counts = TritonCounts(triton_server)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: create(client, texts), range(20)))
    assert counts.delta() == (len(texts), 1), "exactly one Triton execution of the four items"
    for _, vectors, _ in results:
        np.testing.assert_array_equal(vectors, results[0][1])


def test_cache_control_no_store_and_no_cache(client: openai.OpenAI, triton_server: TritonServer) -> None:
    texts = _fresh(2, "control")
    create(client, texts)
    counts = TritonCounts(triton_server)
    assert create(client, texts, **{"Cache-Control": "no-store"})[0] == "bypass"
    assert counts.delta() == (2, 1)
    assert create(client, texts, **{"Cache-Control": "no-cache"})[0] == "miss"
    assert counts.delta() == (2, 1)
    assert create(client, texts)[0] == "hit"
    assert counts.delta() == (0, 0)


def test_admin_clears_a_models_cache(client: openai.OpenAI, gateway: RunningGateway, gateway_keys: GatewayKeys
                                     ) -> None:
    texts = _fresh(2, "clear")
    create(client, texts)
    assert create(client, texts)[0] == "hit"
    url = f"{gateway.url}/admin/cache"
    assert httpx.delete(url, params={"model": MODEL}, headers={"Authorization": f"Bearer {gateway_keys.user}"}
                        ).status_code == 403
    resp = httpx.delete(url, params={"model": MODEL}, headers={"Authorization": f"Bearer {gateway_keys.admin}"})
    assert resp.status_code == 200 and resp.json()["deleted"] >= 2
    assert create(client, texts)[0] == "miss"


def _link_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=os.link)


def test_new_model_version_never_serves_old_entries(
    minilm_repository: Path, tmp_path: Path, redis_server: RedisServer, gateway_keys: GatewayKeys,
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    repo = tmp_path / "repo"
    _link_tree(minilm_repository, repo)
    triton = start_triton(repo, tmp_path / "state")
    try:
        gw = gateway_factory(settings_for(triton, redis_server, gateway_keys, model_info_ttl_s=0))
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gateway_keys.user, max_retries=0)
        texts = _fresh(3, "versioned")
        assert create(client, texts)[0] == "miss"
        assert create(client, texts)[0] == "hit"
        versions = sorted(p.name for p in (repo / MODEL).iterdir() if p.name.isdigit())
        _link_tree(repo / MODEL / versions[-1], repo / MODEL / str(int(versions[-1]) + 1))
        new_version = str(int(versions[-1]) + 1)
        control = httpclient.InferenceServerClient(triton.http_url)
        control.load_model(MODEL)  # latest:1 → the new version replaces the old one
        assert control.get_model_metadata(MODEL)["versions"] == [new_version]
        control.close()
        counts = TritonCounts(triton, new_version)  # (warmup samples count in the statistics too)
        status, _, _ = create(client, texts)
        assert status == "miss", "entries of the old version must not be served"
        assert counts.delta() == (3, 1)
        assert create(client, texts)[0] == "hit"
        assert counts.delta() == (0, 0)
    finally:
        triton.stop()


def _limited_key(**limits: int) -> tuple[str, ApiKeyConfig]:
    key = f"sk-rl-{secrets.token_hex(12)}"
    return key, ApiKeyConfig(name=f"rl-{uuid.uuid4().hex[:10]}", sha256=hash_api_key(key), **limits)


def test_request_rate_limit_is_429_with_headers(
    triton_server: TritonServer, redis_server: RedisServer, gateway_keys: GatewayKeys,
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    key, config = _limited_key(requests_per_minute=2)
    gw = gateway_factory(settings_for(triton_server, redis_server, gateway_keys, api_keys=[config]))
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="one")
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert "x-ratelimit-remaining-tokens" in raw.headers
    client.embeddings.create(model=MODEL, input="two")
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model=MODEL, input="three")
    headers = info.value.response.headers
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert info.value.code == "rate_limit_exceeded"
    assert metric(gw, "gateway_rate_limited_total", limit="requests") == 1


def test_token_rate_limit(
    triton_server: TritonServer, redis_server: RedisServer, gateway_keys: GatewayKeys,
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    key, config = _limited_key(tokens_per_minute=20)
    gw = gateway_factory(settings_for(triton_server, redis_server, gateway_keys, api_keys=[config]))
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
    used = client.embeddings.create(model=MODEL, input=" ".join(["word"] * 30)).usage.prompt_tokens
    assert used > 20
    deadline = time.monotonic() + 5
    while True:  # the debit is recorded right after the response; poll until it shows
        try:
            client.embeddings.create(model=MODEL, input="small")
        except openai.RateLimitError as exc:
            assert exc.response.headers["x-ratelimit-remaining-tokens"] == "0"
            break
        assert time.monotonic() < deadline, "token budget was never enforced"


def test_redis_stopped_mid_test_keeps_serving(
    triton_server: TritonServer, gateway_keys: GatewayKeys, tmp_path: Path,
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    redis = RedisServer(free_port(), log_path=tmp_path / "redis.log").start_and_wait()
    try:
        gw = gateway_factory(settings_for(triton_server, redis, gateway_keys, redis_timeout_ms=50))
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gateway_keys.user, max_retries=0)
        assert create(client, _fresh(2, "before"))[0] == "miss"
        assert httpx.get(f"{gw.url}/readyz").status_code == 200
        redis.stop()
        for i in range(5):
            status, vectors, _ = create(client, _fresh(3, f"after{i}"))
            assert status == "miss" and vectors.shape == (3, 384)
        assert metric(gw, "gateway_redis_errors_total") >= 1
        assert httpx.get(f"{gw.url}/readyz").status_code == 503
    finally:
        redis.stop()
