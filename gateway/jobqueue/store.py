"""`JobStore`: the jobs' Redis state, shared by the gateway (submit, read, cancel) and the worker (run).

Submitting writes the record, the input and arq's own job entry (`arq:job:<id>` + the queue zset, in arq's
format) in one script: a job is either fully queued or not at all. Results are stored per unit of work
(a batch of chunks, or one chat request) with HSETNX, and progress is counted only when a unit is new, so a
retried unit never duplicates lines nor progress. The Redis client must return bytes.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from arq.constants import expires_extra_ms, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import serialize_job

from gateway.jobqueue import scripts
from gateway.jobqueue.records import JobRecord, JobStatus, JobType

RECORD_PREFIX = "tritonstack:job:"
OWNER_PREFIX = "tritonstack:jobs:owner:"
IDEMPOTENCY_PREFIX = "tritonstack:jobs:idem:"
_RESULT_PAGE = 16


def arq_dumps(value: Any) -> bytes:
    """arq's job serializer on both sides (JSON, not pickle: Redis content never becomes code)."""
    return orjson.dumps(value, default=str)


def arq_loads(raw: bytes) -> Any:
    """arq's job deserializer."""
    return orjson.loads(raw)


def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return int(time.time() * 1000)


def new_job_id() -> str:
    """A fresh job id."""
    return f"job_{uuid.uuid4().hex}"


def record_key(job_id: str) -> str:
    """The record hash of a job."""
    return f"{RECORD_PREFIX}{{{job_id}}}"


@dataclass(frozen=True, slots=True)
class NewJob:
    """What the gateway submits: validated input (JSON bytes) and the record's initial fields."""

    id: str
    type: JobType
    owner: str
    owner_name: str
    items: int
    input: bytes
    fields: Mapping[str, str]
    idempotency_key: str | None = None
    digest: str = ""


@dataclass(frozen=True, slots=True)
class SubmitLimits:
    """Per-key limits checked atomically at submit."""

    max_active_jobs: int
    max_pending_items: int
    idempotency_ttl_s: int


@dataclass(frozen=True, slots=True)
class Submitted:
    """The outcome of a submit: 'created', 'replay', 'conflict', 'too_many_jobs' or 'too_many_items'."""

    outcome: str
    job_id: str | None
    detail: str = ""


