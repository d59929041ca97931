"""Embeddings from a hot set with Zipf-like popularity: most requests hit the cache (cache-warm)."""

from __future__ import annotations

from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest import tasks
from loadtest.common import hot_sentence, option, zipf_rank


class EmbeddingsHotUser(FastHttpUser):
    """Texts drawn from `--hot-set` sentences with popularity ∝ 1/rank^`--zipf-s`."""

    wait_time = constant(0)

    def _text(self) -> str:
        env = self.environment
        return hot_sentence(zipf_rank(option(env, "hot_set") or 200, option(env, "zipf_s") or 1.1))

    @task(8)
    def one(self) -> None:
        tasks.embeddings(self, [self._text()], name="embeddings hot x1")

    @task(2)
    def few(self) -> None:
        tasks.embeddings(self, [self._text() for _ in range(3)], name="embeddings hot x3")
