"""Job webhooks end to end: one egress policy for the gateway and the worker, signed deliveries to a real loopback
receiver, and a failed delivery's reason in the job object. Real redis-server, tritonserver, gateway and worker."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import orjson
import pytest
import redis

from gateway.config import GatewaySettings
from gateway.jobqueue.egress import ALLOW_PRIVATE_ENV, ALLOW_PRIVATE_ENV_NAMES
from jobs.config import WorkerConfig
from stack.gateway import gateway_env
from stack.redis import RedisServer
from stack.triton import TritonServer
from stack.up import StackOptions, gateway_settings, worker_settings
from stack.worker import worker_env
from tests.envelope import assert_envelope
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for, start_gateway
from tests.fixtures.jobs import WebhookSink, Worker, new_queue, start_worker
from tests.reliability_load import poll_until

MODEL = "minilm"
MAX_ATTEMPTS = 2  # the stack's worker gives up on a failing receiver after this many deliveries


def _webhook_env(**values: str) -> contextlib.AbstractContextManager[Any]:
    """The process environment with none of the webhook policy's names, then `values`."""
    env = {k: v for k, v in os.environ.items() if k not in ALLOW_PRIVATE_ENV_NAMES}
    return mock.patch.dict(os.environ, {**env, **values}, clear=True)


def _gateway(triton: TritonServer, redis_server: RedisServer, keys: GatewayKeys, queue: str,
             **env: str) -> RunningGateway:
    """A gateway on `queue` whose webhook policy comes from the environment `env` only (no keyword setting)."""
    with _webhook_env(**env):
        settings = settings_for(triton, redis_server, keys, jobs_queue_name=queue, requests_per_minute=1_000_000)
    return start_gateway(settings)


def submit(gw: RunningGateway, keys: GatewayKeys, webhook: dict[str, str]) -> httpx.Response:
    body = {"type": "embeddings", "model": MODEL, "input": ["webhook sentence"], "webhook": webhook}
    return httpx.post(f"{gw.url}/v1/jobs", json=body, headers=auth(keys), timeout=30)


def auth(keys: GatewayKeys) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.user}"}


def wait_webhook(gw: RunningGateway, keys: GatewayKeys, job_id: str,
                 until: Callable[[dict[str, Any]], bool]) -> httpx.Response:
    """Poll `GET /v1/jobs/{id}` until `until(job["webhook"])`; the last response."""
    last: list[httpx.Response] = []

    def reached() -> bool:
        last[:] = [httpx.get(f"{gw.url}/v1/jobs/{job_id}", headers=auth(keys), timeout=10)]
        assert last[0].status_code == 200, last[0].text
        return until(last[0].json()["webhook"])

    poll_until(reached, within_s=60, what=f"webhook state of {job_id}")
    return last[0]


def signature_ok(secret: str, body: bytes, header: str) -> bool:
    """The documented receiver check: HMAC-SHA256 of the raw body, compared in constant time."""
    expected = "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


