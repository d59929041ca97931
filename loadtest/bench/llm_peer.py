"""The peer rows of `tritonstack bench llm`: our stack (gateway `/v1/chat/completions` → Triton `smollm2`) against
llama.cpp's `llama-server` on the same GGUF, both through their OpenAI endpoint, streamed, with one client
(`httpx`'s async client reading the server-sent events here), the same prompts and settings.

Per stream the client records when it sent the request and when each chunk with content arrived, and takes the
token count from the final usage chunk (`stream_options.include_usage`): our gateway may carry several tokens in
one chunk under load, so counting chunks would undercount. Both sides generate exactly `max_tokens` tokens (ours:
vLLM's `min_tokens`; llama-server: its `ignore_eos`), greedy. Rounds interleave the two servers (the order flips
every round) and the ratios are medians of per-round ratios.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

DONE = "[DONE]"


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible server: base URL (…/v1), the model name it serves, headers, and the request fields
    that make it generate exactly `max_tokens` tokens."""

    name: str
    base_url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    exact_length: Callable[[int], dict[str, Any]] = lambda n: {}


def gateway_endpoint(url: str, api_key: str, model: str) -> Endpoint:
    """Our gateway: `min_tokens` (vLLM's extension, passed to Triton) masks end-of-sequence until `max_tokens`."""
    return Endpoint("ours", f"{url}/v1", model, {"authorization": f"Bearer {api_key}"},
                    lambda n: {"min_tokens": n})


def llama_server_endpoint(url: str) -> Endpoint:
    """llama-server: `ignore_eos` keeps it generating until `max_tokens`."""
    return Endpoint("llama-server", f"{url}/v1", "smollm2", {}, lambda n: {"ignore_eos": True})


@dataclass
class ChatStream:
    """One streamed completion as the client saw it."""

    sent: float
    arrivals: list[float] = field(default_factory=list)  # chunks with content
    usage_tokens: int | None = None
    prompt_tokens: int | None = None

    @property
    def tokens(self) -> int:
        """Completion tokens: the usage's when the server sent one, else one per content chunk."""
        return self.usage_tokens if self.usage_tokens is not None else len(self.arrivals)

    @property
    def ttft_s(self) -> float:
        return self.arrivals[0] - self.sent

    @property
    def tps(self) -> float:
        """Tokens/s from the send to the last content (prefill included)."""
        return self.tokens / (self.arrivals[-1] - self.sent)

    @property
    def decode_tps(self) -> float:
        """Tokens/s after the first token."""
        return (self.tokens - 1) / (self.arrivals[-1] - self.arrivals[0])


def sse_payload(line: str) -> dict[str, Any] | str | None:
    """A server-sent-events line's JSON payload, `DONE` for `data: [DONE]`, None for anything else (blank lines,
    comments, other fields)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == DONE:
        return DONE
    return json.loads(data) if data else None


def record_chunk(stream: ChatStream, chunk: dict[str, Any], at: float) -> None:
    """Fold one chunk into `stream`: an arrival when it carries content, the counts when it carries usage."""
    if "error" in chunk:
        raise RuntimeError(f"stream failed: {chunk['error']}")
    if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or []):
        stream.arrivals.append(at)
    usage = chunk.get("usage")
    if usage:
        stream.usage_tokens = int(usage["completion_tokens"])
        stream.prompt_tokens = int(usage["prompt_tokens"])


def request_body(endpoint: Endpoint, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The same streamed, greedy request for every endpoint (plus its exact-length field)."""
    return {"model": endpoint.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            **endpoint.exact_length(max_tokens)}


