"""What the `rerank` and `classify` jobs share: the plan (model version, batch size, units) and cached scoring.

A job's items (pairs or texts) are grouped into units of `batch_size` (the model's `max_batch_size` unless the
worker overrides it), `batch_concurrency` units in flight, as for embeddings. The plan is stored with the job on
its first run and reused by every later run (arq may run a job twice; a crashed job resumes), so the units and
the model version never change under stored results. Each item is looked up in the gateway's per-item cache
first, with the keys `/v1/rerank` and `/v1/classify` use, and fresh results are stored there.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.backends.base import ModelInfo
from gateway.cache import CachedItem
from gateway.errors import InvalidRequestError
from gateway.jobqueue.records import JobRecord
from gateway.models.tasks import require_task
from jobs.runner import JobFailedError
from jobs.runtime import Runtime

_DEFAULT_BATCH = 64


@dataclass(frozen=True, slots=True)
class Plan:
    """The stored plan of a scoring job."""

    model_version: str
    batch_size: int
    total: int

    @property
    def units(self) -> int:
        """Number of batches."""
        return math.ceil(self.total / self.batch_size)


async def plan_scoring(rt: Runtime, record: JobRecord, model: str, task: str, chosen: str | None, total: int
                       ) -> Plan:
    """The job's plan: the stored one, else the version the gateway chose (while Triton still serves it; else the
    newest) and the batch size, stored now. A model that no longer serves `task` fails the job."""
    info = await rt.backend.model_info(model)
    try:
        require_task(info, task, f"a {task} job")
    except InvalidRequestError as exc:
        raise JobFailedError(exc.message, "model_task_mismatch") from None
    plan = record.plan or {"batch_size": rt.config.batch_size or info.max_batch_size or _DEFAULT_BATCH,
                           "model_version": _first_version(chosen, info)}
    candidate = {"batch_size": plan["batch_size"], "model_version": plan["model_version"], "total": total,
                 "units": math.ceil(total / plan["batch_size"])}
    stored = await rt.store.set_plan(record.id, candidate)
    if stored is None:
        raise JobFailedError("the job's record is gone", "job_missing")
    return Plan(str(stored["model_version"]), int(stored["batch_size"]), int(stored["total"]))


def _first_version(chosen: str | None, info: ModelInfo) -> str:
    return chosen if chosen and chosen in info.versions else info.version


Compute = Callable[[list[int]], Awaitable[list[CachedItem]]]


async def cached_items(rt: Runtime, keys: Sequence[str], compute: Compute) -> list[CachedItem]:
    """One item per key: the cache first (L1, then one MGET), `compute(indices)` for the misses, stored after."""
    found: list[CachedItem | None] = await rt.cache.get_keys(keys) if rt.cache else [None] * len(keys)
    missing = [i for i, item in enumerate(found) if item is None]
    if missing:
        fresh = await compute(missing)
        for i, item in zip(missing, fresh, strict=True):
            found[i] = item
        if rt.cache is not None:
            await rt.cache.set_keys([keys[i] for i in missing], fresh)
    return found  # type: ignore[return-value]