@pytest.fixture(scope="module")
def allowed_stack(triton_server: TritonServer, redis_server: RedisServer, minilm_repository: Path,
                  gateway_keys: GatewayKeys, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[RunningGateway]:
    """A gateway and a worker that both get only `TRITONSTACK_WEBHOOK_ALLOW_PRIVATE=true` (the worker gives up
    after `MAX_ATTEMPTS` deliveries)."""
    queue = new_queue()
    worker = start_worker(triton_server, redis_server, minilm_repository, queue, tmp_path_factory.mktemp("hooks"),
                          stack_env={ALLOW_PRIVATE_ENV: "true"}, WEBHOOK_MAX_ATTEMPTS=str(MAX_ATTEMPTS))
    gateway = _gateway(triton_server, redis_server, gateway_keys, queue, **{ALLOW_PRIVATE_ENV: "true"})
    try:
        yield gateway
    finally:
        gateway.stop()
        worker.process.stop()


# --- one setting, read by both processes -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALLOW_PRIVATE_ENV_NAMES)
def test_each_name_of_the_setting_reaches_both_processes(name: str) -> None:
    with _webhook_env(**{name: "true"}):
        assert GatewaySettings(auth_disabled=True).jobs_webhook_allow_private
        assert WorkerConfig().webhook_allow_private
    with _webhook_env():
        assert not GatewaySettings(auth_disabled=True).jobs_webhook_allow_private
        assert not WorkerConfig().webhook_allow_private


def test_the_stack_wide_name_wins_over_the_old_ones() -> None:
    old = {name: "true" for name in ALLOW_PRIVATE_ENV_NAMES[1:]}
    with _webhook_env(**old, **{ALLOW_PRIVATE_ENV: "false"}):
        assert not GatewaySettings(auth_disabled=True).jobs_webhook_allow_private
        assert not WorkerConfig().webhook_allow_private
    assert GatewaySettings(auth_disabled=True, jobs_webhook_allow_private=True).jobs_webhook_allow_private


@pytest.mark.parametrize("value", ["true", "false"])
def test_tritonstack_up_gives_gateway_and_worker_the_same_policy(tmp_path: Path, value: str) -> None:
    opts = StackOptions(repository=tmp_path, state_dir=tmp_path)
    with _webhook_env(**{ALLOW_PRIVATE_ENV: value}):
        for_gateway = gateway_env(gateway_settings(opts, "k"))
        for_worker = worker_env(worker_settings(opts), gateway_settings=gateway_settings(opts, "k"))
    with mock.patch.dict(os.environ, for_gateway, clear=True):
        in_gateway = GatewaySettings().jobs_webhook_allow_private
    with mock.patch.dict(os.environ, for_worker, clear=True):
        in_worker = WorkerConfig().webhook_allow_private
    assert in_gateway is in_worker is (value == "true")


# --- the gateway refuses up front what the worker would refuse ----------------------------------------------------


def test_default_policy_refuses_a_loopback_webhook_at_submit(
    triton_server: TritonServer, redis_server: RedisServer, gateway_keys: GatewayKeys,
) -> None:
    queue = new_queue()
    gw = _gateway(triton_server, redis_server, gateway_keys, queue)
    client = redis.Redis.from_url(redis_server.url)
    try:
        response = submit(gw, gateway_keys, {"url": "http://127.0.0.1:9/hook"})
        error = assert_envelope(response, 400, param="webhook.url", code="webhook_url_not_allowed")
        assert f"{ALLOW_PRIVATE_ENV}=true" in error["message"] and "127.0.0.1" in error["message"]
        assert client.zcard(f"{queue}:queued") == 0 and client.zcard(queue) == 0, "a refused job was queued"
        public = submit(gw, gateway_keys, {"url": "https://hooks.example.com/tritonstack"})
        assert public.status_code == 202, public.text  # the same job to a public receiver is queued
        assert client.zcard(f"{queue}:queued") == 1
        httpx.delete(f"{gw.url}/v1/jobs/{public.json()['id']}", headers=auth(gateway_keys), timeout=10)
    finally:
        gw.stop()
        client.close()


# --- deliveries ------------------------------------------------------------------------------------------------


def test_with_the_setting_on_a_local_receiver_gets_a_signed_delivery(
    allowed_stack: RunningGateway, gateway_keys: GatewayKeys,
) -> None:
    secret = f"whsec_test_{secrets.token_hex(16)}"
    with WebhookSink() as sink:
        answer = submit(allowed_stack, gateway_keys, {"url": sink.url, "secret": secret})
        assert answer.status_code == 202, answer.text
        assert "webhook_secret" not in answer.json(), "a caller's own secret is not echoed"
        job_id = answer.json()["id"]
        final = wait_webhook(allowed_stack, gateway_keys, job_id, lambda hook: hook["status"] == "delivered")
    assert final.json()["webhook"] == {"url": sink.url, "status": "delivered", "attempts": 1, "delivered": True,
                                       "last_error": None}
    assert len(sink.received) == 1
    headers, body, _ = sink.received[0]
    assert signature_ok(secret, body, headers["X-Tritonstack-Signature"])
    assert not signature_ok(secret, body + b" ", headers["X-Tritonstack-Signature"])
    delivered = orjson.loads(body)
    assert delivered["event"] == "job.succeeded" and delivered["job"]["id"] == job_id
    assert secret not in body.decode() and secret not in final.text


def test_a_failing_receiver_leaves_its_last_error_in_the_job(
    allowed_stack: RunningGateway, gateway_keys: GatewayKeys,
) -> None:
    with WebhookSink(fail_first=1_000) as sink:
        answer = submit(allowed_stack, gateway_keys, {"url": sink.url})
        assert answer.status_code == 202, answer.text
        secret = answer.json()["webhook_secret"]
        final = wait_webhook(allowed_stack, gateway_keys, answer.json()["id"], lambda hook: hook["status"] == "failed")
    assert final.json()["webhook"] == {"url": sink.url, "status": "failed", "attempts": MAX_ATTEMPTS,
                                       "delivered": False, "last_error": "HTTP 500"}
    assert [status for _, _, status in sink.received] == [500] * MAX_ATTEMPTS
    assert secret not in final.text


def test_a_worker_refusal_is_in_the_job_and_names_the_setting(
    worker_factory: Callable[..., Worker], triton_server: TritonServer, redis_server: RedisServer,
    gateway_keys: GatewayKeys,
) -> None:
    """A gateway allowed private receivers under its old per-process name; the worker was given nothing."""
    queue = new_queue()
    worker_factory(queue, stack_env={})
    gw = _gateway(triton_server, redis_server, gateway_keys, queue,
                  TRITONSTACK_GATEWAY_JOBS_WEBHOOK_ALLOW_PRIVATE="true")
    try:
        with WebhookSink() as sink:
            answer = submit(gw, gateway_keys, {"url": sink.url})
            assert answer.status_code == 202, answer.text
            final = wait_webhook(gw, gateway_keys, answer.json()["id"], lambda hook: hook["status"] == "failed")
        hook = final.json()["webhook"]
        assert hook["delivered"] is False and hook["attempts"] == 1
        assert f"{ALLOW_PRIVATE_ENV}=true" in hook["last_error"] and "127.0.0.1" in hook["last_error"]
        assert sink.received == []
    finally:
        gw.stop()
