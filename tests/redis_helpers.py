"""Helpers for the cache / single-flight / rate-limit tests: a killable redis-server and polling."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from stack.process import free_port
from stack.redis import RedisServer


@contextmanager
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for one test (it may stop or freeze it); always stopped afterwards."""
    server = RedisServer(free_port(), log_path=tmp_path / "redis.log").start_and_wait()
    try:
        yield server
    finally:
        server.stop()


async def wait_until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll `condition` on the event loop until it holds; fail after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


def unique(prefix: str) -> str:
    """A name no other test uses (tests share one redis-server)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Counter:
    """A metric hook that records its calls."""

    def __init__(self) -> None:
        self.calls: list[object] = []

    def __call__(self, value: object) -> None:
        self.calls.append(value)

    def __len__(self) -> int:
        return len(self.calls)
