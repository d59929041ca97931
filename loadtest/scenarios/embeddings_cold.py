"""Embeddings with unique inputs: every request misses the cache, so Triton does the work (cache-cold)."""

from __future__ import annotations

from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest import tasks
from loadtest.common import unique_sentence


class EmbeddingsColdUser(FastHttpUser):
    """Mostly one sentence per request, sometimes a few, in float or base64 (the SDK default)."""

    wait_time = constant(0)

    @task(6)
    def one_float(self) -> None:
        tasks.embeddings(self, [unique_sentence()], name="embeddings cold x1")

    @task(3)
    def one_base64(self) -> None:
        tasks.embeddings(self, [unique_sentence()], name="embeddings cold x1 base64", encoding="base64")

    @task(1)
    def four(self) -> None:
        tasks.embeddings(self, [unique_sentence() for _ in range(4)], name="embeddings cold x4")
