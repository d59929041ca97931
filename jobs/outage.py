"""An arq worker that rides out a Redis outage instead of exiting.

arq lets any Redis error of its poll loop (`zrangebyscore`, the abort check, the heartbeat, or a job whose
end could not be recorded) escape `Worker.main`, which ends `Worker.run`: a Redis restart took every worker down
with it, and the jobs in flight stayed "running" until someone restarted a worker (found by
tests/test_reliability_redis.py). Here a poll iteration that fails because Redis is unreachable is logged once
per outage and retried with a capped exponential backoff; that includes the `WatchError` redis-py raises when the
connection drops inside a WATCH (arq's `start_jobs`), which once ended a worker in CI. A job whose end could not
be written keeps arq's in-progress marker and loses its lease; once Redis is back the reaper (`jobs.reaper`) hands
it out again and the job resumes from its stored units, so no item is lost or stored twice.
"""

from __future__ import annotations

import asyncio
import logging
import time

from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

log = logging.getLogger("jobs.worker")

REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 2.0


class OutageTolerantWorker(Worker):
    """`arq.worker.Worker` whose poll loop survives Redis being unreachable (see the module docstring)."""

    _down_since: float | None = None
    _backoff_s: float = BACKOFF_START_S

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except WatchError as exc:  # redis-py's form of a connection lost inside WATCH (arq's `start_jobs`)
            if not isinstance(exc.__context__, REDIS_DOWN):
                raise
            await self._redis_down(exc)
            return
        except REDIS_DOWN as exc:
            await self._redis_down(exc)
            return
        if self._down_since is not None:
            log.warning("redis reachable again after %.1fs", time.monotonic() - self._down_since)
            self._down_since = None
            self._backoff_s = BACKOFF_START_S

    async def _redis_down(self, exc: BaseException) -> None:
        """Log the outage once, wait with backoff, and give back the job slots a failed round trip kept."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("redis unreachable (%s: %s); polling again with backoff up to %.1fs",
                        type(exc).__name__, exc, BACKOFF_MAX_S)
        await asyncio.sleep(self._backoff_s)
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
        await self._reconcile_slots()

    async def _reconcile_slots(self) -> None:
        """Recount the job slots from the running tasks.

        `start_jobs` takes a slot (counter and semaphore) before its Redis round trip and does not give it back
        when that round trip raises; without this, each such failure would shrink the worker's capacity."""
        running = sum(1 for t in self.tasks.values() if not t.done())
        if running == self.job_counter:
            return
        self.job_counter = running
        self.sem = asyncio.BoundedSemaphore(self.max_jobs + 1)
        for _ in range(running):  # never waits (running ≤ max_jobs); each running task releases its slot at its end
            await self.sem.acquire()
