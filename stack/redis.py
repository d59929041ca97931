"""Run a throwaway `redis-server` (no persistence) when none is reachable at the configured URL."""

from __future__ import annotations

import shutil
from pathlib import Path

from stack.process import ManagedProcess, ProcessError, port_open


class RedisServer(ManagedProcess):
    """`redis-server` on loopback, no RDB/AOF: a cache and queue for local use and tests."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ProcessError(
                "redis-server is not installed: `sudo apt-get install redis-server` (make install does this)"
            )
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]
        super().__init__("redis-server", argv, log_path=log_path)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def ready(self) -> bool:
        import redis

        if not port_open(self.host, self.port):
            return False
        try:
            return bool(redis.Redis(host=self.host, port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start_and_wait(self, timeout: float = 15.0) -> RedisServer:
        self.start()
        self.wait_ready(self.ready, timeout=timeout, interval=0.05)
        return self
