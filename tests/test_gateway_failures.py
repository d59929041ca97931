"""Failure mapping: Triton queue full → 503 + retry-after, Triton deadline → 504, unexpected errors → 500 envelope."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tritonclient.grpc.model_config_pb2 import ModelConfig

from gateway.errors import error_kind
from gateway.metrics import GatewayMetrics
from gateway.middleware import RequestContextMiddleware
from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for
from tests.fixtures.servers import repository_variant, start_triton

MODEL = "minilm"


def _tiny_queue_repository(source: Path, target: Path) -> Path:
    """A copy of the repository whose config queues at most one request for 200 ms."""

    def tiny_queue(cfg: ModelConfig) -> None:
        cfg.dynamic_batching.max_queue_delay_microseconds = 200_000
        cfg.dynamic_batching.default_queue_policy.max_queue_size = 1

    return repository_variant(source, target, MODEL, tiny_queue)


def test_triton_queue_full_is_503_with_retry_after(
    minilm_repository: Path, tmp_path: Path, redis_server: RedisServer, gateway_keys: GatewayKeys,
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    triton = start_triton(_tiny_queue_repository(minilm_repository, tmp_path / "repo"), tmp_path / "state")
    try:
        gw = gateway_factory(settings_for(triton, redis_server, gateway_keys))
        headers = {"Authorization": f"Bearer {gateway_keys.user}", "Cache-Control": "no-store"}

        def call(i: int) -> httpx.Response:
            body = {"model": MODEL, "input": f"overload {i} {uuid.uuid4().hex}"}
            return httpx.post(f"{gw.url}/v1/embeddings", json=body, headers=headers, timeout=60)

        with ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(call, range(24)))
        statuses = {r.status_code for r in responses}
        assert statuses <= {200, 503}, statuses
        refused = [r for r in responses if r.status_code == 503]
        assert refused, "a one-slot queue must overflow under 24 concurrent requests"
        for r in refused:
            assert r.json()["error"]["code"] == "backend_overloaded"
            assert r.headers["retry-after"] == "1"
    finally:
        triton.stop()


def test_triton_deadline_is_504(
    triton_server: TritonServer, redis_server: RedisServer, gateway_keys: GatewayKeys,
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    gw = gateway_factory(settings_for(triton_server, redis_server, gateway_keys, backend_timeout_s=0.0005))
    body = {"model": MODEL, "input": ["a slow one " * 50] * 64}
    resp = httpx.post(f"{gw.url}/v1/embeddings", json=body,
                      headers={"Authorization": f"Bearer {gateway_keys.user}", "Cache-Control": "no-store"})
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "backend_timeout"


async def _explode(scope: dict, receive: Callable, send: Callable) -> None:
    raise RuntimeError("secret internal detail /etc/passwd")


@pytest.mark.asyncio
async def test_unexpected_error_is_a_500_envelope_without_internals() -> None:
    metrics = GatewayMetrics()
    app = RequestContextMiddleware(_explode, metrics)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        resp = await client.get("/anything", headers={"x-request-id": "req-1"})
    assert resp.status_code == 500
    assert resp.headers["x-request-id"] == "req-1"
    error = resp.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "secret" not in resp.text and "Traceback" not in resp.text
    sample = next(s for f in metrics.registry.collect() for s in f.samples if s.name == "gateway_requests_total")
    assert sample.labels["status"] == "500"


def test_error_table_is_complete() -> None:
    from gateway import errors

    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.GatewayError) and cls is not errors.GatewayError:
            assert error_kind(cls("x")) is errors.ERROR_TABLE[cls], name
