"""Worker metrics (its own registry), served on `metrics_host:metrics_port` by `serve_metrics`."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("jobs.metrics")

_DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
_PICKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)
_UNIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    """Queue depth, running jobs, durations, failures, retries, items, webhook deliveries."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry(auto_describe=True)
        self.queue_depth = Gauge("tritonstack_jobs_queue_depth", "Jobs waiting to run (all workers).", registry=r)
        self.running = Gauge("tritonstack_jobs_running", "Jobs running now (all workers).", registry=r)
        self.in_progress = Gauge("tritonstack_worker_jobs_in_progress", "Jobs this worker runs now.", registry=r)
        self.finished = Counter("tritonstack_jobs_finished", "Jobs this worker finished, by type and final status.",
                                ["type", "status"], registry=r)
        self.duration = Histogram("tritonstack_job_duration_seconds", "From first start to the end of a job.",
                                  ["type"], buckets=_DURATION_BUCKETS, registry=r)
        self.pickup = Histogram("tritonstack_job_pickup_seconds", "From submit to the first start of a job.",
                                ["type"], buckets=_PICKUP_BUCKETS, registry=r)
        self.failures = Counter("tritonstack_jobs_failures", "Jobs that failed for good, by type and error code.",
                                ["type", "code"], registry=r)
        self.retries = Counter("tritonstack_jobs_retries", "Job runs deferred for a retry after a transient error.",
                               ["type", "code"], registry=r)
        self.reaped = Counter("tritonstack_jobs_orphans_reaped",
                              "Jobs whose worker died, freed for another worker (or failed when out of tries).",
                              ["action"], registry=r)
        self.items = Counter("tritonstack_job_items", "Work items completed (chunks, chat requests).", ["type"],
                             registry=r)
        self.unit_latency = Histogram("tritonstack_job_unit_seconds", "Time to compute and store one unit.",
                                      ["type"], buckets=_UNIT_BUCKETS, registry=r)
        self.webhooks = Counter("tritonstack_webhook_deliveries", "Webhook delivery attempts by result.", ["result"],
                                registry=r)


def serve_metrics(metrics: WorkerMetrics, host: str, port: int) -> Any | None:
    """Start the Prometheus HTTP endpoint in a thread (port 0: none); returns the server to shut down."""
    if port == 0:
        return None
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    return server
