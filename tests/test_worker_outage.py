"""The worker's poll loop rides out Redis going away, whatever form redis-py gives the failure.

The end-to-end check is tests/test_reliability_redis.py (Redis SIGKILLed under a running job). Which Redis call
of arq's poll loop meets the outage first is timing: this pins down the case CI met once, a connection lost inside
arq's WATCH in `start_jobs`, which redis-py reports as a `WatchError`, by having arq's poll iteration fail that way.
"""

from __future__ import annotations

import asyncio

import pytest
from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import WatchError

from jobs.outage import OutageTolerantWorker


def _worker() -> OutageTolerantWorker:
    """The worker's poll-loop state only (no Redis pool: arq's own iteration is replaced below)."""
    worker = OutageTolerantWorker.__new__(OutageTolerantWorker)
    worker.tasks, worker.job_counter, worker.max_jobs = {}, 1, 2  # a slot that the failed round trip kept
    worker.sem = asyncio.BoundedSemaphore(3)
    return worker


async def _watch_lost(self: Worker) -> None:
    try:
        raise RedisConnectionError("Connection reset by peer")
    except RedisConnectionError:
        raise WatchError("A ConnectionError occurred on while watching one or more keys") from None


async def _watch_conflict(self: Worker) -> None:
    raise WatchError("Watched variable changed.")


async def test_a_connection_lost_inside_watch_is_an_outage_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Worker, "_poll_iteration", _watch_lost)
    worker = _worker()
    await worker._poll_iteration()  # survives, backs off
    assert worker._down_since is not None and worker._backoff_s > 0.1
    assert worker.job_counter == 0  # the slot kept by the failed round trip is given back


async def test_any_other_watch_error_still_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Worker, "_poll_iteration", _watch_conflict)
    with pytest.raises(WatchError):
        await _worker()._poll_iteration()
