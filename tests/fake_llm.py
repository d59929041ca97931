"""A test-only OpenAI-compatible upstream (`POST /v1/chat/completions`) with fault injection, on loopback.

Behaviour is keyed by the upstream `model` of each request, so one server plays every deployment of a test:

    fake.fault("primary", Fault(status=500))              # every request to "primary" answers 500
    fake.fault("primary", Fault(hang_s=5), times=1)       # only the next one hangs
    fake.fault("m", Fault(cut_after=2))                   # streams drop the connection after 2 chunks

Answers are deterministic: the text is ``"Echo: " + last user message`` (cut to `max_tokens` words, then
`finish_reason: "length"`), one word per stream chunk; `usage` counts words (prompt: words of all messages
+ 5; completion: words answered). Every request is recorded (`requests`) with what was answered (`usage`).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from stack.process import free_port


@dataclass
class Fault:
    """What to do to a request: answer `status` (with `retry_after`), wait `delay_s` first (latency),
    `hang_s` (sleep past the gateway's timeout, then answer normally), or cut a stream after `cut_after`
    chunks (0: right after the headers)."""

    status: int | None = None
    retry_after: float | None = None
    delay_s: float = 0.0
    hang_s: float | None = None
    cut_after: int | None = None


@dataclass
class Recorded:
    """One request the fake received."""

    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    usage: dict[str, int] | None = None
    status: int = 200

    @property
    def text(self) -> str:
        """Every message's content, joined (what the upstream saw)."""
        return "\n".join(str(m.get("content", "")) for m in self.body.get("messages", []))


@dataclass
class _Rule:
    fault: Fault
    times: int | None


@dataclass
class FakeLLM:
    """State shared between the test and the server thread."""

    api_key: str | None = None
    requests: list[Recorded] = field(default_factory=list)
    rules: dict[str, list[_Rule]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fault(self, model: str, fault: Fault, times: int | None = None) -> None:
        """Apply `fault` to requests for `model` (the next `times` ones, or all until `clear`)."""
        with self.lock:
            self.rules.setdefault(model, []).append(_Rule(fault, times))

    def clear(self, model: str | None = None) -> None:
        """Drop the faults of `model` (all models when None)."""
        with self.lock:
            if model is None:
                self.rules.clear()
            else:
                self.rules.pop(model, None)

    def reset(self, api_key: str | None = None) -> None:
        """Forget faults and records (per test)."""
        with self.lock:
            self.rules.clear()
            self.requests.clear()
            self.api_key = api_key

    def calls(self, model: str) -> list[Recorded]:
        """Requests received for `model`."""
        with self.lock:
            return [r for r in self.requests if r.model == model]

    def _take(self, model: str) -> Fault | None:
        with self.lock:
            rules = self.rules.get(model) or []
            if not rules:
                return None
            rule = rules[0]
            if rule.times is not None:
                rule.times -= 1
                if rule.times <= 0:
                    rules.pop(0)
            return rule.fault


def answer_words(body: dict[str, Any]) -> tuple[list[str], str]:
    """The answer's words and finish reason for a request body."""
    messages = body.get("messages") or [{}]
    last = next((m for m in reversed(messages) if m.get("role") == "user"), messages[-1])
    words = ["Echo:", *str(last.get("content", "")).split()]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and len(words) > limit:
        return words[:limit], "length"
    return words, "stop"


def usage_for(body: dict[str, Any], completion: int) -> dict[str, int]:
    """The usage the fake reports."""
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", [])) + 5
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _error(status: int, retry_after: float | None) -> Response:
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
    body = orjson.dumps({"error": {"message": f"injected {status}", "type": "server_error", "param": None,
                                   "code": None}})
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def build_app(state: FakeLLM) -> FastAPI:
    """The fake's ASGI app."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        record = Recorded(str(body.get("model")), body, dict(request.headers))
        with state.lock:
            state.requests.append(record)
        if state.api_key is not None and request.headers.get("authorization") != f"Bearer {state.api_key}":
            record.status = 401
            return _error(401, None)
        fault = state._take(record.model) or Fault()
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.hang_s:
            await asyncio.sleep(fault.hang_s)
        if fault.status is not None:
            record.status = fault.status
            return _error(fault.status, fault.retry_after)
        words, finish = answer_words(body)
        record.usage = usage_for(body, len(words))
        if body.get("stream"):
            return StreamingResponse(_stream(body, words, finish, record.usage, fault.cut_after),
                                     media_type="text/event-stream")
        return Response(orjson.dumps(_completion(body, words, finish, record.usage)),
                        media_type="application/json")

    return app


def logprobs_for(body: dict[str, Any], pieces: list[str]) -> dict[str, Any] | None:
    """OpenAI-shaped log-probabilities of `pieces` when the request asks (-0.5 each; alternatives "alt<i>")."""
    if not body.get("logprobs"):
        return None
    alternatives = [{"token": f"alt{i}", "logprob": -1.0 - i, "bytes": list(f"alt{i}".encode())}
                    for i in range(body.get("top_logprobs") or 0)]
    return {"content": [{"token": p, "logprob": -0.5, "bytes": list(p.encode()), "top_logprobs": alternatives}
                        for p in pieces], "refusal": None}


def _completion(body: dict[str, Any], words: list[str], finish: str, usage: dict[str, int]) -> dict[str, Any]:
    pieces = [(" " if i else "") + w for i, w in enumerate(words)]
    message = {"role": "assistant", "content": "".join(pieces)}
    return {"id": f"fake-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"), "usage": usage,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs_for(body, pieces),
                         "finish_reason": finish}]}


class StreamCutError(Exception):
    """Raised inside the streaming body: uvicorn drops the connection without ending the chunked body."""


async def _stream(body: dict[str, Any], words: list[str], finish: str, usage: dict[str, int],
                  cut_after: int | None) -> AsyncIterator[bytes]:
    base = {"id": "fake-stream", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model")}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]}]
    pieces = [(" " if i else "") + w for i, w in enumerate(words)]
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "logprobs": logprobs_for(body, [p]),
                                     "finish_reason": None}]} for p in pieces]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**base, "choices": [], "usage": usage})
    for i, chunk in enumerate(chunks):
        if cut_after is not None and i >= cut_after:
            raise StreamCutError("injected stream cut")
        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        await asyncio.sleep(0)
    yield b"data: [DONE]\n\n"


class FakeLLMServer:
    """The fake served by uvicorn in a thread on a free loopback port."""

    def __init__(self) -> None:
        self.state = FakeLLM()
        self.port = free_port()
        config = uvicorn.Config(build_app(self.state), host="127.0.0.1", port=self.port, log_level="critical",
                                access_log=False, timeout_graceful_shutdown=1, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"fake-llm-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        """The OpenAI base URL (`.../v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 10.0) -> FakeLLMServer:
        """Start and wait until it serves."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake LLM server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Shut down."""
        self.server.should_exit = True
        self.thread.join(5)


def main() -> None:
    """`python -m tests.fake_llm --port N`: serve the fake alone (benchmarks), no key, no faults."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(FakeLLM()), host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
