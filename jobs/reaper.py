"""The reaper: notices jobs whose worker died and frees them for another worker, within ~`lease_s`.

arq marks a started job "in progress" for its whole timeout, so a job whose worker was SIGKILLed would wait
that long before anyone ran it again. Every running job holds a lease its worker renews; each worker's
reaper looks at active jobs without a lease, and once one has looked the same for `lease_s` (a worker that
just picked a job up takes the lease within milliseconds):
- arq still marks it in progress → its worker is gone: drop the marker, arq hands the job to the next free
  worker, which resumes from the stored units (or fail it when its tries are used up);
- it was cancelled meanwhile → finish it as cancelled;
- arq no longer has it at all (it gave up on it) → fail it, with the reason.
Every pass also refreshes the queue-depth and running gauges.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.jobqueue.records import JobStatus, job_error
from jobs.runner import finalize
from jobs.runtime import Runtime

log = logging.getLogger("jobs.reaper")


class Reaper:
    """Periodic orphan detection (every worker runs one; every action is idempotent)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._suspects: dict[tuple[str, str], float] = {}

    async def run_forever(self) -> None:
        """Pass every `reaper_interval_s` until cancelled."""
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # Redis away: try again next time
                log.warning("reaper pass failed: %s", exc)
            await asyncio.sleep(self.rt.config.reaper_interval_s)

    async def run_once(self) -> None:
        """One pass over the active jobs."""
        queued, running = await self.rt.store.active()
        self.rt.metrics.queue_depth.set(len(queued))
        self.rt.metrics.running.set(len(running))
        ids = [*queued, *running]
        leased = await self.rt.store.leases(ids) if ids else []
        candidates = [job_id for job_id, alive in zip(ids, leased, strict=True) if not alive]
        states = await self.rt.store.arq_state(candidates) if candidates else []
        seen: dict[tuple[str, str], float] = {}
        now = time.monotonic()
        for job_id, (in_queue, in_progress, tries) in zip(candidates, states, strict=True):
            condition = "orphan" if in_progress else ("waiting" if in_queue else "lost")
            if condition == "waiting":
                continue
            key = (job_id, condition)
            seen[key] = self._suspects.get(key, now)
            if now - seen[key] >= self.rt.config.lease_s:
                await self._act(job_id, condition, tries)
                seen.pop(key)
        self._suspects = seen

    async def _act(self, job_id: str, condition: str, tries: int) -> None:
        record = await self.rt.store.get(job_id)
        if record is None or (record.status.terminal and record.finished_ms is not None):
            return
        if record.status is JobStatus.CANCELLED:
            await self.rt.store.drop_from_queue(job_id)
            await finalize(self.rt, record, JobStatus.CANCELLED)
            self.rt.metrics.reaped.labels("cancelled").inc()
        elif condition == "orphan" and tries < self.rt.config.max_tries:
            log.warning("job %s: its worker is gone (no lease); handing it to another worker", job_id)
            await self.rt.store.free_in_progress(job_id)
            self.rt.metrics.reaped.labels("requeued").inc()
        else:
            message = (f"the worker running this job was lost on each of its {tries} tries" if condition == "orphan"
                       else f"the queue dropped this job after {tries} tries")
            await self.rt.store.drop_from_queue(job_id)
            self.rt.metrics.failures.labels(record.type.value, "worker_lost").inc()
            await finalize(self.rt, record, JobStatus.FAILED, job_error(message, "worker_lost"))
            self.rt.metrics.reaped.labels("failed").inc()
