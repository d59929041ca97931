"""A local stack, or any subset of it: Redis (unless one answers), Triton, the jobs worker and the gateway, each
started on its port and ready before the next; `Stack.stop()` stops them in reverse.

`tritonstack up` runs every part on the documented ports; the soak, the benchmarks and the tests choose parts and
free ports (`StackOptions.on_free_ports`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stack.gateway import GatewayProcess, api_key_entry, start_gateway
from stack.process import ManagedProcess, free_port, stop_all
from stack.redis import RedisServer, redis_unless_running
from stack.triton import TritonOptions, TritonServer, TritonTracing, start_triton
from stack.worker import WorkerProcess, start_worker

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
    """Which parts to start and where each listens; defaults are every part on the documented ports."""

    repository: Path
    state_dir: Path  # logs, Triton's backend directory, the development key, the rollouts file
    redis_url: str = "redis://127.0.0.1:6379/0"
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    worker_metrics_port: int = 9500
    routes_file: Path = DEFAULT_ROUTES  # chat routes (model "smollm2" → local Triton); the environment's wins
    models: list[str] = field(default_factory=lambda: ["*"])  # what Triton loads
    # more gateway settings (`GatewaySettings` field names) over the environment's; the worker gets them too
    gateway_settings: dict[str, object] = field(default_factory=dict)
    redis: bool = True  # start a redis-server when none answers at `redis_url` (False: use the URL as it is)
    triton: bool = True
    worker: bool = True
    gateway: bool = True
    # runs once Triton is ready, before the worker and the gateway start (`tritonstack up`: restore the versions
    # the rollouts file names, so a restart never moves traffic)
    after_triton: Callable[[Stack], None] | None = None

    @classmethod
    def on_free_ports(cls, repository: Path, state_dir: Path, **options: object) -> StackOptions:
        """Every port a free loopback one (so a fresh Redis starts), unless `options` name it."""
        ports: dict[str, object] = {
            "redis_url": f"redis://127.0.0.1:{free_port()}/0", "triton_http_port": free_port(),
            "triton_grpc_port": free_port(), "triton_metrics_port": free_port(), "gateway_port": free_port(),
            "worker_metrics_port": free_port(),
        }
        return cls(repository, state_dir, **{**ports, **options})  # type: ignore[arg-type]

    @property
    def gateway_url(self) -> str:
        """The gateway's base URL."""
        return f"http://{self.gateway_host}:{self.gateway_port}"


@dataclass
class Stack:
    """The started parts (None: not started) and the development API key (None without a gateway or worker)."""

    options: StackOptions
    api_key: str | None = None
    redis: RedisServer | None = None  # None also when an existing Redis answered
    triton: TritonServer | None = None
    worker: WorkerProcess | None = None
    gateway: GatewayProcess | None = None

    @property
    def processes(self) -> list[ManagedProcess]:
        """The started processes, in start order."""
        parts = (self.redis, self.triton, self.worker and self.worker.process, self.gateway and self.gateway.process)
        return [p for p in parts if p is not None]

    def stop(self) -> None:
        """Stop every part, the last started first."""
        stop_all(self.processes)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dev_api_key(state_dir: Path) -> str:
    """A development API key, created once and kept in the state directory (mode 600)."""
    path = state_dir / "dev-api-key"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(f"ts-dev-{secrets.token_urlsafe(24)}\n")
        path.chmod(0o600)
    return path.read_text().strip()


def rollouts_path(opts: StackOptions) -> Path:
    """The rollouts file of the stack's gateway (`tritonstack model …`'s default: `.tritonstack/rollouts.yaml`), or
    the one the environment names."""
    named = os.environ.get(ROLLOUTS_ENV)
    return Path(named) if named else opts.state_dir / "rollouts.yaml"


def ensure_rollouts_file(opts: StackOptions) -> None:
    """Create the stack's rollouts file (no models) unless it exists or the environment names another."""
    from gateway.rollout.config import RolloutsConfig, write_rollouts

    path = rollouts_path(opts)
    if ROLLOUTS_ENV not in os.environ and not path.exists():
        write_rollouts(path, RolloutsConfig())


def gateway_settings(opts: StackOptions, api_key: str) -> dict[str, object]:
    """The stack's gateway settings (the worker reads them too: chat jobs use the same routes and budgets): its
    Triton and Redis, the development key, the routes and rollouts files unless the environment names them, then
    `opts.gateway_settings`."""
    key = api_key_entry("dev", api_key, scopes=["admin"], requests_per_minute=DEV_REQUESTS_PER_MINUTE,
                        tokens_per_minute=DEV_TOKENS_PER_MINUTE)
    settings: dict[str, object] = {
        "triton_grpc_url": f"127.0.0.1:{opts.triton_grpc_port}",
        "triton_http_url": f"127.0.0.1:{opts.triton_http_port}",
        "redis_url": opts.redis_url,
        "api_keys": [key],
    }
    if ROUTES_ENV not in os.environ:
        settings["routes_file"] = str(opts.routes_file)
    if ROLLOUTS_ENV not in os.environ:  # model versions: `tritonstack model promote|rollback|load` write it
        settings["rollouts_file"] = str(rollouts_path(opts).resolve())
    return {**settings, **opts.gateway_settings}


def worker_settings(opts: StackOptions) -> dict[str, object]:
    """The stack's worker settings: its Redis and Triton, tokenizers from the repository."""
    return {"redis_url": opts.redis_url, "triton_grpc_url": f"127.0.0.1:{opts.triton_grpc_port}",
            "model_repository": str(opts.repository.resolve())}


def start_stack(opts: StackOptions) -> Stack:
    """Start the chosen parts in dependency order, each ready before the next; on failure stop what started."""
    stack = Stack(opts)
    try:
        _start_parts(stack)
    except BaseException:
        stack.stop()
        raise
    return stack


def _start_parts(stack: Stack) -> None:
    opts, logs = stack.options, stack.options.state_dir
    if opts.redis and (redis := redis_unless_running(opts.redis_url, log_path=logs / "redis.log")) is not None:
        stack.redis = redis.start_and_wait()
    if opts.triton:
        triton = TritonOptions(opts.repository, http_port=opts.triton_http_port, grpc_port=opts.triton_grpc_port,
                               metrics_port=opts.triton_metrics_port, models=list(opts.models),
                               tracing=TritonTracing.from_env())
        stack.triton = start_triton(triton, opts.state_dir, log_path=logs / "triton.log")
        if opts.gateway:
            ensure_rollouts_file(opts)
        if opts.after_triton is not None:
            opts.after_triton(stack)
    if not (opts.worker or opts.gateway):
        return
    stack.api_key = dev_api_key(opts.state_dir)
    if opts.worker:
        stack.worker = start_worker(worker_settings(opts), metrics_port=opts.worker_metrics_port,
                                    gateway_settings=gateway_settings(opts, stack.api_key),
                                    log_path=logs / "worker.log")
    if opts.gateway:
        ensure_rollouts_file(opts)
        stack.gateway = start_gateway(gateway_settings(opts, stack.api_key), port=opts.gateway_port,
                                      host=opts.gateway_host, log_path=logs / "gateway.log")
