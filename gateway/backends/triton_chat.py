"""A chat model served by the local Triton (a decoupled generation model), behind the `ChatBackend` interface.

The model (`tritonstack export smollm2`, `triton_models/generation.py`) takes the chat messages as JSON and
applies its chat template itself; it streams one response per text delta (a token's, or several under load) and a
final one carrying the finish reason and the token counts. Requests go through the gateway's Triton backend
(`TritonBackend.stream_infer`, gRPC streaming); this class turns the responses into OpenAI chat.completion objects or
chunks (with usage).

Errors become `UpstreamError`s the routing layer acts on: an unknown model → `not_found`; Triton unreachable →
`connection`; a full model (the generation model rejects at once when its batch or KV budget is full) →
`overloaded`, which overflows to the route's next deployment at once; a stream that stalls → `timeout`; a request
the model refuses → `bad_request`.

Request mapping: `messages` (JSON), `max_completion_tokens`/`max_tokens`, `min_tokens`, `temperature`,
`top_p` (0 → greedy), `seed`, `stop` (string or list), `presence_penalty`, `frequency_penalty`, `logprobs` /
`top_logprobs` (the model's own entries, OpenAI-shaped, in `choices[0].logprobs.content` of the answer or of the
chunk that carries their text). Without `temperature` the model's own default applies (generation.json: 0.2).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson

from gateway.backends.base import Backend
from gateway.backends.chat import UpstreamError
from gateway.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
)

_ids = itertools.count(1)


def _from_gateway_error(exc: GatewayError, model: str) -> UpstreamError:
    if isinstance(exc, NotFoundError):
        return UpstreamError("not_found", f"Triton does not serve the model '{model}'")
    if isinstance(exc, BackendTimeoutError):
        return UpstreamError("timeout", "Triton did not answer in time")
    if isinstance(exc, BackendUnavailableError) and exc.code == "backend_overloaded":
        return UpstreamError("overloaded", f"Triton model '{model}' is at capacity", status=503)
    if isinstance(exc, InvalidRequestError):
        return UpstreamError("bad_request", exc.message, status=400)
    if isinstance(exc, BackendUnavailableError):
        return UpstreamError("connection", "Triton is unreachable")
    return UpstreamError("server_error", f"Triton model '{model}' failed", status=500)


def _string(value: str) -> np.ndarray:
    return np.array([value.encode("utf-8")], dtype=np.object_)


def generation_inputs(body: dict[str, Any]) -> dict[str, np.ndarray]:
    """The generation model's inputs for an OpenAI chat request body."""
    inputs = {"messages": _string(orjson.dumps(body["messages"]).decode())}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        inputs["max_tokens"] = np.array([max_tokens], dtype=np.int32)
    if body.get("min_tokens"):
        inputs["min_tokens"] = np.array([body["min_tokens"]], dtype=np.int32)
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if top_p is not None and top_p <= 0:  # an empty nucleus: the single most likely token
        temperature, top_p = 0.0, None
    if temperature is not None:
        inputs["temperature"] = np.array([temperature], dtype=np.float32)
    if top_p is not None:
        inputs["top_p"] = np.array([top_p], dtype=np.float32)
    if body.get("seed") is not None:
        inputs["seed"] = np.array([body["seed"]], dtype=np.int64)
    for penalty in ("presence_penalty", "frequency_penalty"):
        if body.get(penalty):
            inputs[penalty] = np.array([body[penalty]], dtype=np.float32)
    if body.get("logprobs"):
        inputs["logprobs"] = np.array([body.get("top_logprobs") or 0], dtype=np.int32)
    stop = body.get("stop")
    if stop:
        inputs["stop"] = _string(orjson.dumps([stop] if isinstance(stop, str) else list(stop)).decode())
    return inputs


def _text(outputs: dict[str, np.ndarray], name: str) -> str:
    value = outputs.get(name)
    if value is None or value.size == 0:
        return ""
    item = value.reshape(-1)[0]
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def _int(outputs: dict[str, np.ndarray], name: str) -> int:
    value = outputs.get(name)
    return int(value.reshape(-1)[0]) if value is not None and value.size else 0


def _logprobs(outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The token entries a response carries (OpenAI's `logprobs.content` items; none unless asked for)."""
    text = _text(outputs, "logprobs")
    return orjson.loads(text) if text else []


def _usage(outputs: dict[str, np.ndarray]) -> dict[str, int]:
    prompt, completion = _int(outputs, "prompt_tokens"), _int(outputs, "completion_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class TritonChatBackend:
    """A Triton generation model as a chat deployment."""

    def __init__(self, models: Backend, model: str) -> None:
        self._models = models
        self.model = model

    async def _require_model(self) -> None:
        try:
            await self._models.model_info(self.model)
        except GatewayError as exc:
            raise _from_gateway_error(exc, self.model) from None

    async def complete(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The whole answer as a chat.completion object (the model's stream, collected)."""
        await self._require_model()
        return await self._generate(body, timeout_s)

    async def stream(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[dict[str, Any]]:
        """chat.completion.chunk objects: a role chunk, one per text delta, the finish chunk, a usage chunk."""
        await self._require_model()
        async for chunk in self._generate_stream(body, timeout_s):
            yield chunk

    async def _responses(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[dict[str, np.ndarray]]:
        stream_infer = getattr(self._models, "stream_infer", None)
        if stream_infer is None:
            raise UpstreamError("unavailable", "this inference backend cannot stream generation")
        request_id = f"chat-{next(_ids)}"
        responses = stream_infer(self.model, generation_inputs(body), timeout_s=timeout_s, request_id=request_id)
        try:
            async for outputs in responses:
                yield outputs
        except GatewayError as exc:
            raise _from_gateway_error(exc, self.model) from None
        finally:
            await responses.aclose()

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-triton-{next(_ids)}", "object": kind, "created": int(time.time()),
                "model": self.model, "system_fingerprint": None}

    async def _generate(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        parts: list[str] = []
        entries: list[dict[str, Any]] = []
        last: dict[str, np.ndarray] = {}
        async for outputs in self._responses(body, timeout_s):
            parts.append(_text(outputs, "text"))
            entries.extend(_logprobs(outputs))
            last = outputs
        finish = _text(last, "finish_reason") or "stop"
        message = {"role": "assistant", "content": "".join(parts), "refusal": None}
        logprobs = {"content": entries, "refusal": None} if body.get("logprobs") else None
        return {**self._base("chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}],
                "usage": _usage(last)}

    async def _generate_stream(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[dict[str, Any]]:
        base = self._base("chat.completion.chunk")

        wanted = bool(body.get("logprobs"))

        def chunk(delta: dict[str, Any], finish: str | None, entries: list[dict[str, Any]]) -> dict[str, Any]:
            logprobs = {"content": entries, "refusal": None} if wanted and entries else None
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

        first = True
        async for outputs in self._responses(body, timeout_s):
            text, finish = _text(outputs, "text"), _text(outputs, "finish_reason") or None
            entries = _logprobs(outputs)
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            first = False
            if text or finish is None:
                yield chunk(delta, None, entries)
                delta, entries = {}, []
            if finish is not None:
                yield chunk(delta, finish, entries)
                yield {**base, "choices": [], "usage": _usage(outputs)}
                return
        raise UpstreamError("stream_broken", "Triton's stream ended without a final response")

    async def aclose(self) -> None:
        """The Triton client belongs to the lifespan."""
