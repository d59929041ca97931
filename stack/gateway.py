"""The gateway as `tritonstack gateway` runs it.

- `start_gateway(settings, port=…)`: a `tritonstack gateway` process whose `TRITONSTACK_GATEWAY_*` come from a
  mapping of `GatewaySettings` field names, ready once `/healthz` answers; `.stop()` stops it.
- `serve_in_thread(app, port=…)`: the same uvicorn server (options of `tritonstack gateway`) in a thread of this
  process, for tests that read the app's state; the caller builds the app (`gateway.app.create_app(settings)`).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.process import ManagedProcess, ProcessError, console_script, http_ok, settings_env

ENV_PREFIX = "TRITONSTACK_GATEWAY_"


def api_key_entry(name: str, key: str, **fields: object) -> dict[str, object]:
    """One `api_keys` setting: the key's sha256 (the gateway never sees the key) with `fields` (scopes, limits)."""
    return {"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), **fields}


def gateway_env(settings: Mapping[str, object], *, defaults: Mapping[str, object] | None = None,
                base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A gateway process's environment: `base` (default: this process's), `settings` as `TRITONSTACK_GATEWAY_*`
    over it and `defaults` under it (the environment's values win over those)."""
    environment = os.environ if base is None else base
    return {**settings_env(ENV_PREFIX, defaults or {}), **environment, **settings_env(ENV_PREFIX, settings)}


@dataclass
class GatewayProcess:
    """A running `tritonstack gateway`."""

    process: ManagedProcess
    host: str
    port: int

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL to its process group."""
        self.process.stop()


def start_gateway(settings: Mapping[str, object], *, port: int, host: str = "127.0.0.1", name: str = "gateway",
                  log_path: Path | None = None, log_level: str | None = None,
                  defaults: Mapping[str, object] | None = None, base_env: Mapping[str, str] | None = None,
                  timeout: float = 60.0) -> GatewayProcess:
    """`tritonstack gateway` on host:port with `gateway_env(settings, defaults=…, base=base_env)`; ready once
    `/healthz` answers (stopped again if it does not)."""
    argv = [console_script(), "gateway", "--host", host, "--port", str(port)]
    if log_level is not None:
        argv += ["--log-level", log_level]
    process = ManagedProcess(name, argv, env=gateway_env(settings, defaults=defaults, base=base_env),
                             log_path=log_path)
    process.start_ready(lambda: http_ok(f"http://{host}:{port}/healthz"), timeout=timeout)
    return GatewayProcess(process, host, port)


@dataclass
class ThreadedServer:
    """A uvicorn server running in a daemon thread of this process."""

    server: Any  # uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def app(self) -> Any:
        """The ASGI app it serves."""
        return self.server.config.app

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown (the app's lifespan cleanup runs)."""
        self.server.should_exit = True
        self.thread.join(timeout)


def serve_in_thread(app: Any, *, port: int, host: str = "127.0.0.1", log_level: str = "warning",
                    timeout: float = 30.0) -> ThreadedServer:
    """Serve `app` with `tritonstack gateway`'s uvicorn options in a thread; returns once uvicorn has started
    (lifespan done, socket bound)."""
    import uvicorn

    from gateway.http.server import uvicorn_options

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, **uvicorn_options()))
    thread = threading.Thread(target=server.run, name=f"gateway-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ProcessError(f"gateway on port {port} did not start")
        time.sleep(0.01)  # polling uvicorn's own readiness flag
    return ThreadedServer(server, thread, host, port)
