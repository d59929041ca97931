"""Redis for a local stack: a throwaway `redis-server` (no persistence), or the one already answering at a URL."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

from stack.process import ManagedProcess, ProcessError, free_port, port_open

LOOPBACK = {"127.0.0.1", "localhost"}


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
        """Its redis:// URL (database 0)."""
        return f"redis://{self.host}:{self.port}/0"

    def ready(self) -> bool:
        """True once it answers PING."""
        import redis

        if not port_open(self.host, self.port):
            return False
        try:
            return bool(redis.Redis(host=self.host, port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start_and_wait(self, timeout: float = 15.0) -> RedisServer:
        """Start and wait until it answers PING (stopped again if it does not)."""
        self.start_ready(self.ready, timeout=timeout, interval=0.05)
        return self


def start_redis(port: int | None = None, *, log_path: Path | None = None, timeout: float = 15.0) -> RedisServer:
    """A fresh redis-server on loopback `port` (a free one by default), answering PING."""
    return RedisServer(free_port() if port is None else port, log_path=log_path).start_and_wait(timeout)


def redis_unless_running(url: str, *, log_path: Path | None = None) -> RedisServer | None:
    """None when a Redis already answers at `url`; otherwise a redis-server (not started) for its loopback port."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if port_open(host, port):
        return None
    if host not in LOOPBACK:
        raise ProcessError(f"no Redis reachable at {url}, and it is not local, so none can be started")
    return RedisServer(port, host="127.0.0.1", log_path=log_path)
