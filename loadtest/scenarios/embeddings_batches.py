"""Embeddings with mixed batch sizes (1 to 256 unique inputs per request), as bulk clients send them."""

from __future__ import annotations

from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest import tasks
from loadtest.common import unique_sentence


def _batch(user: FastHttpUser, size: int) -> None:
    tasks.embeddings(user, [unique_sentence() for _ in range(size)], name=f"embeddings batch {size}")


class EmbeddingsBatchUser(FastHttpUser):
    """Small batches are frequent, large ones rare; each size is its own stats row."""

    wait_time = constant(0)

    @task(10)
    def batch_1(self) -> None:
        _batch(self, 1)

    @task(5)
    def batch_8(self) -> None:
        _batch(self, 8)

    @task(2)
    def batch_32(self) -> None:
        _batch(self, 32)

    @task(1)
    def batch_256(self) -> None:
        _batch(self, 256)
