"""`tritonstack up`: Redis (when none is reachable) + Triton + jobs worker + gateway; Ctrl-C stops all."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from stack.process import ManagedProcess, ProcessError, port_open
from stack.redis import RedisServer
from stack.triton import TritonOptions, TritonServer

DEFAULT_ROUTES = Path(__file__).resolve().parents[1] / "deploy" / "routes.local.yaml"
ROUTES_ENV = "TRITONSTACK_GATEWAY_ROUTES_FILE"
ROLLOUTS_ENV = "TRITONSTACK_GATEWAY_ROLLOUTS_FILE"
# The development key's own limits: it is local (loopback gateway), admin, and meant for load tests and
# perf_analyzer runs, which the default 600 requests/min of other keys would refuse. Still finite, so the
# limiter stays on the request path as in production.
DEV_REQUESTS_PER_MINUTE = 1_000_000
DEV_TOKENS_PER_MINUTE = 1_000_000_000


@dataclass
class StackOptions:
    """Where each part listens; defaults are the documented ports."""

    repository: Path
    state_dir: Path
    redis_url: str = "redis://127.0.0.1:6379/0"
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    worker_metrics_port: int = 9500
    routes_file: Path = DEFAULT_ROUTES  # chat routes (model "smollm2" → local Triton); the environment's wins


def dev_api_key(state_dir: Path) -> str:
    """A development API key, created once and kept in the state directory (mode 600)."""
    path = state_dir / "dev-api-key"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(f"ts-dev-{secrets.token_urlsafe(24)}\n")
        path.chmod(0o600)
    return path.read_text().strip()


def rollouts_path(opts: StackOptions) -> Path:
    """The rollouts file of the stack's gateway (`tritonstack model …`'s default: `.tritonstack/rollouts.yaml`)."""
    return opts.state_dir / "rollouts.yaml"


def ensure_rollouts_file(opts: StackOptions) -> None:
    """Create the stack's rollouts file (no models) unless it exists or the environment names another."""
    from gateway.rollout.config import RolloutsConfig, write_rollouts

    path = rollouts_path(opts)
    if ROLLOUTS_ENV not in os.environ and not path.exists():
        write_rollouts(path, RolloutsConfig())


def redis_for(opts: StackOptions) -> RedisServer | None:
    """None when a Redis already answers at the URL; otherwise a local redis-server to start on its port."""
    url = urlparse(opts.redis_url)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if port_open(host, port):
        return None
    if host not in {"127.0.0.1", "localhost"}:
        raise ProcessError(f"no Redis reachable at {opts.redis_url}, and it is not local, so none can be started")
    return RedisServer(port, host="127.0.0.1", log_path=opts.state_dir / "redis.log")


def gateway_env(opts: StackOptions, api_key: str) -> dict[str, str]:
    """`TRITONSTACK_GATEWAY_*` of the stack (the worker reads them too: chat jobs use the same routes, budgets)."""
    keys = [{"name": "dev", "sha256": hashlib.sha256(api_key.encode()).hexdigest(), "scopes": ["admin"],
             "requests_per_minute": DEV_REQUESTS_PER_MINUTE, "tokens_per_minute": DEV_TOKENS_PER_MINUTE}]
    env = {
        "TRITONSTACK_GATEWAY_TRITON_GRPC_URL": f"127.0.0.1:{opts.triton_grpc_port}",
        "TRITONSTACK_GATEWAY_TRITON_HTTP_URL": f"127.0.0.1:{opts.triton_http_port}",
        "TRITONSTACK_GATEWAY_REDIS_URL": opts.redis_url,
        "TRITONSTACK_GATEWAY_API_KEYS": json.dumps(keys),
    }
    if ROUTES_ENV not in os.environ:
        env[ROUTES_ENV] = str(opts.routes_file)
    if ROLLOUTS_ENV not in os.environ:  # model versions: `tritonstack model promote|rollback|load` write it
        env[ROLLOUTS_ENV] = str(rollouts_path(opts).resolve())
    return env


def gateway_process(opts: StackOptions, api_key: str) -> ManagedProcess:
    cli = Path(sys.executable).parent / "tritonstack"
    argv = [str(cli), "gateway", "--host", opts.gateway_host, "--port", str(opts.gateway_port)]
    return ManagedProcess("gateway", argv, env={**os.environ, **gateway_env(opts, api_key)},
                          log_path=opts.state_dir / "gateway.log")


def worker_process(opts: StackOptions, api_key: str) -> ManagedProcess:
    """`tritonstack worker` on the stack's Redis and Triton (tokenizers from the repository)."""
    env = {
        "TRITONSTACK_WORKER_REDIS_URL": opts.redis_url,
        "TRITONSTACK_WORKER_TRITON_GRPC_URL": f"127.0.0.1:{opts.triton_grpc_port}",
        "TRITONSTACK_WORKER_MODEL_REPOSITORY": str(opts.repository.resolve()),
        "TRITONSTACK_WORKER_METRICS_PORT": str(opts.worker_metrics_port),
    }
    cli = Path(sys.executable).parent / "tritonstack"
    return ManagedProcess("worker", [str(cli), "worker"], env={**os.environ, **gateway_env(opts, api_key), **env},
                          log_path=opts.state_dir / "worker.log")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_stack(opts: StackOptions) -> list[ManagedProcess]:
    """Start every part in dependency order and wait for each to be ready; stop what started on failure."""
    started: list[ManagedProcess] = []
    try:
        redis = redis_for(opts)
        if redis is not None:
            started.append(redis.start_and_wait())
        triton = TritonServer(
            TritonOptions(
                opts.repository,
                http_port=opts.triton_http_port,
                grpc_port=opts.triton_grpc_port,
                metrics_port=opts.triton_metrics_port,
            ),
            state_dir=opts.state_dir,
            log_path=opts.state_dir / "triton.log",
        )
        started.append(triton.start_and_wait())
        worker = worker_process(opts, dev_api_key(opts.state_dir)).start()
        started.append(worker)
        worker.wait_ready(lambda: http_ok(f"http://127.0.0.1:{opts.worker_metrics_port}/metrics"), timeout=60)
        ensure_rollouts_file(opts)
        gateway = gateway_process(opts, dev_api_key(opts.state_dir)).start()
        started.append(gateway)
        health = f"http://{opts.gateway_host}:{opts.gateway_port}/healthz"
        gateway.wait_ready(lambda: http_ok(health), timeout=60)
    except BaseException:
        for process in reversed(started):
            process.stop()
        raise
    return started