class StreamingClient:
    """The one client both servers get: an `httpx.AsyncClient` (kept connections) on an event loop of its own."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()
        self._client = self._runner.run(self._open())

    @staticmethod
    async def _open() -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=httpx.Limits(max_connections=64))

    async def _stream(self, endpoint: Endpoint, prompt: str, max_tokens: int) -> ChatStream:
        body = request_body(endpoint, prompt, max_tokens)
        stream = ChatStream(sent=time.perf_counter())
        async with self._client.stream("POST", f"{endpoint.base_url}/chat/completions", json=body,
                                       headers=endpoint.headers) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{endpoint.name}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
            async for line in response.aiter_lines():
                payload = sse_payload(line)
                if payload == DONE:
                    break
                if isinstance(payload, dict):
                    record_chunk(stream, payload, time.perf_counter())
        if not stream.arrivals:
            raise RuntimeError(f"{endpoint.name}: a stream without content")
        return stream

    async def _all(self, endpoint: Endpoint, prompts: list[str], max_tokens: int) -> list[ChatStream]:
        return list(await asyncio.gather(*(self._stream(endpoint, p, max_tokens) for p in prompts)))

    def streams(self, endpoint: Endpoint, prompts: list[str], max_tokens: int) -> list[ChatStream]:
        """Send every prompt at once; return when all streams finished."""
        return self._runner.run(self._all(endpoint, prompts, max_tokens))

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()


def aggregate_tps(run: list[ChatStream]) -> float:
    """All tokens of concurrent streams over the first send to the last content."""
    return sum(s.tokens for s in run) / (max(s.arrivals[-1] for s in run) - min(s.sent for s in run))


def per_round_ratios(ours: list[float], peer: list[float]) -> list[float]:
    """ours / peer, round by round."""
    return [a / b for a, b in zip(ours, peer, strict=True)]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


METRICS: dict[str, Callable[[ChatStream, list[ChatStream]], float]] = {
    "decode_tps": lambda one, many: one.decode_tps,
    "tps": lambda one, many: one.tps,
    "ttft_ms": lambda one, many: one.ttft_s * 1000,
    "many_tps": lambda one, many: aggregate_tps(many),
    "many_ttft_ms": lambda one, many: median([s.ttft_s * 1000 for s in many]),
}


@dataclass
class PeerRounds:
    """Both servers' single stream and N streams, round by round."""

    single: dict[str, list[ChatStream]] = field(default_factory=lambda: {"ours": [], "llama-server": []})
    many: dict[str, list[list[ChatStream]]] = field(default_factory=lambda: {"ours": [], "llama-server": []})

    def values(self, side: str, metric: str) -> list[float]:
        """One value per round."""
        return [METRICS[metric](one, many) for one, many in zip(self.single[side], self.many[side], strict=True)]

    def summary(self) -> dict[str, Any]:
        """Per metric: each side's per-round values and median, the per-round ratios ours/peer and their median;
        plus the prompt tokens each side counted and our tokens per content chunk with N streams."""
        out: dict[str, Any] = {}
        for metric in METRICS:
            ours, peer = self.values("ours", metric), self.values("llama-server", metric)
            ratios = per_round_ratios(ours, peer)
            out[metric] = {"ours": ours, "peer": peer, "ratios": ratios, "ours_median": median(ours),
                           "peer_median": median(peer), "ratio_median": median(ratios)}
        out["prompt_tokens"] = {side: self.single[side][0].prompt_tokens for side in self.single}
        out["tokens_per_chunk"] = {side: median([sum(s.tokens for s in run) / sum(len(s.arrivals) for s in run)
                                                 for run in self.many[side]]) for side in self.many}
        return out


def prompts_for(tag: str, streams: int, prompts: tuple[str, ...]) -> list[str]:
    """`streams` prompts tagged with `tag` (no earlier request had them: both servers cache prompt prefixes)."""
    return [f"({tag}.{i}) {prompts[i % len(prompts)]}" for i in range(streams)]


def run_round(client: StreamingClient, ours: Endpoint, peer: Endpoint, record: PeerRounds, round_no: int,
              prompts: tuple[str, ...], max_tokens: int, streams: int) -> None:
    """One round: each side's single stream, then each side's N streams; ours first in odd rounds, the peer first
    in even ones. Both sides get the same tagged prompts."""
    order = (ours, peer) if round_no % 2 else (peer, ours)
    for endpoint in order:
        record.single[endpoint.name].append(
            client.streams(endpoint, [f"(p{round_no}) {prompts[0]}"], max_tokens)[0])
    for endpoint in order:
        record.many[endpoint.name].append(
            client.streams(endpoint, prompts_for(f"p{round_no}", streams, prompts), max_tokens))
