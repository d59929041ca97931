"""Jobs: validate and submit, read status and results, cancel — on the shared `JobStore`. No FastAPI here.

Jobs belong to the identity that submitted them (`key:<name>`); any other caller gets 404, as for a job that
does not exist. Per key, at most `jobs_max_active_per_key` jobs may be queued or running and their input
items may not exceed `jobs_max_pending_items_per_key` (429, checked atomically with the submit). An
`Idempotency-Key` is remembered per key for `jobs_idempotency_ttl_s`: the same key with the same body (as
parsed, so whitespace does not matter) answers the existing job; with another body, 409. Redis unreachable →
503 (`jobs_unavailable`): the jobs API has nothing to fall back on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import RedisError

from gateway.auth import Principal
from gateway.backends.base import valid_model_name
from gateway.chat.service import ChatService
from gateway.config import GatewaySettings
from gateway.embeddings.service import EmbeddingService
from gateway.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
)
from gateway.jobqueue.egress import WebhookPolicy
from gateway.jobqueue.records import JobRecord, JobStatus, JobType
from gateway.jobqueue.store import JobStore, NewJob, SubmitLimits, new_job_id
from gateway.jobs_api.protocol import ChatJobRequest, ClassifyJobRequest, EmbeddingsJobRequest, RerankJobRequest
from gateway.models.tasks import CLASSIFY, EMBED, RERANK, require_task
from gateway.tracing import carrier, span

log = logging.getLogger("gateway.jobs")

JobRequest = EmbeddingsJobRequest | ChatJobRequest | RerankJobRequest | ClassifyJobRequest


@dataclass(frozen=True, slots=True)
class JobPolicy:
    """Limits and defaults from settings."""

    result_ttl_s: int
    max_items: int
    max_document_chars: int
    chunk_tokens: int
    chunk_overlap: int
    limits: SubmitLimits
    webhooks: WebhookPolicy = field(default_factory=WebhookPolicy)

    @classmethod
    def from_settings(cls, s: GatewaySettings) -> JobPolicy:
        """The `jobs_*` settings."""
        return cls(s.jobs_result_ttl_s, s.jobs_max_items, s.jobs_max_document_chars, s.jobs_chunk_tokens,
                   min(s.jobs_chunk_overlap, s.jobs_chunk_tokens - 1),
                   SubmitLimits(s.jobs_max_active_per_key, s.jobs_max_pending_items_per_key, s.jobs_idempotency_ttl_s),
                   WebhookPolicy(s.jobs_webhook_allow_private))


class JobsMetrics:
    """The gateway's view of the queue, on the app's registry (refreshed every `jobs_metrics_interval_s`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge("gateway_jobs_queue_depth", "Jobs waiting to run.", registry=registry)
        self.running = Gauge("gateway_jobs_running", "Jobs running now.", registry=registry)
        self.submitted = Counter("gateway_jobs_submitted", "Job submissions by type and outcome.",
                                 ["type", "outcome"], registry=registry)


@contextlib.contextmanager
def redis_required() -> Iterator[None]:
    """Redis failures → 503 envelope."""
    try:
        yield
    except (RedisError, OSError) as exc:
        log.warning("jobs: Redis unavailable: %s", exc)
        raise BackendUnavailableError("The jobs queue (Redis) is unreachable; retry shortly",
                                      code="jobs_unavailable") from None


@dataclass(frozen=True, slots=True)
class Accepted:
    """The answer to a submit: the job object, and whether it is an idempotent replay."""

    job: dict[str, Any]
    replayed: bool


class JobsService:
    """Serves `/v1/jobs`."""

    def __init__(self, store: JobStore, policy: JobPolicy, metrics: JobsMetrics, *, embeddings: EmbeddingService,
                 chat: ChatService | None, metrics_interval_s: float) -> None:
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.embeddings = embeddings
        self.chat = chat
        self._interval_s = metrics_interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start refreshing the queue gauges (inside the running loop)."""
        self._task = asyncio.create_task(self._refresh_forever(), name="jobs-metrics")

    async def aclose(self) -> None:
        """Stop the refresher and close the store's Redis client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.store.redis.aclose()

    async def _refresh_forever(self) -> None:
        while True:
            with contextlib.suppress(RedisError, OSError):
                queued, running = await self.store.counts()
                self.metrics.queue_depth.set(queued)
                self.metrics.running.set(running)
            await asyncio.sleep(self._interval_s)

    # --- submit ----------------------------------------------------------------------------------------------

    async def submit(self, request: JobRequest, principal: Principal, idempotency_key: str | None) -> Accepted:
        """Validate, then queue the job (or answer the job this idempotency key already created)."""
        if request.webhook is not None and (refused := self.policy.webhooks.refusal(request.webhook.url)):
            # the worker applies the same policy at delivery: what it would refuse is refused here, up front
            raise InvalidRequestError(refused, param="webhook.url", code="webhook_url_not_allowed")
        if isinstance(request, EmbeddingsJobRequest):
            job_input, items, model = await self._embeddings_input(request, principal)
        elif isinstance(request, RerankJobRequest):
            job_input, items, model = await self._rerank_input(request, principal)
        elif isinstance(request, ClassifyJobRequest):
            job_input, items, model = await self._classify_input(request, principal)
        else:
            job_input, items, model = self._chat_input(request)
        secret = request.webhook.secret if request.webhook else None
        if request.webhook is not None and secret is None:
            secret = f"whsec_{secrets.token_hex(24)}"
        digest = hashlib.sha256(orjson.dumps(request.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()
        job = NewJob(id=new_job_id(), type=JobType(request.type), owner=principal.identity,
                     owner_name=principal.name, items=items, input=orjson.dumps(job_input),
                     fields=self._fields(request, model, secret), idempotency_key=idempotency_key, digest=digest)
        with redis_required(), span("job.submit", {"tritonstack.job.id": job.id, "tritonstack.job.type": job.type.value,
                                                   "tritonstack.items": items}):
            outcome = await self.store.submit(job, self.policy.limits)
            self.metrics.submitted.labels(job.type.value, outcome.outcome).inc()
            return await self._accepted(outcome.outcome, outcome.job_id, outcome.detail, principal, request, secret)

    async def _accepted(self, outcome: str, job_id: str | None, detail: str, principal: Principal,
                        request: JobRequest, secret: str | None) -> Accepted:
        if outcome == "conflict":
            raise ConflictError("This Idempotency-Key was already used with a different request body",
                                param="Idempotency-Key", code="idempotency_key_reused",
                                headers={"x-should-retry": "false"})
        if outcome == "too_many_jobs":
            raise RateLimitedError(f"This key already has {detail} queued or running jobs (at most "
                                   f"{self.policy.limits.max_active_jobs}); wait for one to finish",
                                   code="too_many_active_jobs", quota=True)
        if outcome == "too_many_items":
            raise RateLimitedError(f"This key's queued and running jobs already hold {detail} items (at most "
                                   f"{self.policy.limits.max_pending_items} in all)", code="too_many_pending_items",
                                   quota=True)
        record = await self._owned(job_id or "", principal)
        job = record.public()
        if request.webhook is not None and request.webhook.secret is None:
            job["webhook_secret"] = record.webhook_secret if outcome == "replay" else secret
        return Accepted(job, replayed=outcome == "replay")

    def _fields(self, request: JobRequest, model: str | None, secret: str | None) -> dict[str, str]:
        fields = {"result_ttl_s": str(self.policy.result_ttl_s)}
        if model is not None:
            fields["model"] = model
        if request.metadata:
            fields["metadata"] = orjson.dumps(request.metadata).decode()
        if request.webhook is not None and secret is not None:
            fields.update(webhook_url=request.webhook.url, webhook_secret=secret)
        fields.update(carrier())  # the worker's spans continue this request's trace
        return fields

    def _check_items(self, n: int, param: str) -> None:
        if n > self.policy.max_items:
            raise InvalidRequestError(f"'{param}' holds {n} items; at most {self.policy.max_items} per job",
                                      param=param, code="too_many_items")

    async def _embeddings_input(self, request: EmbeddingsJobRequest, principal: Principal
                                ) -> tuple[dict[str, Any], int, str]:
        documents = request.document_list()
        param = "input" if request.input is not None else "documents"
        self._check_items(len(documents), param)
        self._check_chars([doc.text for doc in documents], param)
        await self._check_model(request.model, EMBED, "an embeddings job")
        chunking = (request.chunking.model_dump() if request.chunking is not None
                    else {"max_tokens": self.policy.chunk_tokens, "overlap": self.policy.chunk_overlap})
        job = {"model": request.model, "documents": [d.model_dump() for d in documents], "chunking": chunking,
               "encoding_format": request.encoding_format}
        await self._choose_version(job, request.model, principal)
        return job, len(documents), request.model

    async def _rerank_input(self, request: RerankJobRequest, principal: Principal) -> tuple[dict[str, Any], int, str]:
        groups = []
        for g, group in enumerate(request.group_list()):
            param = f"groups.{g}" if request.groups is not None else ""
            documents = [{"id": i, "text": d} if isinstance(d, str) else d.model_dump()
                         for i, d in enumerate(group.documents)]
            self._check_chars([group.query], f"{param}.query".lstrip("."))
            self._check_chars([d["text"] for d in documents], f"{param}.documents".lstrip("."))
            groups.append({"id": g if group.id is None else group.id, "query": group.query, "documents": documents})
        pairs = sum(len(group["documents"]) for group in groups)
        self._check_items(pairs, "groups" if request.groups is not None else "documents")
        await self._check_model(request.model, RERANK, "a rerank job")
        job = {"model": request.model, "groups": groups}
        await self._choose_version(job, request.model, principal)
        return job, pairs, request.model

    async def _classify_input(self, request: ClassifyJobRequest, principal: Principal
                              ) -> tuple[dict[str, Any], int, str]:
        documents = request.document_list()
        param = "input" if request.input is not None else "documents"
        self._check_items(len(documents), param)
        self._check_chars([doc.text for doc in documents], param)
        await self._check_model(request.model, CLASSIFY, "a classify job")
        job = {"model": request.model, "documents": [d.model_dump() for d in documents], "top_k": request.top_k}
        await self._choose_version(job, request.model, principal)
        return job, len(documents), request.model

    def _check_chars(self, texts: list[str], param: str) -> None:
        for i, text in enumerate(texts):
            if len(text) > self.policy.max_document_chars:
                raise InvalidRequestError(f"'{param}[{i}]' has {len(text)} characters; at most "
                                          f"{self.policy.max_document_chars} per document", param=param,
                                          code="input_too_long")

    async def _choose_version(self, job: dict[str, Any], model: str, principal: Principal) -> None:
        """The owner's version under the rollout table, as its requests get (Triton down: the worker chooses)."""
        with contextlib.suppress(BackendUnavailableError, BackendTimeoutError):
            if (version := await self.embeddings.job_version(model, principal)) is not None:
                job["model_version"] = version

    async def _check_model(self, model: str, task: str, asker: str) -> None:
        """404 for a model Triton does not serve, 400 for one of another task; accepted when Triton cannot be
        asked now (it runs later)."""
        if not valid_model_name(model):
            raise NotFoundError(f"The model '{model}' does not exist or is not ready", param="model",
                                code="model_not_found")
        with contextlib.suppress(BackendUnavailableError, BackendTimeoutError):
            require_task(await self.embeddings.model(model), task, asker)

    def _chat_input(self, request: ChatJobRequest) -> tuple[dict[str, Any], int, None]:
        self._check_items(len(request.requests), "requests")
        known = set(self.chat.model_names()) if self.chat is not None else set()
        for i, item in enumerate(request.requests):
            if item.body.get("model") not in known:
                raise NotFoundError(f"The model '{item.body.get('model')}' of 'requests[{i}]' does not exist",
                                    param=f"requests.{i}.body.model", code="model_not_found")
        return {"requests": [item.model_dump() for item in request.requests]}, len(request.requests), None

    # --- read, cancel ----------------------------------------------------------------------------------------

    async def _owned(self, job_id: str, principal: Principal) -> JobRecord:
        record = await self.store.get(job_id) if job_id.startswith("job_") else None
        if record is None or record.owner != principal.identity:
            raise NotFoundError(f"No job '{job_id}'", param="id", code="job_not_found")
        return record

    async def get(self, job_id: str, principal: Principal) -> dict[str, Any]:
        """The job object."""
        with redis_required():
            return (await self._owned(job_id, principal)).public()

    async def results(self, job_id: str, principal: Principal) -> tuple[JobRecord, AsyncIterator[bytes]]:
        """The record and an iterator over the JSONL stored so far (in unit order)."""
        with redis_required():
            record = await self._owned(job_id, principal)
        units = int(record.plan["units"]) if record.plan else 0
        return record, self._stream(job_id, units)

    async def _stream(self, job_id: str, units: int) -> AsyncIterator[bytes]:
        try:
            async for data in self.store.results(job_id, units):
                yield data
        except (RedisError, OSError) as exc:  # headers are gone: end the body early (the status says so)
            log.warning("jobs: result stream of %s broke: %s", job_id, exc)

    async def cancel(self, job_id: str, principal: Principal) -> dict[str, Any]:
        """Cancel a queued (removed at once) or running (stops between batches) job; 409 once it finished."""
        with redis_required():
            record = await self._owned(job_id, principal)
            outcome = await self.store.cancel(job_id)
            if outcome in (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value):
                raise ConflictError(f"Job '{job_id}' already {outcome}; nothing to cancel", code="job_finished",
                                    headers={"x-should-retry": "false"})
            return (await self._owned(job_id, principal) if outcome != "missing" else record).public()
