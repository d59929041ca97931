"""Background jobs: `POST /v1/jobs` (embeddings) then poll `GET /v1/jobs/{id}` until it succeeded."""

from __future__ import annotations

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest import tasks
from loadtest.common import unique_sentence


class JobsUser(FastHttpUser):
    """Small and medium jobs; the end-to-end time of each is the `JOB` row."""

    wait_time = between(0.5, 1.0)

    @task(3)
    def small(self) -> None:
        tasks.job(self, [unique_sentence() for _ in range(16)])

    @task(1)
    def medium(self) -> None:
        tasks.job(self, [unique_sentence() for _ in range(256)])