class JobStore:
    """Job records, inputs, results, leases and the arq queue entries, on one Redis."""

    def __init__(self, redis: aioredis.Redis, *, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.queued_key = f"{queue_name}:queued"  # active jobs per queue: a worker reaps only its own queue's
        self.running_key = f"{queue_name}:running"
        self._submit = redis.register_script(scripts.SUBMIT)
        self._start = redis.register_script(scripts.START)
        self._commit = redis.register_script(scripts.COMMIT)
        self._finish = redis.register_script(scripts.FINISH)
        self._cancel = redis.register_script(scripts.CANCEL)
        self._renew = redis.register_script(scripts.RENEW)
        self._release = redis.register_script(scripts.RELEASE)
        self._set_plan = redis.register_script(scripts.SET_PLAN)
        self._update = redis.register_script(scripts.UPDATE)

    @staticmethod
    def keys(job_id: str) -> dict[str, str]:
        """Every per-job key."""
        base = record_key(job_id)
        return {"record": base, "input": f"{base}:input", "results": f"{base}:results", "lease": f"{base}:lease"}

    @staticmethod
    def owner_key(owner: str) -> str:
        """The zset of an identity's active jobs."""
        return OWNER_PREFIX + owner

    @staticmethod
    def idempotency_key(owner: str, key: str) -> str:
        """Where an (identity, Idempotency-Key) pair is remembered."""
        digest = hashlib.sha256(f"{owner}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()
        return IDEMPOTENCY_PREFIX + digest

    # --- gateway side ----------------------------------------------------------------------------------------

    async def submit(self, job: NewJob, limits: SubmitLimits) -> Submitted:
        """Create and enqueue `job` atomically, unless a limit or the idempotency key says otherwise."""
        keys = self.keys(job.id)
        created = now_ms()
        arq_job = serialize_job(job.type.value, (job.id,), {}, None, created, serializer=arq_dumps)
        idem = self.idempotency_key(job.owner, job.idempotency_key) if job.idempotency_key else keys["record"]
        fields = {"id": job.id, "type": job.type.value, "owner": job.owner, "owner_name": job.owner_name,
                  "status": JobStatus.QUEUED.value, "created_ms": str(created), "items": str(job.items), **job.fields}
        args: list[Any] = [job.id, job.items, limits.max_active_jobs, limits.max_pending_items, created, arq_job,
                           expires_extra_ms, job.input, job.digest if job.idempotency_key else "",
                           limits.idempotency_ttl_s, RECORD_PREFIX]
        for name, value in fields.items():
            args += [name, value]
        outcome, detail = await self._submit(
            keys=[keys["record"], keys["input"], self.owner_key(job.owner), self.queued_key, job_key_prefix + job.id,
                  self.queue_name, idem], args=args)
        outcome = outcome.decode()
        if outcome in ("created", "replay", "conflict"):
            return Submitted(outcome, detail.decode())
        return Submitted(outcome, None, detail.decode())

    async def get(self, job_id: str) -> JobRecord | None:
        """The record, or None when unknown or expired."""
        raw = await self.redis.hgetall(record_key(job_id))
        return JobRecord.from_hash(raw) if raw else None

    async def cancel(self, job_id: str) -> str:
        """Cancel: 'cancelled' (was queued), 'cancelling' (running), the terminal status, or 'missing'."""
        keys = self.keys(job_id)
        result = await self._cancel(
            keys=[keys["record"], keys["input"], keys["results"], self.queued_key, await self._owner_of(job_id),
                  job_key_prefix + job_id, self.queue_name], args=[job_id, now_ms()])
        return result.decode()

    async def _owner_of(self, job_id: str) -> str:
        owner = await self.redis.hget(record_key(job_id), "owner")
        return self.owner_key(owner.decode() if owner else "")

    async def results(self, job_id: str, units: int) -> AsyncIterator[bytes]:
        """The stored JSONL of units 0..units-1 in order (missing units, still running, are skipped)."""
        key = self.keys(job_id)["results"]
        for first in range(0, units, _RESULT_PAGE):
            page = await self.redis.hmget(key, [str(i) for i in range(first, min(first + _RESULT_PAGE, units))])
            for data in page:
                if data:
                    yield data

    async def counts(self) -> tuple[int, int]:
        """(queued jobs, running jobs) across all workers."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.queued_key)
            pipe.zcard(self.running_key)
            queued, running = await pipe.execute()
        return int(queued), int(running)

    # --- worker side -----------------------------------------------------------------------------------------

    async def load_input(self, job_id: str) -> bytes | None:
        """The job's input (JSON), deleted once the job is terminal."""
        return await self.redis.get(self.keys(job_id)["input"])

    async def start(self, job_id: str, token: str, lease_ms: int) -> tuple[str, bool]:
        """Take the lease and mark the job running: ('running', first start?) or why not."""
        keys = self.keys(job_id)
        status, first = await self._start(keys=[keys["record"], self.queued_key, self.running_key, keys["lease"]],
                                          args=[job_id, now_ms(), token, lease_ms])
        return status.decode(), bool(first)

    async def renew(self, job_id: str, token: str, lease_ms: int) -> bool:
        """Extend the lease; False when it is no longer ours."""
        return bool(await self._renew(keys=[self.keys(job_id)["lease"]], args=[token, lease_ms]))

    async def release(self, job_id: str, token: str) -> None:
        """Give the lease back (only if still ours)."""
        await self._release(keys=[self.keys(job_id)["lease"]], args=[token])

    async def leases(self, job_ids: Sequence[str]) -> list[bool]:
        """For each id: True while some worker holds the job's lease."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(self.keys(job_id)["lease"])
            return [bool(n) for n in await pipe.execute()]

    async def status(self, job_id: str) -> JobStatus | None:
        """The current status (one HGET: checked between units to notice a cancel)."""
        raw = await self.redis.hget(record_key(job_id), "status")
        return JobStatus(raw.decode()) if raw else None

    async def set_plan(self, job_id: str, plan: dict[str, Any]) -> dict[str, Any] | None:
        """Store the plan unless one exists; the plan in force (None when the record is gone)."""
        raw = await self._set_plan(keys=[record_key(job_id)], args=[orjson.dumps(plan)])
        return orjson.loads(raw) if raw else None

    async def done_units(self, job_id: str) -> set[int]:
        """Indices of the units already stored (skipped when a retried job resumes)."""
        return {int(k) for k in await self.redis.hkeys(self.keys(job_id)["results"])}

    async def commit(self, job_id: str, unit: int, data: bytes, items: int, failed: int = 0, tokens: int = 0) -> bool:
        """Store one unit's JSONL and count its progress, once; False when it was already stored."""
        keys = self.keys(job_id)
        return bool(await self._commit(keys=[keys["results"], keys["record"]],
                                       args=[unit, data, items, failed, tokens]))

    async def finish(self, job_id: str, owner: str, status: JobStatus, error: dict[str, Any] | None = None
                     ) -> tuple[str, bool]:
        """Make the job terminal (a requested cancel wins); (final status, webhook due?)."""
        keys = self.keys(job_id)
        final, hook = await self._finish(
            keys=[keys["record"], keys["input"], keys["results"], keys["lease"], self.queued_key, self.running_key,
                  self.owner_key(owner)],
            args=[job_id, status.value, now_ms(), orjson.dumps(error) if error else ""])
        return final.decode(), bool(hook)

    async def update(self, job_id: str, fields: Mapping[str, str | int]) -> bool:
        """Set fields of an existing record (webhook delivery state)."""
        args: list[str | int] = []
        for name, value in fields.items():
            args += [name, value]
        return bool(await self._update(keys=[record_key(job_id)], args=args))

    async def active(self) -> tuple[list[str], list[str]]:
        """(queued ids, running ids)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.queued_key, 0, -1)
            pipe.zrange(self.running_key, 0, -1)
            queued, running = await pipe.execute()
        return [i.decode() for i in queued], [i.decode() for i in running]

    async def arq_state(self, job_ids: Sequence[str]) -> list[tuple[bool, bool, int]]:
        """For each id: (in arq's queue?, marked in progress by arq?, arq's try count)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.zscore(self.queue_name, job_id)
                pipe.exists(in_progress_key_prefix + job_id)
                pipe.get(retry_key_prefix + job_id)
            raw = await pipe.execute()
        return [(raw[i] is not None, bool(raw[i + 1]), int(raw[i + 2] or 0)) for i in range(0, len(raw), 3)]

    async def free_in_progress(self, job_id: str) -> None:
        """Drop arq's in-progress marker of a job whose worker died, so another worker picks it up now."""
        await self.redis.delete(in_progress_key_prefix + job_id)

    async def drop_from_queue(self, job_id: str) -> None:
        """Remove a job from arq's queue (it was finalised outside arq)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.queue_name, job_id)
            pipe.delete(job_key_prefix + job_id, in_progress_key_prefix + job_id, retry_key_prefix + job_id)
            await pipe.execute()
