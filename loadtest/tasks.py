"""Request functions shared by the scenarios; each validates the answer and marks wrong ones as failures.

A function takes the running `FastHttpUser` and sends one logical operation (a job is a submit and its polls).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import gevent
from locust import events
from locust.contrib.fasthttp import FastHttpUser, ResponseContextManager

from loadtest.common import headers, option


class InvalidAnswerError(Exception):
    """The answer had the right status but the wrong content."""


def _status_error(resp: ResponseContextManager) -> InvalidAnswerError:
    """`HTTP 429 rate_limit_exceeded`: short and stable, so Locust's error report groups alike failures."""
    try:
        error = json.loads(resp.text or "").get("error") or {}
        detail = error.get("code") or error.get("type") or ""
    except (ValueError, AttributeError):
        detail = (resp.text or "")[:80]
    return InvalidAnswerError(f"HTTP {resp.status_code} {detail}".strip())


def _json(resp: ResponseContextManager) -> dict[str, Any]:
    if resp.status_code != 200 and resp.status_code != 202:
        raise _status_error(resp)
    try:
        return json.loads(resp.text or "")
    except ValueError as exc:
        raise InvalidAnswerError(f"not JSON: {(resp.text or '')[:100]}") from exc


def check_embeddings(body: dict[str, Any], count: int, dim: int) -> None:
    """OpenAI embeddings shape: one item per input, in index order, `dim` floats each, real usage."""
    data = body.get("data")
    if body.get("object") != "list" or not isinstance(data, list) or len(data) != count:
        raise InvalidAnswerError(f"expected a list of {count} embeddings")
    for i, item in enumerate(data):
        if item.get("index") != i:
            raise InvalidAnswerError(f"item {i} has index {item.get('index')}")
        vector = item.get("embedding")
        size = len(base64.b64decode(vector)) // 4 if isinstance(vector, str) else len(vector or [])
        if size != dim:
            raise InvalidAnswerError(f"item {i} has {size} dimensions, expected {dim}")
    usage = body.get("usage") or {}
    if not usage.get("prompt_tokens", 0) > 0 or usage.get("total_tokens", 0) < usage["prompt_tokens"]:
        raise InvalidAnswerError(f"bad usage {usage}")


def embeddings(user: FastHttpUser, texts: list[str], name: str, encoding: str = "float") -> None:
    """POST /v1/embeddings with `texts`, grouped under `name`."""
    env = user.environment
    payload = {"model": option(env, "embedding_model") or "minilm", "input": texts, "encoding_format": encoding}
    with user.client.post("/v1/embeddings", json=payload, headers=headers(env), name=name,
                          catch_response=True) as resp:
        try:
            check_embeddings(_json(resp), len(texts), option(env, "embedding_dim") or 384)
        except InvalidAnswerError as exc:
            resp.failure(str(exc))


def _chat_payload(user: FastHttpUser, prompt: str, stream: bool) -> dict[str, Any]:
    env = user.environment
    payload: dict[str, Any] = {
        "model": option(env, "chat_model") or "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": option(env, "max_tokens") or 16,
        "stream": stream,
    }
    if stream:
        payload["stream_options"] = {"include_usage": True}
    return payload


def chat(user: FastHttpUser, prompt: str) -> None:
    """Non-streaming chat completion: a message and completion tokens in the usage."""
    env = user.environment
    with user.client.post("/v1/chat/completions", json=_chat_payload(user, prompt, False), headers=headers(env),
                          name="chat", catch_response=True) as resp:
        try:
            body = _json(resp)
            message = (body.get("choices") or [{}])[0].get("message") or {}
            if not isinstance(message.get("content"), str):
                raise InvalidAnswerError("no message content")
            if not (body.get("usage") or {}).get("completion_tokens", 0) > 0:
                raise InvalidAnswerError(f"bad usage {body.get('usage')}")
        except InvalidAnswerError as exc:
            resp.failure(str(exc))


