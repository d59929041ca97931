"""Running one job: lease, plan, units with bounded concurrency, per-unit checkpoints, cancel, finish, retry.

A job is planned into numbered units (a batch of chunks, a chat request). Each unit's JSONL is committed
with its progress in one script, once: a unit already stored is skipped when a retried job resumes, so every
item appears exactly once. The worker holds a lease it renews every `lease_s / 3`; a worker that dies stops
renewing, and the reaper (`jobs.reaper`) frees the job for another worker. The status is read before each
unit: a cancel stops the job between units and keeps what is done. Transient failures (Triton or Redis
unavailable, timeouts) defer a retry with exponential backoff while tries are left; anything else, or the
last try, fails the job for good with the reason recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from arq.worker import Retry
from opentelemetry.trace import SpanKind
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import BackendTimeoutError, BackendUnavailableError, GatewayError
from gateway.jobqueue.records import JobRecord, JobStatus, job_error
from gateway.tracing import failed, span
from jobs.runtime import Runtime

log = logging.getLogger("jobs.runner")

_MAX_BACKOFF_S = 60.0


class JobFailedError(Exception):
    """A job cannot succeed (bad input, unknown model…): fail it now with `code`."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class LeaseLostError(Exception):
    """Another worker took the job over (this one was presumed dead): stop without touching it."""


@dataclass(frozen=True, slots=True)
class UnitResult:
    """One unit's JSONL and what it counts for."""

    data: bytes
    items: int
    failed: int = 0
    tokens: int = 0


class Work(Protocol):
    """A planned job."""

    units: int

    async def run_unit(self, index: int) -> UnitResult:
        """Compute unit `index` (pure: storing is the runner's business)."""
        ...


Planner = Callable[[Runtime, JobRecord, bytes], Awaitable[Work]]


def classify(exc: BaseException) -> tuple[str, str, bool]:
    """(code, message, transient?) of a failure."""
    if isinstance(exc, JobFailedError):
        return exc.code, exc.message, False
    if isinstance(exc, GatewayError):
        transient = isinstance(exc, BackendUnavailableError | BackendTimeoutError)
        return exc.code or type(exc).__name__, exc.message, transient
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | ConnectionError):
        return "connection_error", f"{type(exc).__name__}: {exc}", True
    return "internal_error", f"{type(exc).__name__}: {exc}", False


async def finalize(rt: Runtime, record: JobRecord, status: JobStatus, error: dict[str, Any] | None = None) -> str:
    """Make the job terminal, count it, and queue its webhook when it has one."""
    final, hook = await rt.store.finish(record.id, record.owner, status, error)
    if final == "missing":
        return final
    rt.metrics.finished.labels(record.type.value, final).inc()
    if record.started_ms is not None:
        rt.metrics.duration.labels(record.type.value).observe(max(time.time() - record.started_ms / 1000, 0.0))
    if hook:
        await rt.arq.enqueue_job("deliver_webhook", record.id, _job_id=f"{record.id}:webhook",
                                 _queue_name=rt.config.queue_name)
    return final


