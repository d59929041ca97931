"""Bulk `rerank` and `classify` jobs end to end: real redis-server, tritonserver (the toy task models of
tests/fixtures/task_models.py), gateway and `tritonstack worker` subprocesses."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway
from tests.fixtures.jobs import JobsStack, Worker, jobs_gateway, new_queue, start_worker
from tests.fixtures.task_models import (
    CLASSIFY_MODEL,
    LABELS,
    RERANK_MODEL,
    classify_scores,
    pair_tokens,
    rerank_score,
    text_tokens,
)


@pytest.fixture(scope="module")
def task_jobs(task_triton: TritonServer, task_repository: Path, redis_server: RedisServer,
              gateway_keys: GatewayKeys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsStack]:
    """A gateway and a worker on a fresh queue, in front of the toy task models."""
    queue = new_queue()
    worker = start_worker(task_triton, redis_server, task_repository, queue, tmp_path_factory.mktemp("worker"))
    gateway = jobs_gateway(task_triton, redis_server, gateway_keys, queue)
    try:
        yield JobsStack(gateway, worker, queue, gateway_keys)
    finally:
        gateway.stop()
        worker.process.stop()


def tagged(texts: list[str]) -> list[str]:
    """Texts no other test sent (the cache is shared by the session)."""
    tag = uuid.uuid4().hex[:8]
    return [f"{t} {tag}" for t in texts]


def submit(stack: JobsStack, body: dict[str, Any] | bytes, **params: str) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(f"{stack.gateway.url}/v1/jobs", content=body, params=params, timeout=30,
                          headers=stack.headers(**{"Content-Type": "application/x-ndjson"}))
    return httpx.post(f"{stack.gateway.url}/v1/jobs", json=body, headers=stack.headers(), timeout=30)


def finish(gw: RunningGateway, headers: dict[str, str], job_id: str, within_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while (job := httpx.get(f"{gw.url}/v1/jobs/{job_id}", headers=headers, timeout=10).json())["finished_at"] is None:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def lines(gw: RunningGateway, headers: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{gw.url}/v1/jobs/{job_id}/result", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return [orjson.loads(line) for line in response.content.splitlines() if line]


def test_rerank_job_one_query(task_jobs: JobsStack) -> None:
    query = "triton batches requests"
    documents = tagged(["Triton batches requests.", "Redis caches.", "requests are batched", "nothing", "triton"])
    objects: list[Any] = [*documents[:3], {"id": "doc-d", "text": documents[3]}, {"id": 7, "text": documents[4]}]
    accepted = submit(task_jobs, {"type": "rerank", "model": RERANK_MODEL, "query": query, "documents": objects})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["type"] == "rerank" and accepted.json()["input_items"] == 5
    job = finish(task_jobs.gateway, task_jobs.headers(), accepted.json()["id"])
    assert job["status"] == "succeeded", job
    tokens = sum(pair_tokens(query, d) for d in documents)
    assert job["progress"] == {"done": 5, "total": 5, "failed": 0}
    assert job["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    got = lines(task_jobs.gateway, task_jobs.headers(), job["id"])
    assert [(x["query_id"], x["document_id"], x["index"]) for x in got] == [
        (0, 0, 0), (0, 1, 1), (0, 2, 2), (0, "doc-d", 3), (0, 7, 4)]  # input order
    for line, document in zip(got, documents, strict=True):
        assert line["relevance_score"] == pytest.approx(rerank_score(query, document), abs=1e-6)
        assert line["tokens"] == pair_tokens(query, document)

    # the job filled the per-pair cache that /v1/rerank reads
    again = httpx.post(f"{task_jobs.gateway.url}/v1/rerank", headers=task_jobs.headers(), timeout=30,
                       json={"model": RERANK_MODEL, "query": query, "documents": documents})
    assert again.headers["x-cache"] == "hit"


def test_rerank_job_groups_over_several_batches(task_jobs: JobsStack) -> None:
    groups = [{"id": f"q{g}", "query": f"topic {g} words", "documents": tagged([f"topic {g} doc {i}" if i % 2 else
                                                                               f"other doc {i}" for i in range(7)])}
              for g in range(3)]  # 21 pairs: 6 batches of the model's max_batch_size (4)
    accepted = submit(task_jobs, {"type": "rerank", "model": RERANK_MODEL, "groups": groups})
    job = finish(task_jobs.gateway, task_jobs.headers(), accepted.json()["id"])
    assert job["status"] == "succeeded" and job["progress"]["total"] == 21, job
    got = lines(task_jobs.gateway, task_jobs.headers(), job["id"])
    want = [(group["id"], i, rerank_score(group["query"], d)) for group in groups
            for i, d in enumerate(group["documents"])]
    assert [(x["query_id"], x["index"]) for x in got] == [(q, i) for q, i, _ in want]
    assert [x["relevance_score"] for x in got] == pytest.approx([s for _, _, s in want], abs=1e-6)

    # the same groups as a JSONL upload, one group per line
    upload = b"".join(orjson.dumps(group) + b"\n" for group in groups)
    replayed = submit(task_jobs, upload, type="rerank", model=RERANK_MODEL)
    assert replayed.status_code == 202, replayed.text
    job = finish(task_jobs.gateway, task_jobs.headers(), replayed.json()["id"])
    assert lines(task_jobs.gateway, task_jobs.headers(), job["id"]) == got


def test_classify_job(task_jobs: JobsStack) -> None:
    texts = tagged(["a good, great day", "terrible and bad", "plain words", "love it"] * 3)
    accepted = submit(task_jobs, {"type": "classify", "model": CLASSIFY_MODEL, "input": texts, "top_k": 2})
    assert accepted.status_code == 202, accepted.text
    job = finish(task_jobs.gateway, task_jobs.headers(), accepted.json()["id"])
    assert job["status"] == "succeeded" and job["progress"] == {"done": 12, "total": 12, "failed": 0}, job
    got = lines(task_jobs.gateway, task_jobs.headers(), job["id"])
    assert [x["document_id"] for x in got] == list(range(12))
    for line, text in zip(got, texts, strict=True):
        want = sorted(zip(LABELS, classify_scores(text), strict=True), key=lambda p: -p[1])[:2]
        assert [label["label"] for label in line["labels"]] == [name for name, _ in want]
        assert [label["score"] for label in line["labels"]] == pytest.approx([s for _, s in want], abs=1e-6)
        assert line["tokens"] == text_tokens(text)

    # documents with ids, as JSONL; every label by default; the endpoint finds them cached
    upload = b"".join(orjson.dumps({"id": f"d{i}", "text": t}) + b"\n" for i, t in enumerate(texts[:3]))
    job = finish(task_jobs.gateway, task_jobs.headers(),
                 submit(task_jobs, upload, type="classify", model=CLASSIFY_MODEL).json()["id"])
    got = lines(task_jobs.gateway, task_jobs.headers(), job["id"])
    assert [x["document_id"] for x in got] == ["d0", "d1", "d2"] and all(len(x["labels"]) == 3 for x in got)
    again = httpx.post(f"{task_jobs.gateway.url}/v1/classify", headers=task_jobs.headers(), timeout=30,
                       json={"model": CLASSIFY_MODEL, "input": texts[:3]})
    assert again.headers["x-cache"] == "hit"


@pytest.mark.parametrize(("body", "param"), [
    ({"type": "rerank", "model": CLASSIFY_MODEL, "query": "q", "documents": ["d"]}, "model"),
    ({"type": "classify", "model": RERANK_MODEL, "input": ["x"]}, "model"),
    ({"type": "rerank", "model": RERANK_MODEL, "query": "q"}, None),
    ({"type": "rerank", "model": RERANK_MODEL, "query": "q", "documents": ["d"], "groups": []}, None),
    ({"type": "classify", "model": CLASSIFY_MODEL, "input": ["x"], "top_k": 0}, "classify.top_k"),
])
def test_invalid_jobs_are_refused(task_jobs: JobsStack, body: dict[str, Any], param: str | None) -> None:
    response = submit(task_jobs, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    if param == "model":
        assert error["code"] == "model_task_mismatch" and error["param"] == "model", error
        assert " job needs a " in error["message"], error
    elif param is not None:
        assert error["param"] == param, error


def test_sigkilled_worker_rerank_job_completes_each_pair_once(
    task_triton: TritonServer, task_repository: Path, redis_server: RedisServer, gateway_keys: GatewayKeys,
    tmp_path: Path,
) -> None:
    """arq may run a job twice (here: after a SIGKILL, on another worker): every pair is stored exactly once."""
    queue = new_queue()
    first = start_worker(task_triton, redis_server, task_repository, queue, tmp_path)
    gw = jobs_gateway(task_triton, redis_server, gateway_keys, queue)
    second: Worker | None = None
    try:
        stack = JobsStack(gw, first, queue, gateway_keys)
        documents = tagged([f"document number {i} about triton" for i in range(3000)])
        job = submit(stack, {"type": "rerank", "model": RERANK_MODEL, "query": "triton", "documents": documents}
                     ).json()
        deadline = time.monotonic() + 60
        while httpx.get(f"{gw.url}/v1/jobs/{job['id']}", headers=stack.headers(), timeout=10
                        ).json()["progress"]["done"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first.process.signal(signal.SIGKILL)
        second = start_worker(task_triton, redis_server, task_repository, queue, tmp_path)
        job = finish(gw, stack.headers(), job["id"])
        assert job["status"] == "succeeded" and job["progress"] == {"done": 3000, "total": 3000, "failed": 0}, job
        got = lines(gw, stack.headers(), job["id"])
        assert [x["index"] for x in got] == list(range(3000))  # each pair once, in order
        print(f"\nrerank job: attempts {job['attempts']}")
    finally:
        gw.stop()
        for worker in (first, second):
            if worker is not None:
                worker.process.stop()
