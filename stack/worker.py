"""The jobs worker as `tritonstack worker` runs it: a process whose `TRITONSTACK_WORKER_*` come from a mapping of
`WorkerConfig` field names, ready once its metrics endpoint answers; `.stop()` stops it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stack.gateway import ENV_PREFIX as GATEWAY_ENV_PREFIX
from stack.process import ManagedProcess, console_script, http_ok, settings_env

ENV_PREFIX = "TRITONSTACK_WORKER_"


def worker_env(settings: Mapping[str, object], *, gateway_settings: Mapping[str, object] | None = None,
               base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A worker process's environment: `base` (default: this process's), then `gateway_settings` as
    `TRITONSTACK_GATEWAY_*` (chat jobs use the gateway's routes and key budgets) and `settings` as
    `TRITONSTACK_WORKER_*`."""
    environment = os.environ if base is None else base
    return {**environment, **settings_env(GATEWAY_ENV_PREFIX, gateway_settings or {}),
            **settings_env(ENV_PREFIX, settings)}


@dataclass
class WorkerProcess:
    """A running `tritonstack worker`."""

    process: ManagedProcess
    metrics_port: int

    @property
    def metrics_url(self) -> str:
        """Its Prometheus endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self) -> None:
        """SIGTERM to the worker, then SIGKILL to its process group."""
        self.process.stop()


def start_worker(settings: Mapping[str, object], *, metrics_port: int,
                 gateway_settings: Mapping[str, object] | None = None, base_env: Mapping[str, str] | None = None,
                 name: str = "worker", log_path: Path | None = None, timeout: float = 60.0) -> WorkerProcess:
    """`tritonstack worker` with `worker_env(settings + metrics_port, gateway_settings=…, base=base_env)`; ready
    once its metrics endpoint answers on loopback (stopped again if it does not)."""
    env = worker_env({**settings, "metrics_port": metrics_port}, gateway_settings=gateway_settings, base=base_env)
    process = ManagedProcess(name, [console_script(), "worker"], env=env, log_path=log_path)
    worker = WorkerProcess(process, metrics_port)
    process.start_ready(lambda: http_ok(worker.metrics_url), timeout=timeout)
    return worker
