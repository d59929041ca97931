"""Server-sent events for chat: priming an upstream stream to its first token, reshaping chunks, replaying
cached answers.

Wire format (OpenAI): `data: {chunk}\\n\\n` per chunk, `data: [DONE]\\n\\n` last; with
`stream_options.include_usage` one more chunk before `[DONE]` with `choices: []` and the usage. A stream that
breaks after its first token ends with `data: {"error": {...}}\\n\\n` and no `[DONE]` (the SDKs raise on it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.backends.chat import TokenUsage, UpstreamError

DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    """One `data:` event."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_event(message: str, code: str) -> bytes:
    """The event that ends a stream broken after its first token."""
    return sse({"error": {"message": message, "type": "server_error", "param": None, "code": code}})


def _first_choice(chunk: dict[str, Any]) -> dict[str, Any] | None:
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def has_token(chunk: dict[str, Any]) -> bool:
    """The chunk carries generated text or a finish reason (the stream is committed once one arrives)."""
    choice = _first_choice(chunk)
    if choice is None:
        return False
    delta = choice.get("delta") or {}
    return bool(delta.get("content")) or choice.get("finish_reason") is not None


@dataclass
class PrimedStream:
    """An upstream stream read up to its first token: the chunks so far, the rest, and cleanup."""

    buffered: list[dict[str, Any]]
    rest: AsyncIterator[dict[str, Any]]
    finished: bool
    release: Callable[[], None] = field(default=lambda: None)

    async def aclose(self) -> None:
        """Close the upstream iterator (its HTTP response)."""
        aclose = getattr(self.rest, "aclose", None)
        if aclose is not None:
            await aclose()


async def prime(upstream: AsyncIterator[dict[str, Any]]) -> PrimedStream:
    """Read chunks until the first token; UpstreamError if the stream fails or ends before one."""
    buffered: list[dict[str, Any]] = []
    async for chunk in upstream:
        buffered.append(chunk)
        if has_token(chunk):
            return PrimedStream(buffered, upstream, finished=False)
    if not buffered:
        raise UpstreamError("stream_broken", "upstream stream ended without any chunk")
    return PrimedStream(buffered, upstream, finished=True)  # complete, but no text


class ChunkShaper:
    """Rewrites upstream chunks for the client (our id, created time and public model name; upstream usage
    chunks withheld; the upstream's log-probabilities kept when `logprobs`, the request asked for them) and
    accumulates the text, finish reason and usage."""

    def __init__(self, completion_id: str, created: int, model: str, logprobs: bool = False) -> None:
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self.logprobs = logprobs
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: TokenUsage | None = None

    @property
    def content(self) -> str:
        """The text streamed so far."""
        return "".join(self.parts)

    def shape(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The client's chunk for an upstream chunk, or None (usage-only chunks)."""
        usage = TokenUsage.from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        choice = _first_choice(chunk)
        if choice is None:
            return None
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if isinstance(text, str):
            self.parts.append(text)
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        out_delta = {k: v for k, v in delta.items() if k in ("role", "content", "refusal")}
        logprobs = choice.get("logprobs") if self.logprobs and isinstance(choice.get("logprobs"), dict) else None
        return {**self.base, "choices": [{"index": 0, "delta": out_delta, "logprobs": logprobs,
                                          "finish_reason": choice.get("finish_reason")}]}

    def usage_chunk(self, usage: TokenUsage) -> dict[str, Any]:
        """The final `choices: []` chunk of `include_usage`."""
        return {**self.base, "choices": [], "usage": usage_dict(usage)}


def usage_dict(usage: TokenUsage) -> dict[str, int]:
    """The OpenAI `usage` object."""
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def replay_chunks(content: str, finish_reason: str | None, piece_chars: int = 64) -> Iterator[dict[str, Any]]:
    """Upstream-shaped chunks for a cached answer: role, the text in pieces, the finish reason."""
    yield {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    for start in range(0, len(content), piece_chars):
        piece = content[start:start + piece_chars]
        yield {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
    yield {"choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason or "stop"}]}
