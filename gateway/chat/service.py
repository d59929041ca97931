"""Chat completions: route, cache, budget, fallback dispatch, streaming and accounting. No FastAPI here.

Per request: the public model names a route (404 otherwise); a deterministic request (temperature 0 or a
seed) is looked up in the answer cache under each of the route's deployments; on a miss the key's budget
reserves the worst case; the dispatcher tries the deployments (fallback, retries, overflow, breakers, time
budget) with a body prepared per deployment (upstream model name; PII redacted for cloud deployments by
default); the answer is returned (or streamed, from its first token on) with `x-served-by`, and accounted:
budget settled with the real usage, usage totals, rate-limit tokens, cache store, one audit line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gateway.auth import Principal
from gateway.backends.chat import TokenUsage, UpstreamError
from gateway.cache.control import CacheMode
from gateway.chat.accounting import Accounting, estimate_completion
from gateway.chat.cache import CachedAnswer, cache_key, normalized
from gateway.chat.context import ChatContext, answer_of
from gateway.chat.metrics import ChatMetrics
from gateway.chat.protocol import ChatCompletionRequest
from gateway.chat.streaming import DONE, ChunkShaper, PrimedStream, error_event, prime, replay_chunks, sse
from gateway.errors import GatewayError, NotFoundError, error_kind
from gateway.routing.dispatch import Dispatcher
from gateway.routing.table import Deployment, RouteTable
from gateway.usage.totals import estimate_tokens


@dataclass(slots=True)
class ChatOutcome:
    """A non-stream answer: the response object, headers, and upstream time (None for cache hits)."""

    payload: dict[str, Any]
    headers: dict[str, str]
    backend_s: float | None = None
    tokens: int = 0  # tokens the upstream used (0 for cache hits)


@dataclass(slots=True)
class ChatStream:
    """A stream answer: SSE bytes to send, and headers (known before the first byte)."""

    body: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None  # call when the response ends, started or not (idempotent)


class ChatService:
    """Serves `POST /v1/chat/completions` over the route table."""

    def __init__(self, table: RouteTable, dispatcher: Dispatcher, accounting: Accounting, metrics: ChatMetrics,
                 *, http_client: aiohttp.ClientSession | None = None) -> None:
        self.table = table
        self.dispatcher = dispatcher
        self.accounting = accounting
        self.metrics = metrics
        self._http = http_client

    def model_names(self) -> list[str]:
        """Public chat model names."""
        return sorted(self.table.routes)

    async def deployments(self) -> dict[str, Any]:
        """Deployments (breaker state synced from Redis, load, price) and routes, for the admin API."""
        for dep in self.table.deployments.values():
            await dep.breaker.sync(force=True)
        return {
            "deployments": [d.describe() for d in self.table.deployments.values()],
            "routes": {name: {"deployments": r.config.deployments, "redact_pii": r.config.redact_pii}
                       for name, r in self.table.routes.items()},
        }

    async def usage_report(self) -> dict[str, Any]:
        """All-time usage by key and model, and each budget's current period (this process's queue flushed)."""
        await self.accounting.usage.flush()
        totals = await self.accounting.usage.totals()
        return {"available": totals is not None, **(totals or {"by_key": {}, "by_model": {}}),
                "budgets": await self.accounting.budgets.status()}

    async def drain(self) -> None:
        """Finish background accounting (shutdown)."""
        await self.accounting.drain()

    async def aclose(self) -> None:
        """Drain, then close the backends and the HTTP client this service owns."""
        await self.drain()
        await self.table.aclose()
        if self._http is not None:
            await self._http.close()

    async def create(self, request: ChatCompletionRequest, principal: Principal, request_id: str,
                     mode: CacheMode = CacheMode.DEFAULT) -> ChatOutcome | ChatStream:
        """Answer one request (typed GatewayError otherwise; every outcome is accounted)."""
        ctx = self._context(request, principal, request_id, mode)
        try:
            hit = await self._lookup(ctx)
            if hit is not None:
                return self._from_cache(ctx, hit)
            await self.accounting.reserve(ctx)
            if request.stream:
                return await self._open_stream(ctx)
            return await self._complete(ctx)
        except GatewayError as exc:
            self.accounting.failed(ctx, error_kind(exc).status, exc.code)
            raise
        except asyncio.CancelledError:
            self.accounting.failed(ctx, "client_closed", "client_closed")
            raise

    # --- preparation -----------------------------------------------------------------------

    def _context(self, request: ChatCompletionRequest, principal: Principal, request_id: str,
                 mode: CacheMode) -> ChatContext:
        route = self.table.get(request.model)
        if route is None:
            raise NotFoundError(f"The model '{request.model}' does not exist", param="model",
                                code="model_not_found")
        ctx = ChatContext(request=request, route=route, principal=principal, request_id=request_id, mode=mode,
                          max_tokens=request.requested_max_tokens,
                          prompt_estimate=estimate_tokens((m.text for m in request.messages),
                                                          route.policy.bytes_per_token))
        if ctx.max_tokens is None and self.accounting.needs_budget(ctx):
            ctx.max_tokens = route.policy.default_max_tokens  # a budget needs a bounded worst case
        return ctx

    async def _lookup(self, ctx: ChatContext) -> CachedAnswer | None:
        cache = self.accounting.cache
        if cache is None or not ctx.request.deterministic or ctx.route.policy.cache_ttl_s <= 0:
            self.metrics.child(self.metrics.cache, "uncacheable").inc()
            return None
        if ctx.mode is CacheMode.BYPASS:
            ctx.cache = "bypass"
            self.metrics.child(self.metrics.cache, "bypass").inc()
            return None
        digest = normalized(ctx.request, ctx.max_tokens or 0)
        ctx.cache_keys = {d.name: cache_key(digest, f"{d.config.kind}:{d.upstream_model}")
                          for d in ctx.route.deployments}
        hit = await cache.get(list(dict.fromkeys(ctx.cache_keys.values()))) if ctx.mode.lookup else None
        ctx.cache = "hit" if hit is not None else "miss"
        self.metrics.child(self.metrics.cache, ctx.cache).inc()
        return hit

    def _headers(self, ctx: ChatContext, served_by: str) -> dict[str, str]:
        headers = {"x-served-by": served_by}
        if ctx.cache != "uncacheable":
            headers["x-cache"] = ctx.cache
        return headers

    # --- cache hits --------------------------------------------------------------------------

    def _from_cache(self, ctx: ChatContext, hit: CachedAnswer) -> ChatOutcome | ChatStream:
        self.accounting.cached(ctx, hit)
        usage = TokenUsage(hit.prompt_tokens, hit.completion_tokens)
        headers = self._headers(ctx, hit.deployment)
        if not ctx.request.stream:
            return ChatOutcome(ctx.completion(hit.content, hit.finish_reason, usage), headers)
        return ChatStream(self._replay(ctx, hit, usage), headers)

    async def _replay(self, ctx: ChatContext, hit: CachedAnswer, usage: TokenUsage) -> AsyncIterator[bytes]:
        shaper = ChunkShaper(ctx.completion_id, ctx.created, ctx.request.model)
        for chunk in replay_chunks(hit.content, hit.finish_reason):
            shaped = shaper.shape(chunk)
            if shaped is not None:
                yield sse(shaped)
        if ctx.request.include_usage:
            yield sse(shaper.usage_chunk(usage))
        yield DONE

    # --- non-stream ----------------------------------------------------------------------------

    async def _complete(self, ctx: ChatContext) -> ChatOutcome:
        async def call(dep: Deployment, timeout_s: float) -> dict[str, Any]:
            with dep.lease():
                return await dep.backend.complete(ctx.upstream_body(dep), timeout_s)

        dispatched = await self.dispatcher.run(ctx.route, call, ctx.trace)
        dep, payload = dispatched.deployment, dispatched.value
        content, finish, logprobs = answer_of(payload)
        usage = TokenUsage.from_openai(payload.get("usage")) or self._estimate(ctx, content)
        self.accounting.served(ctx, dep, usage)
        self.accounting.store(ctx, dep, CachedAnswer(content, finish, usage.prompt_tokens,
                                                     usage.completion_tokens, dep.name))
        return ChatOutcome(ctx.completion(content, finish, usage, logprobs), self._headers(ctx, dep.name),
                           dispatched.upstream_s, usage.total_tokens)

    def _estimate(self, ctx: ChatContext, content: str) -> TokenUsage:
        return TokenUsage(ctx.prompt_estimate, estimate_completion(content, ctx.route.policy.bytes_per_token))

    # --- stream --------------------------------------------------------------------------------

    async def _open_stream(self, ctx: ChatContext) -> ChatStream:
        async def call(dep: Deployment, timeout_s: float) -> PrimedStream:
            dep.acquire()
            upstream = dep.backend.stream(ctx.upstream_body(dep), timeout_s)
            try:
                primed = await prime(upstream)
            except BaseException:
                dep.release()
                await _close(upstream)
                raise
            primed.release = dep.release
            return primed

        dispatched = await self.dispatcher.run(ctx.route, call, ctx.trace)
        dep, primed = dispatched.deployment, dispatched.value
        shaper = ChunkShaper(ctx.completion_id, ctx.created, ctx.request.model, bool(ctx.request.logprobs))
        finished = False

        def finish(state: str) -> None:  # idempotent: the relay's end, or the response's if it never started
            nonlocal finished
            if finished:
                return
            finished = True
            primed.release()
            self.accounting.spawn(primed.aclose())
            self._stream_done(ctx, dep, shaper, state)

        return ChatStream(self._relay(ctx, dep, primed, shaper, finish), self._headers(ctx, dep.name),
                          close=lambda: finish("client_closed"))

    async def _relay(self, ctx: ChatContext, dep: Deployment, primed: PrimedStream, shaper: ChunkShaper,
                     finish: Callable[[str], None]) -> AsyncIterator[bytes]:
        """Send the primed chunks and the rest; a break after the first token ends with an error event."""
        state = "client_closed"
        try:
            for chunk in primed.buffered:
                shaped = shaper.shape(chunk)
                if shaped is not None:
                    yield sse(shaped)
            if not primed.finished:
                async for chunk in primed.rest:
                    shaped = shaper.shape(chunk)
                    if shaped is not None:
                        yield sse(shaped)
            if ctx.request.include_usage:
                yield sse(shaper.usage_chunk(shaper.usage or self._estimate(ctx, shaper.content)))
            state = "completed"
            yield DONE
        except UpstreamError as exc:
            state = "stream_error"
            self.metrics.stream_errors.labels(dep.name).inc()
            yield error_event(f"The upstream stream from '{dep.name}' broke after it started ({exc.reason}); "
                              "the answer is incomplete", "upstream_stream_broken")
        finally:
            finish(state)

    def _stream_done(self, ctx: ChatContext, dep: Deployment, shaper: ChunkShaper, state: str) -> None:
        usage = shaper.usage or self._estimate(ctx, shaper.content)
        status: int | str = 200 if state == "completed" else state
        self.accounting.served(ctx, dep, usage, status, None if state == "completed" else state)
        if state == "completed":
            self.accounting.store(ctx, dep, CachedAnswer(shaper.content, shaper.finish_reason, usage.prompt_tokens,
                                                         usage.completion_tokens, dep.name))


async def _close(upstream: AsyncIterator[Any]) -> None:
    aclose = getattr(upstream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):  # closing a failed upstream must not mask the failure
            await aclose()
