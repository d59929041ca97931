"""Background jobs end to end: real redis-server, tritonserver, gateway and `tritonstack worker` subprocesses."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import tritonclient.grpc as grpcclient
import yaml
from google.protobuf.json_format import MessageToJson

from gateway.jobqueue.store import JobStore
from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.fake_llm import Fault
from tests.fixtures.fake_llm import FakeUpstream, clear_chat_state, cloud
from tests.fixtures.gateway import GatewayKeys, RunningGateway
from tests.fixtures.jobs import JobsStack, WebhookSink, Worker, jobs_gateway, new_queue, start_worker
from tests.fixtures.servers import start_triton, two_version_repository
from tests.reliability_load import poll_until

MODEL = "minilm"
_WORDS = ("quiet", "river", "orange", "lantern", "market", "winter", "signal", "copper", "garden", "engine")


def sentences(n: int, tag: str) -> list[str]:
    """`n` distinct sentences (a per-test tag keeps them out of other tests' cache entries)."""
    return [f"{tag} sentence {i}: the {_WORDS[i % 10]} {_WORDS[(i // 10) % 10]} met the {_WORDS[(i // 100) % 10]}."
            for i in range(n)]


def auth(keys: GatewayKeys, admin: bool = False, **extra: str) -> dict[str, str]:
    """Authorization for the user key (or the admin key, a second owner)."""
    return {"Authorization": f"Bearer {keys.admin if admin else keys.user}", **extra}


def submit(gw: RunningGateway, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/jobs", json=body, headers=headers, timeout=30)


def embeddings_job(texts: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "embeddings", "model": MODEL, "input": texts, **extra}


def get_job(gw: RunningGateway, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{gw.url}/v1/jobs/{job_id}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_job(gw: RunningGateway, headers: dict[str, str], job_id: str, until: Callable[[dict[str, Any]], bool],
             within_s: float = 60.0) -> tuple[dict[str, Any], list[int]]:
    """Poll the job until `until(job)`; the job and every progress value seen."""
    seen: list[int] = []
    deadline = time.monotonic() + within_s
    while True:
        job = get_job(gw, headers, job_id)
        seen.append(job["progress"]["done"])
        if until(job):
            return job, seen
        assert time.monotonic() < deadline, f"job never reached the condition: {job}"
        time.sleep(0.02)


def finished(job: dict[str, Any]) -> bool:
    return job["finished_at"] is not None


def result_lines(gw: RunningGateway, headers: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    import orjson

    response = httpx.get(f"{gw.url}/v1/jobs/{job_id}/result", headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in response.content.splitlines() if line]


def assert_each_once(lines: list[dict[str, Any]], n: int | None = None) -> None:
    keys = [(line["document_id"], line["chunk_index"]) for line in lines]
    assert len(keys) == len(set(keys)), "a chunk appears twice"
    if n is not None:
        assert sorted(k[0] for k in keys) == list(range(n))


@pytest.fixture(scope="module")
def idle_gateway(redis_server: RedisServer, triton_server: TritonServer, gateway_keys: GatewayKeys
                 ) -> Iterator[RunningGateway]:
    """A gateway on a queue no worker reads: its jobs stay queued."""
    gw = jobs_gateway(triton_server, redis_server, gateway_keys, new_queue())
    yield gw
    gw.stop()


# --- the worker computes what the synchronous endpoint computes ----------------------------------------------


def test_embeddings_job_equals_sync_endpoint_and_progress_is_monotonic(jobs_stack: JobsStack) -> None:
    gw, headers = jobs_stack.gateway, jobs_stack.headers()
    texts = sentences(2000, uuid.uuid4().hex[:8])
    response = submit(gw, headers, embeddings_job(texts))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and response.headers["location"] == f"/v1/jobs/{job['id']}"

    job, seen = wait_job(gw, headers, job["id"], finished)
    assert job["status"] == "succeeded", job
    assert seen == sorted(seen) and seen[-1] == 2000
    assert len(set(seen)) > 2, "progress was never seen between start and end"
    assert job["progress"] == {"done": 2000, "total": 2000, "failed": 0}
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]

    lines = result_lines(gw, headers, job["id"])
    assert_each_once(lines, 2000)
    by_doc = {line["document_id"]: line for line in lines}
    assert all(by_doc[i]["start"] == 0 and by_doc[i]["end"] == len(t) for i, t in enumerate(texts))
    assert sum(line["tokens"] for line in lines) == job["usage"]["prompt_tokens"]

    sample = list(range(0, 2000, 40))
    sync = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": [texts[i] for i in sample]},
                      headers={**headers, "Cache-Control": "no-store"}, timeout=60).json()
    expected = np.array([d["embedding"] for d in sync["data"]], dtype=np.float32)
    got = np.array([by_doc[i]["embedding"] for i in sample], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert sum(by_doc[i]["tokens"] for i in sample) == sync["usage"]["prompt_tokens"]

    assert "gateway_jobs_queue_depth" in httpx.get(f"{gw.url}/metrics").text
    assert 'tritonstack_jobs_finished_total{status="succeeded",type="embeddings"}' in jobs_stack.worker.metrics()


def test_long_documents_are_chunked_with_overlap_from_a_jsonl_upload(jobs_stack: JobsStack) -> None:
    gw, headers = jobs_stack.gateway, jobs_stack.headers()
    long_text = " ".join(sentences(60, "long"))  # ~700 tokens
    body = b'{"id": "a", "text": "short document"}\n' + httpx.Request("POST", "/", json={
        "id": "b", "text": long_text}).content + b"\n"
    response = httpx.post(f"{gw.url}/v1/jobs", content=body, timeout=30,
                          params={"model": MODEL, "max_tokens": "128", "overlap": "16", "encoding_format": "base64"},
                          headers={**headers, "Content-Type": "application/x-ndjson"})
    assert response.status_code == 202, response.text
    job, _ = wait_job(gw, headers, response.json()["id"], finished)
    assert job["status"] == "succeeded", job
    lines = result_lines(gw, headers, job["id"])
    assert_each_once(lines)
    chunks = [line for line in lines if line["document_id"] == "b"]
    assert len(chunks) >= 4 and [c["chunk_index"] for c in chunks] == list(range(len(chunks)))
    assert all(0 < c["tokens"] <= 130 for c in chunks)  # 128 + [CLS] + [SEP]
    for prev, nxt in itertools.pairwise(chunks):
        assert prev["start"] < nxt["start"] < prev["end"] <= nxt["end"], "consecutive chunks overlap"
    assert chunks[0]["start"] == 0 and chunks[-1]["end"] == len(long_text)
    vector = np.frombuffer(__import__("base64").b64decode(chunks[0]["embedding"]), dtype="<f4")
    assert vector.shape == (384,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3


# --- crash safety and cancellation ---------------------------------------------------------------------------


def test_a_job_keeps_the_version_it_started_with(minilm_repository: Path, redis_server: RedisServer,
                                                gateway_keys: GatewayKeys, tmp_path: Path) -> None:
    """Version 2 loads while a job computed by version 1 runs: the rest of the job stays on version 1 (one model's
    vectors per job), while a synchronous request can already use version 2 (pinned: loading a version moves no
    traffic by itself)."""
    triton = start_triton(two_version_repository(minilm_repository, tmp_path / "repository"), tmp_path / "state")
    queue = new_queue()
    worker = start_worker(triton, redis_server, minilm_repository, queue, tmp_path, BATCH_SIZE="4",
                          BATCH_CONCURRENCY="1")  # small units: the job outlasts loading version 2
    gw = jobs_gateway(triton, redis_server, gateway_keys, queue)
    headers = auth(gateway_keys)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        total = 800
        job = submit(gw, headers, embeddings_job(sentences(total, f"pinned {uuid.uuid4().hex[:6]}"))).json()
        wait_job(gw, headers, job["id"], lambda j: j["progress"]["done"] > 0)
        config = json.loads(MessageToJson(client.get_model_config(MODEL).config, preserving_proto_field_name=True))
        config["version_policy"] = {"specific": {"versions": [1, 2]}}
        client.load_model(MODEL, config=json.dumps(config))
        poll_until(lambda: client.is_model_ready(MODEL, "2"), 60, "version 2 ready")
        assert get_job(gw, headers, job["id"])["progress"]["done"] < total, "the job ended before version 2 loaded"
        sync = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": "after the load"},
                          headers={**headers, "x-tritonstack-model-version": "2"}, timeout=30)
        assert sync.status_code == 200 and sync.headers["x-tritonstack-model-version"] == "2"
        done, _ = wait_job(gw, headers, job["id"], finished, within_s=180)
        assert done["status"] == "succeeded", done
        # (loading with a new config reloads version 1 too, which restarts its statistics)
        counts = {s.version: s.inference_count for s in client.get_inference_statistics(MODEL).model_stats}
        assert counts["2"] == 1 and counts["1"] > 0, counts  # version 2 computed only the synchronous request
    finally:
        client.close()
        gw.stop()
        worker.process.stop()
        triton.stop()


def test_a_job_is_computed_by_its_owners_version_under_the_rollout_table(redis_server: RedisServer,
                                                                         minilm_repository: Path,
                                                                         gateway_keys: GatewayKeys,
                                                                         tmp_path: Path) -> None:
    """Versions 1 and 2 served, the rollout table sends every caller to version 1: a job submitted by a caller is
    computed by version 1 from end to end, like that caller's synchronous requests, not by the newest version."""
    triton = start_triton(two_version_repository(minilm_repository, tmp_path / "repository"), tmp_path / "state")
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    config = json.loads(MessageToJson(client.get_model_config(MODEL).config, preserving_proto_field_name=True))
    config["version_policy"] = {"specific": {"versions": [1, 2]}}
    client.load_model(MODEL, config=json.dumps(config))
    poll_until(lambda: client.is_model_ready(MODEL, "1") and client.is_model_ready(MODEL, "2"), 60, "both ready")
    rollouts = tmp_path / "rollouts.yaml"
    rollouts.write_text(yaml.safe_dump({"models": {MODEL: {"stable": "1", "versions": {"1": 100, "2": 0}}}}))
    queue = new_queue()
    worker = start_worker(triton, redis_server, minilm_repository, queue, tmp_path)
    gw = jobs_gateway(triton, redis_server, gateway_keys, queue, rollouts_file=rollouts)
    headers = auth(gateway_keys)
    try:
        job = submit(gw, headers, embeddings_job(sentences(40, f"routed {uuid.uuid4().hex[:6]}"))).json()
        done, _ = wait_job(gw, headers, job["id"], finished, within_s=120)
        assert done["status"] == "succeeded", done
        sync = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": "a routed request"},
                          headers=headers, timeout=30)
        assert sync.status_code == 200 and sync.headers["x-tritonstack-model-version"] == "1"
        counts = {s.version: s.inference_count for s in client.get_inference_statistics(MODEL).model_stats}
        assert counts["1"] > 1 and counts["2"] == 0, counts  # without the table's choice: all on version 2
    finally:
        client.close()
        gw.stop()
        worker.process.stop()
        triton.stop()


def test_sigkilled_worker_job_completes_on_another_worker_each_item_once(
    worker_factory: Callable[..., Worker], triton_server: TritonServer, redis_server: RedisServer,
    gateway_keys: GatewayKeys,
) -> None:
    queue = new_queue()
    first = worker_factory(queue)
    gw = jobs_gateway(triton_server, redis_server, gateway_keys, queue)
    try:
        headers = auth(gateway_keys)
        job = submit(gw, headers, embeddings_job(sentences(1000, uuid.uuid4().hex[:8]))).json()
        job, _ = wait_job(gw, headers, job["id"], lambda j: j["progress"]["done"] > 0)
        first.process.signal(signal.SIGKILL)
        kill_time = time.monotonic()
        killed_at = job["progress"]["done"]
        assert killed_at < 1000, "the job finished before the worker could be killed"

        second = worker_factory(queue)
        job, seen = wait_job(gw, headers, job["id"], finished)
        print(f"\nworker SIGKILL at {killed_at}/1000 items; finished on attempt {job['attempts']} "
              f"{time.monotonic() - kill_time:.1f}s after the kill (second worker's start included)")
        assert job["status"] == "succeeded", job
        assert seen == sorted(seen) and job["attempts"] >= 2
        assert job["progress"] == {"done": 1000, "total": 1000, "failed": 0}
        assert_each_once(result_lines(gw, headers, job["id"]), 1000)
        text = second.metrics()
        assert 'tritonstack_jobs_orphans_reaped_total{action="requeued"} 1.0' in text, text
    finally:
        gw.stop()


def test_cancel_stops_a_running_job_and_keeps_partial_results(jobs_stack: JobsStack) -> None:
    gw, headers = jobs_stack.gateway, jobs_stack.headers()
    job = submit(gw, headers, embeddings_job(sentences(1000, uuid.uuid4().hex[:8]))).json()
    wait_job(gw, headers, job["id"], lambda j: j["progress"]["done"] > 0)
    response = httpx.delete(f"{gw.url}/v1/jobs/{job['id']}", headers=headers)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"

    job, _ = wait_job(gw, headers, job["id"], finished)  # the worker acknowledged between two batches
    assert job["status"] == "cancelled" and 0 < job["progress"]["done"] < 1000
    lines = result_lines(gw, headers, job["id"])
    assert len(lines) == job["progress"]["done"]
    assert_each_once(lines)
    assert httpx.delete(f"{gw.url}/v1/jobs/{job['id']}", headers=headers).json()["status"] == "cancelled"


def test_cancel_queued_job_removes_it_from_the_queue(idle_gateway: RunningGateway, gateway_keys: GatewayKeys,
                                                     redis_server: RedisServer) -> None:
    headers = auth(gateway_keys)
    job = submit(idle_gateway, headers, embeddings_job(["never run"])).json()
    queue = idle_gateway.settings.jobs_queue_name
    client = redis.Redis.from_url(redis_server.url)
    assert client.zscore(queue, job["id"]) is not None
    response = httpx.delete(f"{idle_gateway.url}/v1/jobs/{job['id']}", headers=headers)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert client.zscore(queue, job["id"]) is None
    assert result_lines(idle_gateway, headers, job["id"]) == []


def test_a_job_that_cannot_succeed_records_why(jobs_stack: JobsStack, redis_server: RedisServer,
                                               gateway_keys: GatewayKeys) -> None:
    # a gateway that cannot reach Triton accepts any model name; the worker finds out it does not exist
    gw = jobs_gateway(None, redis_server, gateway_keys, jobs_stack.queue)
    try:
        headers = auth(gateway_keys)
        job = submit(gw, headers, embeddings_job(["x"], model="ghost")).json()
        job, _ = wait_job(gw, headers, job["id"], finished)
        assert job["status"] == "failed" and job["error"]["code"] == "model_not_found"
        assert "ghost" in job["error"]["message"]
    finally:
        gw.stop()


def test_results_expire_after_their_ttl(jobs_stack: JobsStack, redis_server: RedisServer, triton_server: TritonServer,
                                        gateway_keys: GatewayKeys) -> None:
    gw = jobs_gateway(triton_server, redis_server, gateway_keys, jobs_stack.queue, jobs_result_ttl_s=1)
    try:
        headers = auth(gateway_keys)
        job = submit(gw, headers, embeddings_job(["short-lived"])).json()
        wait_job(gw, headers, job["id"], finished)
        deadline = time.monotonic() + 5
        while httpx.get(f"{gw.url}/v1/jobs/{job['id']}", headers=headers).status_code != 404:
            assert time.monotonic() < deadline, "the job outlived its result TTL"
            time.sleep(0.1)
        assert not redis.Redis.from_url(redis_server.url).keys(f"tritonstack:job:{{{job['id']}}}*")
    finally:
        gw.stop()


# --- API contract ----------------------------------------------------------------------------------------------


def test_idempotency_key_same_body_one_job_other_body_409(idle_gateway: RunningGateway,
                                                          gateway_keys: GatewayKeys) -> None:
    headers = auth(gateway_keys, **{"Idempotency-Key": uuid.uuid4().hex})
    first = submit(idle_gateway, headers, embeddings_job(["a", "b"]))
    again = submit(idle_gateway, headers, embeddings_job(["a", "b"]))
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = submit(idle_gateway, headers, embeddings_job(["a", "c"]))
    assert other.status_code == 409 and other.headers["x-should-retry"] == "false"
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert other.json()["error"]["type"] == "conflict_error"


def test_another_key_cannot_see_the_job(idle_gateway: RunningGateway, gateway_keys: GatewayKeys) -> None:
    job = submit(idle_gateway, auth(gateway_keys), embeddings_job(["mine"])).json()
    other = auth(gateway_keys, admin=True)
    for method, path in (("GET", ""), ("GET", "/result"), ("DELETE", "")):
        response = httpx.request(method, f"{idle_gateway.url}/v1/jobs/{job['id']}{path}", headers=other)
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
    assert get_job(idle_gateway, auth(gateway_keys), job["id"])["status"] == "queued"


def test_limits_and_validation(triton_server: TritonServer, redis_server: RedisServer,
                               gateway_keys: GatewayKeys) -> None:
    gw = jobs_gateway(triton_server, redis_server, gateway_keys, new_queue(), jobs_max_active_per_key=2,
                      jobs_max_items=3)
    client = redis.Redis.from_url(redis_server.url)
    client.delete(JobStore.owner_key("key:test-user"), JobStore.owner_key("key:test-admin"))  # earlier tests' jobs
    try:
        headers = auth(gateway_keys)
        assert submit(gw, headers, embeddings_job(["1", "2", "3", "4"])).json()["error"]["code"] == "too_many_items"
        accepted = [submit(gw, headers, embeddings_job([text])) for text in ("x", "y")]
        assert [r.status_code for r in accepted] == [202, 202]
        refused = submit(gw, headers, embeddings_job(["z"]))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_active_jobs"
        assert submit(gw, auth(gateway_keys, admin=True), embeddings_job(["z"])).status_code == 202  # per key
        httpx.delete(f"{gw.url}/v1/jobs/{accepted[0].json()['id']}", headers=headers)
        assert submit(gw, headers, embeddings_job(["z"])).status_code == 202  # a cancelled job frees its slot
        bad = submit(gw, headers, {"type": "embeddings", "model": MODEL, "input": ["a"], "documents": []})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        unknown = submit(gw, auth(gateway_keys, admin=True), embeddings_job(["a"], model="nope"))
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    finally:
        gw.stop()
        client.delete(JobStore.owner_key("key:test-user"), JobStore.owner_key("key:test-admin"))


def test_redis_unreachable_is_503(triton_server: TritonServer, gateway_keys: GatewayKeys) -> None:
    gw = jobs_gateway(triton_server, None, gateway_keys, new_queue(), jobs_redis_timeout_ms=300)
    try:
        response = submit(gw, auth(gateway_keys), embeddings_job(["a"]))
        assert response.status_code == 503 and response.json()["error"]["code"] == "jobs_unavailable"
        assert httpx.get(f"{gw.url}/v1/jobs/job_x", headers=auth(gateway_keys)).status_code == 503
    finally:
        gw.stop()


# --- webhooks --------------------------------------------------------------------------------------------------


def test_failing_webhook_is_retried_and_its_signature_verifies(jobs_stack: JobsStack) -> None:
    gw, headers = jobs_stack.gateway, jobs_stack.headers()
    with WebhookSink(fail_first=2) as sink:
        answer = submit(gw, headers, embeddings_job(["hook one", "hook two"], webhook={"url": sink.url})).json()
        secret = answer["webhook_secret"]
        job, _ = wait_job(gw, headers, answer["id"], lambda j: j["webhook"]["status"] in ("delivered", "failed"))
    assert job["webhook"] == {"url": sink.url, "status": "delivered", "attempts": 3, "delivered": True,
                              "last_error": "HTTP 500"}  # the latest failed attempt's reason is kept
    assert [status for _, _, status in sink.received] == [500, 500, 204]
    for attempt, (head, body, _) in enumerate(sink.received, start=1):
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(head["X-Tritonstack-Signature"], expected)
        assert head["X-Tritonstack-Delivery"] == f"{answer['id']}:{attempt}"
    import orjson

    delivered = orjson.loads(sink.received[-1][1])
    assert delivered["event"] == "job.succeeded" and delivered["job"]["id"] == answer["id"]
    assert "webhook_secret" not in delivered["job"]


# --- chat jobs -------------------------------------------------------------------------------------------------


def test_chat_job_runs_each_request_through_the_routes(
    worker_factory: Callable[..., Worker], redis_server: RedisServer, gateway_keys: GatewayKeys,
    fake_llm: FakeUpstream, tmp_path: Path,
) -> None:
    clear_chat_state(redis_server.url)
    routes = tmp_path / "routes.yaml"
    routes.write_text(yaml.safe_dump({"deployments": {"primary": cloud(fake_llm, "up-primary")},
                                      "routes": {"chat": {"deployments": ["primary"]}}}))
    queue = new_queue()
    worker_factory(queue, gateway_env={"ROUTES_FILE": str(routes), "AUTH_DISABLED": "true",
                                       "REDIS_URL": redis_server.url})
    gw = jobs_gateway(None, redis_server, gateway_keys, queue, routes_file=routes)
    try:
        fake_llm.state.fault("up-primary", Fault(status=400), times=1)
        requests = [{"custom_id": f"q{i}", "body": {"model": "chat", "max_tokens": 20,
                                                    "messages": [{"role": "user", "content": f"question {i}"}]}}
                    for i in range(6)]
        headers = auth(gateway_keys)
        response = submit(gw, headers, {"type": "chat", "requests": requests})
        assert response.status_code == 202, response.text
        job, _ = wait_job(gw, headers, response.json()["id"], finished)
        assert job["status"] == "succeeded" and job["progress"] == {"done": 6, "total": 6, "failed": 1}
        lines = sorted(result_lines(gw, headers, job["id"]), key=lambda line: line["index"])
        assert [line["custom_id"] for line in lines] == [f"q{i}" for i in range(6)]
        failed = [line for line in lines if "error" in line]
        assert len(failed) == 1 and failed[0]["error"]["status"] == 400
        answers = {line["index"]: line["response"]["choices"][0]["message"]["content"]
                   for line in lines if "response" in line}
        assert all(answers[i] == f"Echo: question {i}" for i in answers)
        assert all(line["served_by"] == "primary" for line in lines if "response" in line)
        assert job["usage"]["total_tokens"] > 0
        unknown = submit(gw, headers, {"type": "chat", "requests": [{"body": {**requests[0]["body"], "model": "x"}}]})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "requests.0.body.model"
    finally:
        gw.stop()
