"""A realistic mix: embeddings-heavy traffic (mostly cache hits), some chat, occasional jobs.

Chat needs a chat route (`--chat-model`); where there is none, `--mix-chat 0` (`LOCUST_MIX_CHAT=0`) sends hot
embeddings in its place.
"""

from __future__ import annotations

import random

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest import tasks
from loadtest.common import hot_sentence, option, unique_sentence, zipf_rank
from loadtest.scenarios.chat import PROMPTS


class MixUser(FastHttpUser):
    """Per 20 operations: 10 hot embeddings, 5 cold, 1 batch of 32, 3 chat (2 of them streaming), 1 job."""

    wait_time = between(0.05, 0.2)

    def _chat_enabled(self) -> bool:
        return option(self.environment, "mix_chat") != 0

    @task(10)
    def hot(self) -> None:
        env = self.environment
        rank = zipf_rank(option(env, "hot_set") or 200, option(env, "zipf_s") or 1.1)
        tasks.embeddings(self, [hot_sentence(rank)], name="embeddings hot x1")

    @task(5)
    def cold(self) -> None:
        tasks.embeddings(self, [unique_sentence()], name="embeddings cold x1")

    @task(1)
    def batch(self) -> None:
        tasks.embeddings(self, [unique_sentence() for _ in range(32)], name="embeddings batch 32")

    @task(2)
    def chat_stream(self) -> None:
        if self._chat_enabled():
            tasks.chat_stream(self, random.choice(PROMPTS))
        else:
            self.hot()

    @task(1)
    def chat(self) -> None:
        if self._chat_enabled():
            tasks.chat(self, random.choice(PROMPTS))
        else:
            self.hot()

    @task(1)
    def job(self) -> None:
        tasks.job(self, [unique_sentence() for _ in range(16)])