class _Lease:
    """Renews the job's lease in the background; `lost` once another worker holds it."""

    def __init__(self, rt: Runtime, job_id: str) -> None:
        self.rt, self.job_id = rt, job_id
        self.token = f"{rt.worker_id}:{uuid.uuid4().hex[:8]}"
        self.lost = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        interval = self.rt.config.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.rt.store.renew(self.job_id, self.token, self.rt.config.lease_ms):
                    self.lost = True
                    return
            except Exception as exc:  # Redis hiccup: keep trying while the lease has time left
                log.warning("lease renewal of %s failed: %s", self.job_id, exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.rt.store.release(self.job_id, self.token)


async def run_job(rt: Runtime, job_id: str, job_try: int, planner: Planner) -> dict[str, Any]:
    """Run (or resume) job `job_id`; the dict is arq's result (logged, kept `keep_result_s`)."""
    lease = _Lease(rt, job_id)
    status, first = await rt.store.start(job_id, lease.token, rt.config.lease_ms)
    if status == "leased":  # a worker that is shutting down still holds it: come back once its lease is gone
        raise Retry(defer=rt.config.lease_s)
    if status != JobStatus.RUNNING.value:
        return {"skipped": status}
    record = await rt.store.get(job_id)
    if record is None:
        return {"skipped": "missing"}
    if first and record.started_ms is not None:
        rt.metrics.pickup.labels(record.type.value).observe(max(record.started_ms - record.created_ms, 0) / 1000)
    lease.start()
    rt.metrics.in_progress.inc()
    # a span under the submitting request's (its context travels in the record): one trace from POST to result
    attributes = {"tritonstack.job.id": job_id, "tritonstack.job.type": record.type.value,
                  "tritonstack.model": record.model or "", "tritonstack.attempt": job_try}
    with span(f"job {record.type.value}", attributes, parent=record.trace, kind=SpanKind.CONSUMER) as current:
        try:
            final = await _attempt(rt, record, planner, lease)
            return {"status": final}
        except LeaseLostError:
            return {"skipped": "lease lost"}
        except Exception as exc:
            failed(current, exc)
            return await _failed(rt, record, exc, job_try)
        finally:
            rt.metrics.in_progress.dec()
            await lease.stop()


async def _attempt(rt: Runtime, record: JobRecord, planner: Planner, lease: _Lease) -> str:
    timeout = rt.config.job_timeout_s
    try:
        async with asyncio.timeout(timeout) as deadline:
            raw = await rt.store.load_input(record.id)
            if raw is None:
                raise JobFailedError("the job's input is gone", "input_missing")
            work = await planner(rt, record, raw)
            cancelled = await _run_units(rt, record, work, lease)
    except TimeoutError as exc:
        if deadline.expired():
            raise JobFailedError(f"the job ran longer than job_timeout_s={timeout:g}", "job_timeout") from exc
        raise
    return await finalize(rt, record, JobStatus.CANCELLED if cancelled else JobStatus.SUCCEEDED)


async def _run_units(rt: Runtime, record: JobRecord, work: Work, lease: _Lease) -> bool:
    """Run the units not stored yet, `concurrency` at a time; True when a cancel stopped the job."""
    done = await rt.store.done_units(record.id)
    pending = iter([i for i in range(work.units) if i not in done])
    cancelled = False
    kind = record.type.value

    async def runner() -> None:
        nonlocal cancelled
        for index in pending:
            if cancelled:
                return
            if lease.lost:
                raise LeaseLostError(record.id)
            if await rt.store.status(record.id) in (JobStatus.CANCELLED, None):
                cancelled = True
                return
            started = time.perf_counter()
            with span("job.unit", {"tritonstack.job.unit": index}) as current:
                result = await work.run_unit(index)
                if current is not None:
                    current.set_attributes({"tritonstack.items": result.items, "tritonstack.failed": result.failed})
            if await rt.store.commit(record.id, index, result.data, result.items, result.failed, result.tokens):
                rt.metrics.items.labels(kind).inc(result.items)
            rt.metrics.unit_latency.labels(kind).observe(time.perf_counter() - started)

    concurrency = rt.config.chat_concurrency if kind == "chat" else rt.config.batch_concurrency
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, max(work.units - len(done), 0))):
                group.create_task(runner())
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None
    return cancelled


async def _failed(rt: Runtime, record: JobRecord, exc: Exception, job_try: int) -> dict[str, Any]:
    """Defer a retry for a transient failure while tries are left; otherwise fail the job for good."""
    code, message, transient = classify(exc)
    if transient and job_try < rt.config.max_tries:
        delay = min(rt.config.retry_backoff_s * 2 ** (job_try - 1), _MAX_BACKOFF_S)
        rt.metrics.retries.labels(record.type.value, code).inc()
        log.warning("job %s try %d: %s (%s); retrying in %.1fs", record.id, job_try, message, code, delay)
        raise Retry(defer=delay) from exc
    if code == "internal_error":
        log.exception("job %s failed", record.id, exc_info=exc)
    rt.metrics.failures.labels(record.type.value, code).inc()
    final = await finalize(rt, record, JobStatus.FAILED, job_error(message, code))
    return {"status": final, "error": code}