def parse_sse(lines: list[str]) -> tuple[list[dict[str, Any]], bool]:
    """The JSON chunks of an SSE body and whether it ended with `data: [DONE]`."""
    chunks: list[dict[str, Any]] = []
    done = False
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        chunks.append(json.loads(data))
    return chunks, done


def _has_content(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


def _read_stream(resp: ResponseContextManager, start: float) -> tuple[list[str], float | None]:
    """Read SSE lines; returns them and the time to the first content chunk (ms)."""
    lines: list[str] = []
    ttft: float | None = None
    buffer = ""
    for piece in resp.iter_content(chunk_size=1024):
        buffer += piece.decode("utf-8", "replace") if isinstance(piece, bytes) else piece
        while "\n" in buffer:
            line, buffer = buffer.split("\n", 1)
            lines.append(line)
            if ttft is None and line.startswith("data:") and '"content"' in line and _content_line(line):
                ttft = (time.perf_counter() - start) * 1000
    return lines, ttft


def _content_line(line: str) -> bool:
    try:
        return _has_content(json.loads(line[5:].strip()))
    except ValueError:
        return False


def chat_stream(user: FastHttpUser, prompt: str) -> None:
    """Streaming chat over raw SSE: content chunks, `[DONE]`, usage; time to first token as metric `TTFT`."""
    env = user.environment
    start = time.perf_counter()
    with user.client.post("/v1/chat/completions", json=_chat_payload(user, prompt, True), headers=headers(env),
                          name="chat stream", stream=True, catch_response=True) as resp:
        try:
            if resp.status_code != 200:
                raise _status_error(resp)
            lines, ttft = _read_stream(resp, start)
            resp.request_meta["response_time"] = (time.perf_counter() - start) * 1000  # whole stream
            chunks, done = parse_sse(lines)
            if not done or ttft is None:
                raise InvalidAnswerError(f"stream without content or [DONE] ({len(chunks)} chunks)")
            usage = next((c["usage"] for c in reversed(chunks) if c.get("usage")), {})
            if not usage.get("completion_tokens", 0) > 0:
                raise InvalidAnswerError(f"bad usage {usage}")
            events.request.fire(request_type="TTFT", name="chat stream", response_time=ttft, response_length=0,
                                exception=None, context={})
        except (InvalidAnswerError, ValueError) as exc:
            resp.failure(str(exc))


def job(user: FastHttpUser, texts: list[str]) -> None:
    """Submit an embeddings job and poll it until it succeeded; end-to-end time as metric `JOB`."""
    env = user.environment
    start = time.perf_counter()
    payload = {"type": "embeddings", "model": option(env, "embedding_model") or "minilm", "input": texts}
    with user.client.post("/v1/jobs", json=payload, headers=headers(env), name="/v1/jobs",
                          catch_response=True) as resp:
        try:
            job_id = _json(resp)["id"]
        except (InvalidAnswerError, KeyError) as exc:
            resp.failure(str(exc))
            return
    status = _poll(user, job_id, start + (option(env, "job_timeout") or 60.0))
    exception = None if status == "succeeded" else InvalidAnswerError(f"job ended {status}")
    events.request.fire(request_type="JOB", name="embeddings job", response_time=(time.perf_counter() - start) * 1000,
                        response_length=len(texts), exception=exception, context={})


def _poll(user: FastHttpUser, job_id: str, deadline: float) -> str:
    env = user.environment
    status = "queued"
    while time.perf_counter() < deadline:
        with user.client.get(f"/v1/jobs/{job_id}", headers=headers(env), name="/v1/jobs/[id]",
                             catch_response=True) as resp:
            try:
                body = _json(resp)
                status = body.get("status", "?")
                if status == "succeeded" and body.get("progress", {}).get("done", 0) < 1:
                    raise InvalidAnswerError("succeeded without progress")
            except InvalidAnswerError as exc:
                resp.failure(str(exc))
                return "error"
        if status in ("succeeded", "failed", "cancelled"):
            return status
        gevent.sleep(0.2)
    return "timed out"
