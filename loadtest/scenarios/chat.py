"""Chat completions, streaming (raw SSE, time to first token as `TTFT` rows) and non-streaming.

The model comes from `--chat-model` / `LOCUST_CHAT_MODEL` (default `smollm2`, served locally by Triton).
"""

from __future__ import annotations

import random

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest import tasks

PROMPTS = (
    "Say hello in one short sentence.",
    "Name three colours.",
    "What is a vector database? Answer briefly.",
    "Give one tip for writing tests.",
    "Translate 'good morning' into French.",
)


class ChatUser(FastHttpUser):
    """A chat client: mostly streaming, with think time between turns."""

    wait_time = between(0.5, 1.5)

    @task(3)
    def stream(self) -> None:
        tasks.chat_stream(self, random.choice(PROMPTS))

    @task(1)
    def non_stream(self) -> None:
        tasks.chat(self, random.choice(PROMPTS))
