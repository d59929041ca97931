"""The arq worker: `worker_settings(config)` is arq's WorkerSettings; `run(config)` runs it until SIGTERM.

Functions: `embeddings`, `chat`, `rerank` and `classify` (one per job type, named like the type; the argument is
the job id, the input is in Redis) and `deliver_webhook` (one attempt per try). `on_startup` creates the Triton and
Redis clients in `ctx` (see `jobs.runtime`) and starts the reaper; `on_shutdown` closes them. arq's own retry
machinery runs a job again after a worker shutdown (SIGTERM cancels, the job is re-queued) and after a
deferred `Retry`; the reaper covers SIGKILL. arq's job timeout is `job_timeout_s` plus a minute: the job
enforces `job_timeout_s` itself so that it can record why it failed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.connections import RedisSettings
from arq.worker import func

from gateway.jobqueue.store import arq_dumps, arq_loads
from gateway.tracing import flush, start_tracing
from jobs.chat import chat
from jobs.classify import classify
from jobs.config import WorkerConfig
from jobs.embeddings import embeddings
from jobs.outage import OutageTolerantWorker
from jobs.reaper import Reaper
from jobs.rerank import rerank
from jobs.runtime import build_runtime, close_runtime
from jobs.webhook import deliver_webhook

log = logging.getLogger("jobs.worker")

_ARQ_TIMEOUT_MARGIN_S = 60.0
SERVICE_NAME = "tritonstack-worker"  # OTEL_SERVICE_NAME overrides it


async def on_startup(ctx: dict[str, Any]) -> None:
    """Create the clients (Triton gRPC, Redis, HTTP for webhooks), the metrics endpoint, the reaper."""
    config: WorkerConfig = ctx["config"]
    start_tracing(config, SERVICE_NAME)  # off (nothing installed) unless an OTLP endpoint is configured
    rt = build_runtime(config, ctx["redis"])
    ctx["runtime"] = rt
    ctx["triton"] = rt.backend
    ctx["store"] = rt.store
    rt.tasks.append(asyncio.create_task(Reaper(rt).run_forever(), name="jobs-reaper"))
    log.info("worker %s on queue %s (Triton %s, chat %s)", rt.worker_id, config.queue_name, config.grpc_urls,
             "on" if rt.chat is not None else "off")


async def on_shutdown(ctx: dict[str, Any]) -> None:
    """Close every client created by `on_startup`."""
    rt = ctx.get("runtime")
    if rt is not None:
        await close_runtime(rt)
    flush()


def worker_settings(config: WorkerConfig) -> dict[str, Any]:
    """arq's WorkerSettings (as keyword arguments of `arq.worker.Worker`) for `config`."""
    return {
        "functions": [
            func(embeddings, name="embeddings"),
            func(chat, name="chat"),
            func(rerank, name="rerank"),
            func(classify, name="classify"),
            func(deliver_webhook, name="deliver_webhook", max_tries=config.webhook_max_attempts,
                 timeout=config.webhook_timeout_s * 2),
        ],
        "queue_name": config.queue_name,
        "redis_settings": RedisSettings.from_dsn(config.redis_url),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "ctx": {"config": config},
        "max_jobs": config.max_jobs,
        "job_timeout": config.job_timeout_s + _ARQ_TIMEOUT_MARGIN_S,
        "max_tries": config.max_tries,
        "keep_result": config.keep_result_s,
        "poll_delay": config.poll_delay_s,
        "job_serializer": arq_dumps,
        "job_deserializer": arq_loads,
        "health_check_interval": 30,
    }


def run(config: WorkerConfig) -> None:
    """Run the worker in this process until SIGINT/SIGTERM (running jobs are re-queued, not lost); a Redis
    outage pauses it (`jobs.outage`)."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    OutageTolerantWorker(**worker_settings(config)).run()
